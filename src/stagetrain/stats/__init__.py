"""Verdicts with confidence: a paired bootstrap over test images of the difference in COCO mAP.

Independent of Ultralytics: feed per-image boxes, get an interval and a decision.

    records_a = build_records(ground_truths, detections_a, n_classes)
    records_b = build_records(ground_truths, detections_b, n_classes)
    result = paired_bootstrap(records_a, records_b, resamples=1000, seed=0)
    print(verdict(result["map50_95"]["ci_low"], result["map50_95"]["ci_high"], margin=0.01))

matching.py  boxes -> per-detection TP flags per IoU threshold (pycocotools' greedy matching)
ap.py        COCO 101-point AP with image weights, vectorised over a batch of resamples
bootstrap.py the paired bootstrap, its interval and detectable difference, and the verdict
"""

from stagetrain.stats.ap import RECALL_THRESHOLDS, MeanAP, SortedDetections, average_precision, mean_ap
from stagetrain.stats.bootstrap import DIRECTION, Decision, Verdict, bootstrap_weights, paired_bootstrap, verdict
from stagetrain.stats.matching import COCO_IOU_THRESHOLDS, DetectionRecords, Detections, GroundTruth, box_iou, build_records, match

__all__ = [
    "COCO_IOU_THRESHOLDS",
    "DIRECTION",
    "RECALL_THRESHOLDS",
    "Decision",
    "DetectionRecords",
    "Detections",
    "GroundTruth",
    "MeanAP",
    "SortedDetections",
    "Verdict",
    "average_precision",
    "bootstrap_weights",
    "box_iou",
    "build_records",
    "match",
    "mean_ap",
    "paired_bootstrap",
    "verdict",
]
