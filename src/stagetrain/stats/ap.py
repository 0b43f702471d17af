"""COCO AP (101-point interpolation, as pycocotools) with every image carrying a weight.

A bootstrap resample is a vector of image multiplicities w (how often each image was drawn). AP on
the resample equals AP with each detection counted w[its image] times and each class's ground
truth counted sum_i w_i * n_gt[i, c] times, so the detections are sorted by score ONCE and every
resample only needs weighted cumulative sums: one vectorised pass per class over a batch of
resamples, no loop over detections.

Interpolation, exactly as pycocotools' `accumulate`: precision p_k = TP_k / (TP_k + FP_k + eps) and
recall r_k = TP_k / n_gt after the k-th detection; precision is made non-increasing from the right
(the envelope); recall threshold r in {0, 0.01, ..., 1} takes the envelope at the first k with
r_k >= r, or 0 if recall never reaches r; AP is the mean over the 101 thresholds.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from stagetrain.stats.matching import DetectionRecords

RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
"""pycocotools' 101 recall thresholds (0:0.01:1), built the same way so that ties compare alike."""

# pycocotools adds this to the precision denominator
_EPS = np.spacing(1)
# float64 elements per intermediate (batch, n_iou, detections) array; a few such arrays are alive at once
_CHUNK_ELEMENTS = 2_000_000


@dataclass(frozen=True)
class SortedDetections:
    """One model's detections grouped by class, highest score first: the one sort the bootstrap needs.

    Attributes:
        image_index: per class, (n_c,) image of each detection.
        tp: per class, (n_iou, n_c) float TP flags.
        n_gt: (n_images, n_classes) ground-truth counts, as float.
        iou_thresholds: (n_iou,) the thresholds behind the rows of `tp`.
    """

    image_index: list[np.ndarray]
    tp: list[np.ndarray]
    n_gt: np.ndarray
    iou_thresholds: np.ndarray

    @classmethod
    def from_records(cls, records: DetectionRecords) -> SortedDetections:
        """Sort by class, then by descending score; ties keep record order (image, then detection), as pycocotools."""
        order = np.lexsort((-records.score, records.class_id))
        starts = np.searchsorted(records.class_id[order], np.arange(records.n_classes + 1))
        groups = [order[start:stop] for start, stop in itertools.pairwise(starts)]
        return cls(
            image_index=[records.image_index[g] for g in groups],
            tp=[np.ascontiguousarray(records.tp[g].T, dtype=np.float64) for g in groups],
            n_gt=records.n_gt.astype(np.float64),
            iou_thresholds=records.iou_thresholds,
        )


class MeanAP(NamedTuple):
    """COCO mAP50-95 and mAP50: floats for one weighting, (batch,) arrays for a batch of resamples."""

    map50_95: float | np.ndarray
    map50: float | np.ndarray


def average_precision(records: DetectionRecords | SortedDetections, weights: np.ndarray | None = None) -> np.ndarray:
    """Per-class, per-threshold AP, optionally with image weights.

    Args:
        records: a model's records, or the same already sorted (reuse it across many calls).
        weights: None (every image once), (n_images,) weights, or (batch, n_images) weights, one
            row per resample. Integer weights give exactly the AP of the image set with each image
            repeated that many times.

    Returns:
        (n_classes, n_iou) AP, or (batch, n_classes, n_iou) for 2-D weights; NaN for a class
        without ground truth under the weights (pycocotools leaves such classes out of the mean).
    """
    data = records if isinstance(records, SortedDetections) else SortedDetections.from_records(records)
    n_images = data.n_gt.shape[0]
    w = np.ones(n_images) if weights is None else np.asarray(weights, dtype=np.float64)
    batch = np.atleast_2d(w)
    if batch.ndim != 2 or batch.shape[1] != n_images or (batch < 0).any():
        raise ValueError(f"need non-negative weights, one per image ({n_images}), got shape {w.shape}")
    largest = max((tp.size for tp in data.tp), default=1)
    step = max(1, _CHUNK_ELEMENTS // max(largest, 1))
    ap = np.concatenate([_batch_ap(data, batch[i : i + step]) for i in range(0, batch.shape[0], step)])
    return ap if w.ndim == 2 else ap[0]


def _batch_ap(data: SortedDetections, weights: np.ndarray) -> np.ndarray:
    """(batch, n_classes, n_iou) AP for a (batch, n_images) block of weights."""
    n_gt = weights @ data.n_gt  # (batch, n_classes) weighted ground-truth counts
    ap = np.zeros((weights.shape[0], n_gt.shape[1], data.iou_thresholds.size))
    for cls, (images, tp) in enumerate(zip(data.image_index, data.tp)):
        if images.size:
            ap[:, cls] = _class_ap(weights[:, images], tp, n_gt[:, cls])
    ap[n_gt <= 0] = np.nan
    return ap


def _class_ap(det_weights: np.ndarray, tp: np.ndarray, n_gt: np.ndarray) -> np.ndarray:
    """(batch, n_iou) AP of one class from (batch, n_c) detection weights, (n_iou, n_c) TP flags and (batch,) GT counts."""
    true_pos = np.cumsum(det_weights[:, None, :] * tp[None], axis=2)  # (batch, n_iou, n_c)
    precision = true_pos / (np.cumsum(det_weights, axis=1)[:, None, :] + _EPS)
    envelope = np.maximum.accumulate(precision[..., ::-1], axis=2)[..., ::-1]
    recall = true_pos / np.where(n_gt > 0, n_gt, 1.0)[:, None, None]
    # thresholds at or below each recall; each detection owns the thresholds its recall step crosses
    reached = np.searchsorted(RECALL_THRESHOLDS, recall, side="right")
    owned = np.diff(reached, axis=2, prepend=0)
    return np.einsum("bti,bti->bt", envelope, owned) / RECALL_THRESHOLDS.size


def mean_ap(records: DetectionRecords | SortedDetections, weights: np.ndarray | None = None) -> MeanAP:
    """COCO mAP50-95 and mAP50: means over the classes with ground truth under the weights.

    Args:
        records: a model's records (or their `SortedDetections`).
        weights: as in `average_precision`.

    Returns:
        `MeanAP`; NaN where no class has ground truth.
    """
    at_50 = np.flatnonzero(np.isclose(records.iou_thresholds, 0.5))
    if at_50.size == 0:
        raise ValueError(f"mAP50 needs IoU threshold 0.5 among {records.iou_thresholds.tolist()}")
    ap = average_precision(records, weights)
    return MeanAP(map50_95=_class_mean(ap.mean(axis=-1)), map50=_class_mean(ap[..., at_50[0]]))


def _class_mean(per_class: np.ndarray) -> float | np.ndarray:
    """Mean over the last (class) axis, skipping NaN classes; NaN when every class is NaN."""
    present = ~np.isnan(per_class)
    count = present.sum(axis=-1)
    total = np.where(present, per_class, 0.0).sum(axis=-1)
    mean = np.divide(total, count, out=np.full(np.shape(total), np.nan), where=count > 0)
    return float(mean) if mean.ndim == 0 else mean
