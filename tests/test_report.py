"""The verdict rule: adopt (> +1 pt), prefer the baseline (within 1 pt), or keep it and name the lost ground."""

from __future__ import annotations

from stagetrain.config import parse
from stagetrain.report import render, verdict


def _eval(stage3, baseline):
    return {
        "stage3": {"mAP50": stage3, "mAP50-95": 0.3, "precision": 0.5, "recall": 0.5},
        "baseline": {"mAP50": baseline, "mAP50-95": 0.3, "precision": 0.5, "recall": 0.5},
    }


def _stages(*val):
    return {name: {"mAP50": v, "epochs_run": 1, "seconds": 1.0} for name, v in zip(("stage1", "stage2", "stage3", "baseline"), val)}


def test_adopt_when_better_by_more_than_a_point(params):
    text = verdict(parse(params), _stages(0.6, 0.7, 0.8, 0.7), _eval(0.80, 0.75))
    assert text.startswith("**Adopt `stage3`**") and "+5.0 points" in text


def test_prefer_baseline_within_a_point(params):
    text = verdict(parse(params), _stages(0.6, 0.7, 0.8, 0.7), _eval(0.755, 0.75))
    assert text.startswith("**Keep `baseline`**") and "within one point" in text


def test_worse_names_the_stage_that_lost_ground(params):
    text = verdict(parse(params), _stages(0.9, 0.6, 0.65, 0.8), _eval(0.60, 0.80))
    assert "worse (-20.0 points" in text
    assert "val mAP50 fell from `stage1` to `stage2` by 30.0 points" in text


def test_table_lists_every_stage_and_model(params):
    text = render(parse(params), _stages(0.6, 0.7, 0.8, 0.7), _eval(0.80, 0.75))
    for name in ("stage1", "stage2", "stage3", "baseline"):
        assert f"| {name} |" in text
    assert "+5.0 pt" in text
