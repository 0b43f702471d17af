"""The forgetting matrix from per-image records (no model): which stage is each cell's reference, which
models get scored where, the drop and its interval, and skipped datasets. The same matrix from real
checkpoints: test_evaluate.py::test_forgetting_matrix_scores_every_pair_once; its table: test_report.py."""

from __future__ import annotations

import pytest

from stagetrain import evaluate, forgetting
from stagetrain.config import parse
from test_evaluate import degraded, synthetic_coco


def chain_params(params: dict, **evaluate_keys) -> dict:
    """The repo's stages (stage1 on source -> stage2 -> stage3 on target, baseline on target) and a third dataset."""
    params["datasets"]["pool"] = params["datasets"]["target"]
    params["evaluate"].update({"models": ["stage3", "baseline"], "datasets": ["source", "target", "pool"], **evaluate_keys})
    return params


def test_reference_is_the_last_stage_of_the_chain_trained_on_that_dataset(params):
    cfg = parse(chain_params(params))
    assert forgetting.reference(cfg, "stage3", "source") == "stage1"  # stage2 and stage3 trained on target
    assert forgetting.reference(cfg, "stage3", "target") == "stage3"  # trained on it: its own reference
    assert forgetting.reference(cfg, "stage2", "target") == "stage2"
    assert forgetting.reference(cfg, "baseline", "source") is None  # base -> baseline never saw source
    assert forgetting.reference(cfg, "stage3", "pool") is None
    # source, source, then target: the reference on source is the later source stage
    params["stages"]["stage2"]["dataset"] = "source"
    cfg = parse(params)
    assert forgetting.reference(cfg, "stage3", "source") == "stage2" and forgetting.reference(cfg, "stage2", "source") == "stage2"


def test_every_row_and_every_reference_is_scored(params):
    cfg = parse(chain_params(params))
    assert forgetting.rows(cfg) == ("stage3", "baseline")
    assert forgetting.to_score(cfg, "source") == ("stage3", "baseline", "stage1")  # stage1 is scored though not evaluated
    assert forgetting.to_score(cfg, "target") == ("stage3", "baseline")
    cfg = parse(chain_params(params, all_stages=True))
    assert forgetting.rows(cfg) == ("stage3", "baseline", "stage1", "stage2")
    assert forgetting.to_score(cfg, "source") == forgetting.rows(cfg)


def records(predictions: list[dict], gt: dict):
    return evaluate.detection_records(gt, predictions, n_classes=5)


def test_drop_against_itself_is_zero_and_against_a_degraded_copy_is_significant(params):
    cfg = parse(chain_params(params))
    source_gt, source_preds = synthetic_coco(seed=0)
    target_gt, target_preds = synthetic_coco(seed=1, images=30)
    good = records(source_preds, source_gt)
    scored = {
        "source": {"stage1": good, "stage3": records(list(reversed(source_preds)), source_gt), "baseline": records([], source_gt)},
        "target": {"stage3": records(target_preds, target_gt), "baseline": records(degraded(target_preds), target_gt)},
    }
    skipped = {"pool": "no `test` split in its data.yaml"}
    matrix = forgetting.matrix(cfg, scored, skipped)
    assert (matrix["direction"], matrix["split"], matrix["resamples"], matrix["seed"]) == ("model - reference", "test", 1000, cfg.seed)
    assert list(matrix["datasets"]) == ["source", "target", "pool"]
    assert matrix["datasets"]["pool"] == {"skipped": "no `test` split in its data.yaml"}
    source = matrix["datasets"]["source"]
    assert (source["images"], source["instances"]) == (40, len(source_gt["annotations"]))
    same = source["models"]["stage3"]  # the same predictions, in another order
    assert same["reference"] == "stage1" and same["mAP50-95"] == same["reference_mAP50-95"] > 0.3
    assert same["drop_mAP50-95"] == {"diff": 0, "ci_low": 0, "ci_high": 0} and same["drop_mAP50"]["diff"] == 0
    assert source["models"]["baseline"] == {"mAP50-95": 0, "mAP50": 0, "reference": None, "note": "not trained on it"}
    target = matrix["datasets"]["target"]["models"]
    assert target["stage3"] == {**target["stage3"], "reference": "stage3", "note": forgetting.TRAINED_HERE}
    assert "drop_mAP50-95" not in target["baseline"] and target["baseline"]["mAP50-95"] < target["stage3"]["mAP50-95"]

    scored["source"]["stage3"] = records(degraded(source_preds), source_gt)  # stage3 forgot source
    lost = forgetting.matrix(cfg, scored, skipped)["datasets"]["source"]["models"]["stage3"]
    assert lost["drop_mAP50-95"]["ci_high"] < 0 and lost["drop_mAP50-95"]["diff"] == pytest.approx(
        lost["mAP50-95"] - lost["reference_mAP50-95"], abs=2e-6
    )
    again = forgetting.matrix(cfg, scored, skipped)["datasets"]["source"]["models"]["stage3"]
    assert again == lost  # seeded
