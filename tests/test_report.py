"""The report's verdict and test table, rendered from hand-written eval.json entries (rendering is pure formatting).

The verdict follows the 95% interval of Δ test mAP50-95 (model - baseline) against `evaluate.margin`:
adopt above +margin, keep the baseline below -margin (and name the stage that lost ground), else no
detectable difference: prefer the simpler baseline, quoting the smallest difference the split can detect.
After the verdict comes the forgetting matrix: a model x dataset table, skipped datasets, and one line reading it.
"""

from __future__ import annotations

from stagetrain import forgetting, stats
from stagetrain.config import parse
from stagetrain.report import forgetting_lines, render, verdict


def _versus(diff: float, low: float, high: float, margin: float = 0.01, detectable: float = 0.015) -> dict:
    """A `vs_baseline` entry as evaluate writes it, its verdict taken by the stats module itself."""
    decision = stats.verdict(low, high, margin)
    metric = {"baseline": 0.3, "model": 0.3 + diff, "diff": diff, "ci_low": low, "ci_high": high}
    metric |= {"se": detectable / 1.96, "detectable": detectable, "detectable_80_power": detectable * 1.43}
    return {
        "direction": "model - baseline",
        "images": 45,
        "resamples": 1000,
        "seed": 0,
        "confidence": 0.95,
        "margin": margin,
        "map50_95": metric,
        "map50": {**metric, "diff": 2 * diff, "ci_low": 2 * low, "ci_high": 2 * high},
        "verdict": str(decision.decision),
        "sentence": decision.sentence,
    }


def _eval(versus: dict | None, baseline: bool = True) -> dict:
    stage3 = {"mAP50": 0.6, "mAP50-95": 0.3, "precision": 0.5, "recall": 0.5, "coco_mAP50-95": 0.31}
    if versus is not None:
        stage3["vs_baseline"] = versus
    evaluation = {"stage3": stage3}
    if baseline:
        evaluation["baseline"] = {"mAP50": 0.6, "mAP50-95": 0.3, "precision": 0.5, "recall": 0.5, "coco_mAP50-95": 0.31}
    return evaluation


def _stages(*val):
    return {name: {"mAP50": v, "epochs_run": 1, "seconds": 1.0} for name, v in zip(("stage1", "stage2", "stage3", "baseline"), val)}


def test_adopt_when_the_whole_interval_clears_the_margin(params):
    text = verdict(parse(params), _stages(0.6, 0.7, 0.8, 0.7), _eval(_versus(0.05, 0.03, 0.07)))
    assert text.startswith("**Adopt `stage3`**") and "more than the 1.0 pt margin" in text
    assert "Δ test mAP50-95 +5.0 pt, 95% CI [+3.0, +7.0] pt" in text


def test_a_significant_gain_inside_the_margin_is_no_detectable_difference(params):
    text = verdict(parse(params), _stages(0.6, 0.7, 0.8, 0.7), _eval(_versus(0.006, 0.002, 0.009)))
    assert text.startswith("**No detectable difference** between `stage3` and `baseline`: prefer the simpler model, `baseline`")
    assert "the whole interval lies within ±1.0 pt" in text
    assert "smallest difference these 45 test images can detect is 1.5 pt (2.1 pt to find it 80% of the time)" in text


def test_a_wide_interval_asks_for_more_test_images(params):
    text = verdict(parse(params), _stages(0.6, 0.7, 0.8, 0.7), _eval(_versus(0.01, -0.04, 0.06, detectable=0.05)))
    assert text.startswith("**No detectable difference**") and "too wide" in text and "more test images" in text
    assert "can detect is 5.0 pt" in text


def test_keep_baseline_names_the_stage_that_lost_ground(params):
    text = verdict(parse(params), _stages(0.9, 0.6, 0.65, 0.8), _eval(_versus(-0.2, -0.25, -0.15)))
    assert text.startswith("**Keep `baseline`**: `stage3` is worse by more than the 1.0 pt margin")
    assert "95% CI [-25.0, -15.0] pt" in text
    assert "Val mAP50 fell from `stage1` to `stage2` by 30.0 points" in text


def test_the_margin_comes_from_eval_json(params):
    """The same interval, another margin: eval.json records the margin its verdict was taken with."""
    text = verdict(parse(params), _stages(0.6, 0.7, 0.8, 0.7), _eval(_versus(0.05, 0.03, 0.07, margin=0.04)))
    assert text.startswith("**No detectable difference**") and "4.0 pt" in text


def test_no_baseline_no_verdict(params):
    skipped = {"skipped": "`baseline` is not in `evaluate.models`: no comparison made"}
    evaluation = _eval(skipped, baseline=False)
    assert verdict(parse(params), _stages(0.6, 0.7, 0.8, 0.7), evaluation).startswith("No verdict: add the single-stage `baseline`")
    text = render(parse(params), _stages(0.6, 0.7, 0.8, 0.7), evaluation)
    assert "| stage3 | 0.600 | 0.300 | 0.500 | 0.500 | 0.310 | - | - | - |" in text and "paired bootstrap" not in text


