"""Per-image boxes -> per-detection TP flags at each IoU threshold, matched the way pycocotools does.

Matching happens once per model; the bootstrap then only reweights images, so everything it needs
is kept in `DetectionRecords`: one row per detection (image, class, score, TP flags) and the
ground-truth count of every class in every image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
"""The ten IoU thresholds of mAP50-95 (0.50:0.05:0.95), as pycocotools builds them."""

# pycocotools caps the threshold just below 1 so that a perfect box still matches at IoU 1.0
_MAX_IOU_THRESHOLD = 1 - 1e-10


@dataclass(frozen=True)
class GroundTruth:
    """The labelled boxes of one image.

    Attributes:
        classes: (n,) integer class ids.
        boxes: (n, 4) boxes as x1, y1, x2, y2 in any consistent unit (pixels or normalised).
    """

    classes: np.ndarray
    boxes: np.ndarray

    def __post_init__(self) -> None:
        classes, boxes = _as_boxes(self.classes, self.boxes, "ground truth")
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "boxes", boxes)


@dataclass(frozen=True)
class Detections:
    """One model's detections on one image.

    Attributes:
        classes: (n,) integer class ids.
        scores: (n,) confidences; only their order matters.
        boxes: (n, 4) boxes as x1, y1, x2, y2, in the unit of the ground truth.
    """

    classes: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray

    def __post_init__(self) -> None:
        classes, boxes = _as_boxes(self.classes, self.boxes, "detections")
        scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        if scores.shape != classes.shape:
            raise ValueError(f"detections: {scores.size} scores for {classes.size} boxes")
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "boxes", boxes)


def _as_boxes(classes: np.ndarray, boxes: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    classes = np.asarray(classes, dtype=np.int64).reshape(-1)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if boxes.shape[0] != classes.size:
        raise ValueError(f"{what}: {boxes.shape[0]} boxes for {classes.size} classes")
    if classes.size and classes.min() < 0:
        raise ValueError(f"{what}: negative class id {classes.min()}")
    return classes, boxes


@dataclass(frozen=True)
class DetectionRecords:
    """Everything AP needs about one model on one image set, with images as the unit of resampling.

    Rows are in image order, then in each image's own detection order (the tie order pycocotools uses).

    Attributes:
        image_index: (n_det,) index of the image each detection belongs to.
        class_id: (n_det,) class of each detection.
        score: (n_det,) confidence of each detection.
        tp: (n_det, n_iou) bool, True where the detection matched a ground-truth box at that threshold.
        n_gt: (n_images, n_classes) ground-truth boxes of each class in each image.
        iou_thresholds: (n_iou,) the thresholds the columns of `tp` belong to.
    """

    image_index: np.ndarray
    class_id: np.ndarray
    score: np.ndarray
    tp: np.ndarray
    n_gt: np.ndarray
    iou_thresholds: np.ndarray

    def __post_init__(self) -> None:
        n_det = self.score.shape[0]
        if self.image_index.shape != (n_det,) or self.class_id.shape != (n_det,):
            raise ValueError("image_index, class_id and score must be 1-D arrays of the same length")
        if self.tp.shape != (n_det, self.iou_thresholds.size):
            raise ValueError(f"tp has shape {self.tp.shape}, expected ({n_det}, {self.iou_thresholds.size})")
        n_images, n_classes = self.n_gt.shape
        if n_det and (self.image_index.max() >= n_images or self.class_id.max() >= n_classes):
            raise ValueError(f"a detection names an image or class outside n_gt's shape {self.n_gt.shape}")

    @property
    def n_images(self) -> int:
        """Number of images, including those without any box."""
        return self.n_gt.shape[0]

    @property
    def n_classes(self) -> int:
        """Number of class ids the records can hold (classes without ground truth included)."""
        return self.n_gt.shape[1]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of two sets of x1, y1, x2, y2 boxes.

    Args:
        a: (n, 4) boxes.
        b: (m, 4) boxes.

    Returns:
        (n, m) IoU; 0 where the union is empty (degenerate boxes).
    """
    a, b = a[:, None, :], b[None, :, :]
    width = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    height = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = width * height
    union = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]) + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match(gt: GroundTruth, detections: Detections, iou_thresholds: np.ndarray = COCO_IOU_THRESHOLDS) -> np.ndarray:
    """COCO-style greedy matching of one image's detections to its ground truth, class by class.

    Detections are visited highest score first (ties keep their given order); each takes the
    still-unmatched box of its class with the highest IoU at or above the threshold (the last such
    box on an exact tie), separately at every threshold, as pycocotools' `evaluateImg` does
    without crowd or area filtering.

    Args:
        gt: the image's ground truth.
        detections: one model's detections on the image.
        iou_thresholds: (n_iou,) IoU thresholds.

    Returns:
        (n_det, n_iou) bool TP flags, rows in the detections' given order.
    """
    thresholds = np.minimum(np.asarray(iou_thresholds, dtype=np.float64), _MAX_IOU_THRESHOLD)
    tp = np.zeros((detections.classes.size, thresholds.size), dtype=bool)
    for cls in np.unique(detections.classes):
        gt_rows = np.flatnonzero(gt.classes == cls)
        if gt_rows.size == 0:
            continue
        det_rows = np.flatnonzero(detections.classes == cls)
        det_rows = det_rows[np.argsort(-detections.scores[det_rows], kind="stable")]
        ious = box_iou(detections.boxes[det_rows], gt.boxes[gt_rows])
        tp[det_rows] = _greedy(ious, thresholds)
    return tp


