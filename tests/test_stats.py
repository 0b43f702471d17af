"""The paired bootstrap of mAP differences: matching and AP against pycocotools, weights, intervals, verdicts, speed."""

from __future__ import annotations

import contextlib
import io
import json
import time

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from stagetrain.errors import UserError
from stagetrain.stats import (
    Decision,
    Detections,
    GroundTruth,
    average_precision,
    build_records,
    match,
    mean_ap,
    paired_bootstrap,
    verdict,
)
from stagetrain.stats import ap as ap_module


def make_ground_truth(rng: np.random.Generator, n_images: int, n_classes: int, max_boxes: int = 8) -> list[GroundTruth]:
    """Random scenes: 0..max_boxes boxes of 10-60 px per image (some images empty)."""
    scenes = []
    for _ in range(n_images):
        n = rng.integers(0, max_boxes + 1)
        corner, size = rng.uniform(0, 200, (n, 2)), rng.uniform(10, 60, (n, 2))
        scenes.append(GroundTruth(rng.integers(0, n_classes, n), np.hstack([corner, corner + size])))
    return scenes


def make_detections(rng: np.random.Generator, scenes: list[GroundTruth], n_classes: int, jitter: float = 0.08) -> list[Detections]:
    """A plausible detector: most objects found (some twice), boxes jittered by `jitter` x size, wrong classes, false positives."""
    images = []
    for gt in scenes:
        found = rng.random(gt.classes.size) < 0.85
        found = np.concatenate([np.flatnonzero(found), np.flatnonzero(rng.random(gt.classes.size) < 0.15)])  # duplicates
        boxes = gt.boxes[found]
        size = np.tile(boxes[:, 2:] - boxes[:, :2], 2)
        boxes = boxes + rng.normal(0, jitter, boxes.shape) * size
        classes = np.where(rng.random(found.size) < 0.9, gt.classes[found], rng.integers(0, n_classes, found.size))
        n_fp = rng.poisson(2)
        corner = rng.uniform(0, 200, (n_fp, 2))
        boxes = np.vstack([boxes, np.hstack([corner, corner + rng.uniform(10, 60, (n_fp, 2))])])
        classes = np.concatenate([classes, rng.integers(0, n_classes, n_fp)])
        scores = np.concatenate([rng.uniform(0.3, 1.0, found.size), rng.uniform(0.0, 0.8, n_fp)])
        images.append(Detections(classes, scores, boxes))
    return images


def degrade(rng: np.random.Generator, images: list[Detections], fraction: float = 0.6) -> list[Detections]:
    """A worse model: on `fraction` of the images, boxes jittered by ~40% of their size and scores shuffled."""
    worse = []
    for det in images:
        if rng.random() < fraction and det.classes.size:
            size = np.tile(det.boxes[:, 2:] - det.boxes[:, :2], 2)
            det = Detections(det.classes, rng.permutation(det.scores), det.boxes + rng.normal(0, 0.4, det.boxes.shape) * size)
        worse.append(det)
    return worse


def model_pair(seed: int, n_images: int, n_classes: int = 4, degraded: bool = False, max_boxes: int = 8):
    """Records of a baseline and a candidate (an independent draw of the same detector, or a degraded copy)."""
    rng = np.random.default_rng(seed)
    scenes = make_ground_truth(rng, n_images, n_classes, max_boxes)
    baseline = make_detections(rng, scenes, n_classes)
    candidate = degrade(rng, baseline) if degraded else make_detections(rng, scenes, n_classes)
    return build_records(scenes, baseline, n_classes), build_records(scenes, candidate, n_classes)