def test_an_eval_json_without_a_comparison_says_rerun(params):
    text = verdict(parse(params), _stages(0.6, 0.7, 0.8, 0.7), _eval(None))
    assert text == "No verdict for `stage3`: eval.json holds no comparison with the baseline; rerun evaluate."


def test_table_shows_the_difference_its_interval_and_the_detectable_difference(params):
    text = render(parse(params), _stages(0.6, 0.7, 0.8, 0.7), _eval(_versus(0.05, 0.03, 0.07)))
    for name in ("stage1", "stage2", "stage3", "baseline"):
        assert f"| {name} |" in text
    assert "+10.0 pt" in text  # val: stage3 against baseline
    assert "| Δ mAP50-95 vs baseline (95% CI), pt | Δ mAP50 vs baseline (95% CI), pt | detectable Δ mAP50-95, pt |" in text
    assert "| stage3 | 0.600 | 0.300 | 0.500 | 0.500 | 0.310 | +5.0 [+3.0, +7.0] | +10.0 [+6.0, +14.0] | ±1.5 |" in text
    assert "| baseline | 0.600 | 0.300 | 0.500 | 0.500 | 0.310 | - | - | - |" in text
    assert "paired bootstrap 95% interval over the 45 test images (1000 resamples, seed 0)" in text
    assert "(1.96 × the bootstrap standard error)" in text
    assert text.rstrip().endswith(verdict(parse(params), _stages(0.6, 0.7, 0.8, 0.7), _eval(_versus(0.05, 0.03, 0.07))))


def hand_matrix(drop: dict) -> dict:
    """A `forgetting` entry as evaluate writes it: stage3 lost `drop` on source, pool skipped."""
    cell = {"mAP50-95": 0.4, "mAP50": 0.7, "reference": "stage1", "reference_mAP50-95": 0.5, "drop_mAP50-95": drop, "drop_mAP50": drop}
    return {
        "split": "test",
        "direction": "model - reference",
        "resamples": 1000,
        "seed": 0,
        "confidence": 0.95,
        "seconds": 1.0,
        "datasets": {
            "source": {
                "images": 150,
                "instances": 900,
                "models": {"stage3": cell, "baseline": {"mAP50-95": 0.05, "mAP50": 0.1, "reference": None, "note": "not trained on it"}},
            },
            "target": {
                "images": 300,
                "instances": 1500,
                "models": {
                    "stage3": {"mAP50-95": 0.45, "mAP50": 0.8, "reference": "stage3", "note": forgetting.TRAINED_HERE},
                    "baseline": {"mAP50-95": 0.44, "mAP50": 0.8, "reference": "baseline", "note": forgetting.TRAINED_HERE},
                },
            },
            "pool": {"skipped": "no `test` split in its data.yaml"},
        },
    }


def test_report_table_skips_and_reading():
    lines = forgetting_lines(hand_matrix({"diff": -0.1, "ci_low": -0.13, "ci_high": -0.07}))
    assert lines[:4] == [
        "## Forgetting matrix",
        "",
        "| model | source (150 test images) | target (300 test images) |",
        "| --- | --- | --- |",
    ]
    assert "| stage3 | 0.400 (-10.0 [-13.0, -7.0] vs stage1) | 0.450 (trained on it) |" in lines
    assert "| baseline | 0.050 (not trained on it) | 0.440 (trained on it) |" in lines
    assert "Not scored: `pool`: no `test` split in its data.yaml." in lines
    assert lines[-1] == "Reading: `stage3` lost 10.0 pt mAP50-95 on `source` vs `stage1` (0.500 → 0.400, 95% CI [-13.0, -7.0] pt)."
    gained = forgetting_lines(hand_matrix({"diff": 0.02, "ci_low": 0.01, "ci_high": 0.03}))[-1]
    assert gained.startswith("Reading: `stage3` gained 2.0 pt mAP50-95 on `source` vs `stage1`")
    noise = forgetting_lines(hand_matrix({"diff": -0.01, "ci_low": -0.03, "ci_high": 0.01}))[-1]
    assert noise.startswith("Reading: `stage3` kept its mAP50-95 on `source` vs `stage1` within noise (-1.0 pt;")


def test_report_places_the_matrix_after_the_verdict_and_keeps_it_out_of_the_model_tables(params):
    cfg = parse(params)
    entry = {"mAP50": 0.6, "mAP50-95": 0.3, "precision": 0.5, "recall": 0.5, "coco_mAP50-95": 0.31}
    evaluation = {"baseline": entry, "forgetting": hand_matrix({"diff": -0.1, "ci_low": -0.13, "ci_high": -0.07})}
    text = render(cfg, {}, evaluation)
    assert text.index("## Verdict") < text.index("## Forgetting matrix") and "| forgetting |" not in text
    assert "No verdict: `evaluate.models` holds only the baseline." in text  # the matrix is no candidate
    assert "Reading: `stage3` lost 10.0 pt" in text and text.endswith("\n")
