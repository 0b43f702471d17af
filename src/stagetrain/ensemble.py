"""Ensembles (``evaluate.ensembles``): members' test predictions merged by weighted boxes fusion, scored like a model.

Fusion is ``ensemble_boxes.weighted_boxes_fusion`` (Solovyev et al., the reference implementation):
per image and class, boxes of all members that overlap more than ``iou`` form a cluster whose box is
the confidence-weighted mean of its members' boxes. With ``conf_type: avg`` a cluster's confidence is
the weighted mean of its boxes' confidences, scaled down when fewer members than the ensemble holds
found it: a box only one of two models sees keeps half its confidence. WBF wants x1, y1, x2, y2
normalised to [0, 1]: boxes are divided by the image size (from the COCO ground truth) and scaled
back after fusion.

The fused predictions are scored exactly as evaluate scores a checkpoint's own: the same per-image
records (pycocotools' matching) give mAP50-95 and mAP50, pycocotools scores the same predictions as a
cross-check, and the paired bootstrap against the baseline and the verdict follow in evaluate.run.
Precision and recall are Ultralytics' operating point: the confidence maximising the F1 averaged
over classes (without its 10% smoothing of the F1 curve), where precision and recall are averaged.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from stagetrain import evaluate, stats
from stagetrain.config import Config
from stagetrain.config.schema import EnsembleSpec
from stagetrain.data.organized import split_images

CONF_GRID = np.linspace(0, 1, 1000)  # Ultralytics' confidence grid for its precision/recall operating point


def fuse(members: list[list[dict[str, Any]]], sizes: dict[str, tuple[float, float]], spec: EnsembleSpec) -> list[dict[str, Any]]:
    """WBF of the members' Ultralytics-format predictions (``file_name``, ``category_id``, ``bbox`` x y w h in px, ``score``).

    Args:
        members: one prediction list per member, in ``spec.models`` order.
        sizes: ``{file_name: (width, height)}`` of every image predicted on.
        spec: the ensemble (weights, iou, skip, conf_type).

    Returns:
        The fused predictions in the same format, images in ``sizes`` order.
    """
    from ensemble_boxes import weighted_boxes_fusion  # imports numba (~0.5 s): only when an ensemble is scored

    per_image: dict[str, list[list[dict]]] = defaultdict(lambda: [[] for _ in members])
    for m, predictions in enumerate(members):
        for p in predictions:
            per_image[p["file_name"]][m].append(p)
    fused = []
    for file_name, (width, height) in sizes.items():
        if file_name not in per_image:
            continue
        scale = np.array([width, height, width, height], dtype=np.float64)
        boxes, scores, labels = [], [], []
        for preds in per_image[file_name]:
            xywh = np.array([p["bbox"] for p in preds], dtype=np.float64).reshape(-1, 4)
            xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1) / scale
            boxes.append(np.clip(xyxy, 0, 1).tolist())
            scores.append([p["score"] for p in preds])
            labels.append([p["category_id"] for p in preds])
        out_boxes, out_scores, out_labels = weighted_boxes_fusion(
            boxes, scores, labels, weights=list(spec.weights), iou_thr=spec.iou, skip_box_thr=spec.skip, conf_type=spec.conf_type
        )
        for box, score, label in zip(np.asarray(out_boxes) * scale, out_scores, out_labels):
            x1, y1, x2, y2 = (float(v) for v in box)
            fused.append(
                {
                    "image_id": Path(file_name).stem,
                    "file_name": file_name,
                    "category_id": int(label),
                    "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                    "score": round(float(score), 5),
                }
            )
    return fused


def operating_point(records: stats.DetectionRecords) -> tuple[float, float]:
    """Mean precision and recall (IoU 0.5) at the confidence maximising the class-mean F1, over classes with ground truth."""
    n_gt = records.n_gt.sum(axis=0)
    present = np.flatnonzero(n_gt > 0)
    if present.size == 0:
        return 0.0, 0.0
    precision, recall = np.ones((present.size, CONF_GRID.size)), np.zeros((present.size, CONF_GRID.size))
    for row, c in enumerate(present):
        mine = records.class_id == c
        score, tp = records.score[mine], records.tp[mine, 0]
        order = np.argsort(score)  # ascending: kept at t = everything from searchsorted(t) on
        score, tp_from = score[order], np.r_[np.cumsum(tp[order][::-1])[::-1], 0]  # tp_from[i]: TPs among score[i:]
        first = np.searchsorted(score, CONF_GRID, side="left")
        kept, true = score.size - first, tp_from[first]
        precision[row] = np.where(kept > 0, true / np.maximum(kept, 1), 1.0)
        recall[row] = true / n_gt[c]
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-16)
    best = int(f1.mean(axis=0).argmax())
    return float(precision[:, best].mean()), float(recall[:, best].mean())


def evaluate_ensemble(
    cfg: Config, spec: EnsembleSpec, members: list[evaluate.ModelEvaluation], data_yaml: Path
) -> evaluate.ModelEvaluation:
    """The fused predictions of ``members`` (their evaluations on ``evaluate.split`` of ``data_yaml``) scored like a model.

    The returned evaluation carries no PR or confusion rows (those come from Ultralytics' validator).
    """
    started = time.perf_counter()
    ground_truth = evaluate.coco_ground_truth(split_images(data_yaml, cfg.evaluate.split), cfg.classes)
    sizes = {image["file_name"]: (image["width"], image["height"]) for image in ground_truth["images"]}
    fused = fuse([member.predictions for member in members], sizes, spec)
    records = evaluate.detection_records(ground_truth, fused, len(cfg.classes))
    ours, coco = stats.mean_ap(records), evaluate.coco_scores(ground_truth, fused)
    ap = stats.average_precision(records)  # (classes, iou); NaN for a class without test ground truth
    precision, recall = operating_point(records)
    ours_map = {k: 0.0 if np.isnan(v) else float(v) for k, v in (("mAP50", ours.map50), ("mAP50-95", ours.map50_95))}
    metrics = {
        "mAP50": round(ours_map["mAP50"], 6),
        "mAP50-95": round(ours_map["mAP50-95"], 6),
        "precision": round(precision, 6),
        "recall": round(recall, 6),
        "coco_mAP50": round(coco["mAP50"], 6),
        "coco_mAP50-95": round(coco["mAP50-95"], 6),
        "coco_delta_mAP50-95": round(coco["mAP50-95"] - ours_map["mAP50-95"], 6),
        "tta": cfg.evaluate.tta,
        "images": len(ground_truth["images"]),
        "instances": len(ground_truth["annotations"]),
        "detections": len(fused),
        "inference_ms_per_image": round(sum(m.metrics["inference_ms_per_image"] for m in members), 3),  # members run one after another
        "seconds": round(time.perf_counter() - started, 1),
        "ensemble": {
            "models": list(spec.models),
            "weights": list(spec.weights),
            "iou": spec.iou,
            "skip": spec.skip,
            "conf_type": spec.conf_type,
        },
        "per_class": {
            name: {"AP50": round(float(np.nan_to_num(ap[c, 0])), 6), "AP50-95": round(float(np.nan_to_num(ap[c].mean())), 6)}
            for c, name in enumerate(cfg.classes)
        },
    }
    return evaluate.ModelEvaluation(metrics, [], [], records, fused)