def coco_eval(scenes: list[GroundTruth], images: list[Detections], n_classes: int) -> tuple[np.ndarray, float, float]:
    """pycocotools on the same boxes: per-class AP (n_classes, n_iou) with NaN where a class has no GT, mAP50-95, mAP50."""
    annotations, results = [], []
    for image_id, (gt, det) in enumerate(zip(scenes, images), start=1):
        for cls, (x1, y1, x2, y2) in zip(gt.classes, gt.boxes):
            box = [x1, y1, x2 - x1, y2 - y1]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(cls) + 1,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
        for cls, score, (x1, y1, x2, y2) in zip(det.classes, det.scores, det.boxes):
            results.append({"image_id": image_id, "category_id": int(cls) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {
            "images": [{"id": i, "width": 300, "height": 300} for i in range(1, len(scenes) + 1)],
            "annotations": annotations,
            "categories": [{"id": c + 1, "name": str(c)} for c in range(n_classes)],
        }
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # (iou, recall, class) at area 'all', maxDets 100 per image and class: more than any test image holds, so none is cut
    precision = evaluator.eval["precision"][:, :, :, 0, 2]
    per_class = precision.mean(axis=1).T
    per_class[precision[:, 0, :].T < 0] = np.nan
    return per_class, evaluator.stats[0], evaluator.stats[1]


def duplicate(items: list, counts: np.ndarray) -> list:
    return [item for item, count in zip(items, counts) for _ in range(int(count))]


def test_match_greedy_by_score_per_class_and_threshold():
    gt = GroundTruth([0, 0, 1], [[0, 0, 10, 10], [20, 0, 30, 10], [0, 0, 10, 10]])
    boxes = [[0, 0, 10, 10], [0, 0, 10, 10], [21, 0, 31, 10], [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 12]]
    detections = Detections([0, 0, 0, 1, 2, 0], [0.9, 0.8, 0.7, 0.1, 0.5, 0.99], boxes)
    tp = match(gt, detections)
    up_to_080, above = [True] * 7 + [False] * 3, [False] * 7 + [True] * 3  # thresholds 0.50..0.80 | 0.85..0.95
    # the 0.99 box (IoU 0.83) takes the first GT up to 0.80; above that the perfect 0.9 box gets it
    assert tp[5].tolist() == up_to_080
    assert tp[0].tolist() == above
    assert not tp[1].any()  # a duplicate on an already matched box
    assert tp[2].tolist() == up_to_080  # IoU 0.818 with the second box
    assert tp[3].all()  # class 1 matches its own box although class 0 has the same one
    assert not tp[4].any()  # class 2 has no ground truth


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_ap_matches_pycocotools(seed):
    rng = np.random.default_rng(seed)
    n_classes = 5  # GT only draws classes 0..3: class 4 exists in the detections only and must be left out of the mean
    scenes = make_ground_truth(rng, 40, n_classes - 1)
    images = make_detections(rng, scenes, n_classes, jitter=0.1)
    records = build_records(scenes, images, n_classes)
    expected, expected_map, expected_map50 = coco_eval(scenes, images, n_classes)
    np.testing.assert_allclose(average_precision(records), expected, rtol=0, atol=1e-9, equal_nan=True)
    result = mean_ap(records)
    assert result.map50_95 == pytest.approx(expected_map, abs=1e-9)
    assert result.map50 == pytest.approx(expected_map50, abs=1e-9)
    assert np.isnan(average_precision(records)[4]).all()


def test_unit_weights_equal_plain_ap():
    records, _ = model_pair(seed=4, n_images=30)
    plain = average_precision(records)
    np.testing.assert_array_equal(average_precision(records, np.ones(records.n_images)), plain)
    np.testing.assert_array_equal(average_precision(records, np.ones((3, records.n_images))), np.stack([plain] * 3))


@pytest.mark.parametrize("seed", [5, 6])
def test_integer_weights_equal_ap_of_duplicated_images(seed):
    rng = np.random.default_rng(seed)
    scenes = make_ground_truth(rng, 25, 3, max_boxes=4)
    images = make_detections(rng, scenes, 3)
    counts = rng.integers(0, 4, len(scenes))  # zero drops an image, possibly every image of a class
    weighted = average_precision(build_records(scenes, images, 3), counts)
    explicit = average_precision(build_records(duplicate(scenes, counts), duplicate(images, counts), 3))
    np.testing.assert_allclose(weighted, explicit, rtol=0, atol=1e-12, equal_nan=True)


def test_batched_weights_equal_one_resample_at_a_time(monkeypatch):
    records, _ = model_pair(seed=7, n_images=30)
    weights = np.random.default_rng(7).integers(0, 3, (6, records.n_images))
    one_by_one = np.stack([average_precision(records, row) for row in weights])
    monkeypatch.setattr(ap_module, "_CHUNK_ELEMENTS", 1)  # a chunk per resample: the batching must not matter
    np.testing.assert_allclose(average_precision(records, weights), one_by_one, rtol=0, atol=1e-12, equal_nan=True)


def test_model_against_itself_has_no_difference():
    records, _ = model_pair(seed=8, n_images=60)
    result = paired_bootstrap(records, records, resamples=200)
    assert json.loads(json.dumps(result)) == result  # ready for a metrics file
    for metric in ("map50_95", "map50"):
        summary = result[metric]
        assert summary["diff"] == 0 and summary["ci_low"] <= 0 <= summary["ci_high"]
        assert verdict(summary["ci_low"], summary["ci_high"]).decision is Decision.NO_DIFFERENCE


def test_degraded_copy_is_detected_in_the_right_direction():
    baseline, worse = model_pair(seed=9, n_images=120, degraded=True)
    result = paired_bootstrap(baseline, worse, resamples=300)
    assert result["direction"] == "b - a"
    for metric in ("map50_95", "map50"):
        summary = result[metric]
        assert summary["diff"] < 0 and summary["ci_high"] < 0
        assert summary["ci_low"] <= summary["diff"] <= summary["ci_high"]
        assert verdict(summary["ci_low"], summary["ci_high"]).decision is Decision.KEEP_BASELINE
    swapped = paired_bootstrap(worse, baseline, resamples=300)["map50_95"]
    assert swapped["ci_low"] > 0
    assert verdict(swapped["ci_low"], swapped["ci_high"]).decision is Decision.ADOPT


def test_same_seed_same_interval():
    a, b = model_pair(seed=10, n_images=50)
    first, again = paired_bootstrap(a, b, resamples=200, seed=3), paired_bootstrap(a, b, resamples=200, seed=3)
    assert first == again
    other = paired_bootstrap(a, b, resamples=200, seed=4)
    assert other["map50_95"]["diff"] == first["map50_95"]["diff"]
    assert other["map50_95"]["ci_low"] != first["map50_95"]["ci_low"]


def test_detectable_difference_shrinks_with_more_images():
    small = paired_bootstrap(*model_pair(seed=11, n_images=50), resamples=300)["map50_95"]
    large = paired_bootstrap(*model_pair(seed=11, n_images=200), resamples=300)["map50_95"]
    assert small["detectable"] == pytest.approx(1.96 * small["se"], rel=1e-3)
    assert large["detectable_80_power"] > large["detectable"]
    assert 0.3 < large["detectable"] / small["detectable"] < 0.8  # ~ 1/sqrt(4) = 0.5


def test_models_on_different_images_are_refused():
    a, _ = model_pair(seed=12, n_images=20)
    b, _ = model_pair(seed=13, n_images=20)
    with pytest.raises(UserError, match="same test split"):
        paired_bootstrap(a, b, resamples=10)


@pytest.mark.parametrize(
    ("low", "high", "decision", "reason"),
    [
        (0.02, 0.05, Decision.ADOPT, "beats"),
        (-0.05, -0.02, Decision.KEEP_BASELINE, "worse"),
        (-0.005, 0.008, Decision.NO_DIFFERENCE, "smaller than the margin"),
        (0.01, 0.05, Decision.NO_DIFFERENCE, "too wide"),  # the bound must EXCEED the margin
        (-0.03, 0.04, Decision.NO_DIFFERENCE, "too wide"),
    ],
)
def test_verdict(low, high, decision, reason):
    result = verdict(low, high, margin=0.01)
    assert result.decision is decision
    assert reason in str(result)
    if decision is Decision.NO_DIFFERENCE:
        assert str(result).startswith("No detectable difference: prefer the simpler model")


def test_thousand_resamples_on_300_images_take_seconds():
    a, b = model_pair(seed=14, n_images=300, n_classes=5, max_boxes=14)
    assert 2000 < a.score.size < 4000
    start = time.perf_counter()
    result = paired_bootstrap(a, b, resamples=1000)
    assert time.perf_counter() - start < 20  # measured ~4 s on a busy 2-core machine
    assert result["map50_95"]["ci_low"] <= result["map50_95"]["ci_high"]
