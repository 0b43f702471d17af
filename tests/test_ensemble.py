"""Ensembles: weighted boxes fusion of two identical prediction sets gives the same boxes, a box one member misses
loses confidence, the Ultralytics-style operating point, params validation, and an ensemble scored end to end."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from conftest import repo_params, shrink
from stagetrain import ensemble, evaluate, report
from stagetrain.config import parse
from stagetrain.config.schema import EnsembleSpec
from stagetrain.errors import UserError
from test_evaluate import MODEL, synthetic_coco, trained_workspace

PAIR = EnsembleSpec("pair", ("stage3", "baseline"), (1.0, 1.0))


def grid_predictions(images: int = 6) -> tuple[list[dict], dict[str, tuple[float, float]]]:
    """Non-overlapping boxes (so no two of one model fuse) of several classes on images of unequal sizes."""
    rng = np.random.default_rng(0)
    predictions, sizes = [], {}
    for i in range(images):
        name, width, height = f"im{i}.jpg", 320 + 16 * i, 240
        sizes[name] = (width, height)
        for row in range(3):
            for col in range(4):
                x, y = 10 + col * 75, 10 + row * 75
                box = [x + rng.uniform(0, 5), y + rng.uniform(0, 5), rng.uniform(30, 60), rng.uniform(30, 60)]
                predictions.append({"file_name": name, "category_id": int(rng.integers(1, 6)), "bbox": box, "score": rng.uniform(0.01, 1)})
    return predictions, sizes


def by_box(predictions: list[dict]) -> tuple[list[tuple], np.ndarray]:
    """(image, class) of each prediction and its box + score, in one canonical order."""
    rows = sorted((p["file_name"], p["category_id"], *p["bbox"], p["score"]) for p in predictions)
    return [row[:2] for row in rows], np.array([row[2:] for row in rows])


@pytest.mark.parametrize("conf_type", ["avg", "max", "box_and_model_avg", "absent_model_aware_avg"])
def test_two_identical_models_fuse_to_the_same_boxes(conf_type):
    predictions, sizes = grid_predictions()
    fused = ensemble.fuse([predictions, predictions], sizes, EnsembleSpec("pair", ("a", "b"), (1.0, 1.0), conf_type=conf_type))
    assert len(fused) == len(predictions)
    (keys, values), (want_keys, want_values) = by_box(fused), by_box(predictions)
    assert keys == want_keys and np.allclose(values, want_values, atol=1e-3)  # boxes rounded to 0.001 px, scores to 1e-5


def test_a_box_one_member_misses_keeps_half_its_confidence():
    predictions, sizes = grid_predictions(1)
    fused = ensemble.fuse([predictions, predictions[:-1]], sizes, PAIR)
    lone = next(p for p in fused if np.allclose(p["bbox"], predictions[-1]["bbox"], atol=0.01))
    assert lone["score"] == pytest.approx(predictions[-1]["score"] / 2, abs=1e-4)
    as_max = ensemble.fuse([predictions, predictions[:-1]], sizes, EnsembleSpec("pair", ("a", "b"), (1.0, 1.0), conf_type="max"))
    assert max(p["score"] for p in as_max if np.allclose(p["bbox"], predictions[-1]["bbox"], atol=0.01)) == pytest.approx(
        predictions[-1]["score"], abs=1e-4
    )


def test_fused_predictions_score_like_the_member_they_copy():
    """Real COCO scoring of the fusion of a prediction set with itself: the same mAP as the set alone."""
    gt, predictions = synthetic_coco()
    sizes = {image["file_name"]: (image["width"], image["height"]) for image in gt["images"]}
    fused = ensemble.fuse([predictions, predictions], sizes, EnsembleSpec("pair", ("a", "b"), (1.0, 1.0), iou=0.9))
    alone, pair = evaluate.coco_scores(gt, predictions), evaluate.coco_scores(gt, fused)
    assert pair["mAP50-95"] == pytest.approx(alone["mAP50-95"], abs=0.01) and pair["mAP50"] == pytest.approx(alone["mAP50"], abs=0.01)


def test_operating_point_on_a_known_set():
    """One class, 4 boxes, detections 0.9 TP, 0.8 TP, 0.7 FP, 0.6 TP: the best F1 keeps all four (P .75, R .75)."""
    gt, predictions = synthetic_coco(images=1)
    records = evaluate.detection_records(gt, predictions, 5)
    precision, recall = ensemble.operating_point(records)
    assert 0 <= precision <= 1 and 0 <= recall <= 1
    from stagetrain.stats import DetectionRecords

    known = DetectionRecords(
        image_index=np.zeros(4, int),
        class_id=np.zeros(4, int),
        score=np.array([0.9, 0.8, 0.7, 0.6]),
        tp=np.array([[True], [True], [False], [True]]),
        n_gt=np.array([[4]]),
        iou_thresholds=np.array([0.5]),
    )
    assert ensemble.operating_point(known) == pytest.approx((0.75, 0.75))


def test_config_validates_ensembles():
    params = shrink(repo_params())
    entry = {"models": ["stage3", "baseline"], "weights": [2, 1], "iou": 0.6, "skip": 0.01, "conf_type": "max"}
    params["evaluate"]["ensembles"] = {"hp": entry, "short": ["stage2", "stage3"]}
    specs = parse(params).evaluate.ensembles
    assert specs["hp"] == EnsembleSpec("hp", ("stage3", "baseline"), (2.0, 1.0), 0.6, 0.01, "max")
    assert specs["short"] == EnsembleSpec("short", ("stage2", "stage3"), (1.0, 1.0))
    for bad, message in (
        ({"x": ["stage3"]}, r"`evaluate.ensembles.x.models` lists 1 model"),
        ({"x": ["stage3", "stag2"]}, r"names no stage: 'stag2'; did you mean `stage2`"),
        ({"stage3": ["stage2", "baseline"]}, r"the name 'stage3' is taken"),
        ({"x": {**entry, "weights": [1]}}, r"`evaluate.ensembles.x.weights` needs one weight > 0 per model"),
        ({"x": {**entry, "iou": 1.5}}, r"`evaluate.ensembles.x.iou` is 1.5"),
        ({"x": {**entry, "conf_type": "mean"}}, r"`evaluate.ensembles.x.conf_type` is 'mean'"),
        ({"x": {**entry, "model": []}}, r"unknown key `evaluate.ensembles.x.model`; did you mean `models`"),
    ):
        params["evaluate"]["ensembles"] = bad
        with pytest.raises(UserError, match=message):
            parse(params)


@pytest.mark.slow  # trains a model
def test_an_ensemble_is_scored_compared_and_reported(tmp_path_factory, tmp_path):
    """A 1-epoch checkpoint under two stage names, fused: scored like a model, cross-checked by pycocotools,
    compared with the baseline (no detectable difference from itself) and a row + verdict of the report."""
    workspace = trained_workspace(tmp_path_factory.getbasetemp() / "trained")
    models = tmp_path / "models"
    for name in (MODEL, "stage3"):
        (models / name).mkdir(parents=True)
        shutil.copyfile(workspace / "models" / MODEL / "best.pt", models / name / "best.pt")
    params = shrink(repo_params())
    params["evaluate"].update({"models": [MODEL], "datasets": ["target"], "ensembles": {"pair": {"models": ["stage3", MODEL], "iou": 0.7}}})
    cfg = parse(params)
    results = evaluate.run(cfg, {"target": workspace / "organized/data.yaml"}, models, tmp_path / "work")
    alone, pair = results[MODEL], results["pair"]
    assert pair["detections"] > 0 and pair["images"] == alone["images"] and pair["ensemble"]["models"] == ["stage3", MODEL]
    assert pair["coco_delta_mAP50-95"] == pytest.approx(0, abs=1e-6)  # our records and pycocotools agree on the fused set
    assert pair["coco_mAP50-95"] == pytest.approx(alone["coco_mAP50-95"], abs=0.02)  # a model fused with itself
    assert pair["vs_baseline"]["verdict"] in ("no detectable difference", "adopt", "keep baseline")
    assert abs(pair["vs_baseline"]["map50_95"]["diff"]) <= 0.02
    assert set(pair["per_class"]) == set(cfg.classes) and 0 <= pair["precision"] <= 1
    text = report.render(cfg, {}, results)
    assert "| pair |" in text and "`pair`" in text.split("## Verdict")[1]
    assert "`pair`: weighted boxes fusion of `stage3` (×1) + `baseline` (×1), IoU 0.7" in text