def _greedy(ious: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """TP flags (n_det, n_iou) for detections already sorted by score against (n_det, n_gt) IoUs."""
    n_det, n_gt = ious.shape
    tp = np.zeros((n_det, thresholds.size), dtype=bool)
    taken = np.zeros((thresholds.size, n_gt), dtype=bool)
    for row, det_ious in enumerate(ious):
        candidate = (det_ious[None, :] >= thresholds[:, None]) & ~taken
        # argmax over the reversed row picks the LAST box among equal best IoUs, like pycocotools
        best = n_gt - 1 - np.argmax(np.where(candidate, det_ious[None, :], -1.0)[:, ::-1], axis=1)
        hit = candidate.any(axis=1)
        tp[row] = hit
        taken[np.flatnonzero(hit), best[hit]] = True
    return tp


def build_records(
    ground_truths: Sequence[GroundTruth],
    detections: Sequence[Detections],
    n_classes: int | None = None,
    iou_thresholds: np.ndarray = COCO_IOU_THRESHOLDS,
) -> DetectionRecords:
    """Match every image of one model and pack the result for (weighted) AP.

    Args:
        ground_truths: one `GroundTruth` per image; the SAME sequence for every model compared.
        detections: the model's `Detections`, aligned with `ground_truths`.
        n_classes: number of class ids; default: the largest id seen plus one. Pass it when
            comparing models, so that both records have the same shape.
        iou_thresholds: (n_iou,) IoU thresholds.

    Returns:
        The model's `DetectionRecords`.
    """
    if len(ground_truths) != len(detections):
        raise ValueError(f"{len(ground_truths)} ground-truth images but {len(detections)} detection images")
    thresholds = np.asarray(iou_thresholds, dtype=np.float64)
    if n_classes is None:
        n_classes = 1 + max((int(x.classes.max()) for x in [*ground_truths, *detections] if x.classes.size), default=0)
    n_gt = np.zeros((len(ground_truths), n_classes), dtype=np.int64)
    for i, gt in enumerate(ground_truths):
        if gt.classes.size and gt.classes.max() >= n_classes:
            raise ValueError(f"image {i}: ground-truth class {gt.classes.max()} but n_classes={n_classes}")
        n_gt[i] = np.bincount(gt.classes, minlength=n_classes)
    sizes = [d.classes.size for d in detections]
    tp = [match(gt, det, thresholds) for gt, det in zip(ground_truths, detections)]
    return DetectionRecords(
        image_index=np.repeat(np.arange(len(detections)), sizes),
        class_id=np.concatenate([np.empty(0, np.int64), *(d.classes for d in detections)]),
        score=np.concatenate([np.empty(0), *(d.scores for d in detections)]),
        tp=np.concatenate([np.empty((0, thresholds.size), bool), *tp]),
        n_gt=n_gt,
        iou_thresholds=thresholds,
    )
