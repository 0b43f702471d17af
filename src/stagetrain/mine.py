"""mine@<stage>: hard-negative mining, the false positives a stage's starting checkpoint makes on its train images.

For a stage with ``hard_negatives: {conf, iou, copies, pool, max_images}``, the stage's ``from`` checkpoint
(the model it fine-tunes) runs over the train split of the stage's dataset and, with ``pool:``, of another
dataset (e.g. background-only images: every detection there is a false positive). A detection at or above
``conf`` that matches no labelled box of its class at IoU >= ``iou`` (greedy, highest score first, as
COCO matches: :func:`stagetrain.stats.matching.match`) is a false positive, of one of three kinds:

- ``background``: it overlaps no labelled box at ``iou`` (a distractor, a shadow, an unlabelled object);
- ``confusion``: it overlaps a box of another class (a yellow cone called blue);
- ``duplicate``: it overlaps a box of its class that a higher-scoring detection took already.

Every image holding one is *mined* (the ``max_images`` with the most, then the most confident, where
capped); trainset@<stage> lists each ``copies`` times more, with its own labels, so the stage trains on
what its starting model gets wrong. A round is a stage: ``stage3_hn1: {from: stage3, hard_negatives: ...}``
mines with stage3's model and fine-tunes it; ``stage3_hn2: {from: stage3_hn1, ...}`` is the next round,
each its own mine@, trainset@ and train@ in the DAG.

A stage without ``hard_negatives`` gets a mine@ stage too (DVC templating has no optional stages or deps):
it writes ``{"hard_negatives": null}`` without loading the model, and its trainset never changes for it.

Output ``data/mined/<stage>/mined.json``: the settings and model it was mined with (trainset@ refuses a stale
one), images scanned per dataset, false positives found (per kind), the selected images, and per image every
false positive (box as normalised x1 y1 x2 y2, confidence, class, kind).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from stagetrain import ultra
from stagetrain.config import Config
from stagetrain.data.organized import split_images
from stagetrain.data.trainset import MINED_FILE, organized_yaml
from stagetrain.errors import UserError
from stagetrain.stats.matching import Detections, GroundTruth, box_iou, match

KINDS = ("background", "confusion", "duplicate")
BATCH = 16  # images per predict call


def ground_truth(image: Path) -> GroundTruth:
    """An image's labelled boxes as normalised x1 y1 x2 y2 (none for a missing or empty label file)."""
    label = Path(ultra.img2label_paths([str(image)])[0])
    rows = [line.split() for line in (label.read_text().splitlines() if label.is_file() else []) if line.strip()]
    try:
        values = np.array([[float(v) for v in row[:5]] for row in rows], dtype=np.float64).reshape(-1, 5)
    except ValueError:
        raise UserError(f"{label}: a label row is not `class x y w h`; rerun organize") from None
    xy, wh = values[:, 1:3], values[:, 3:5]
    return GroundTruth(values[:, 0].astype(np.int64), np.concatenate([xy - wh / 2, xy + wh / 2], axis=1))


def false_positives(gt: GroundTruth, det: Detections, iou: float) -> list[dict[str, Any]]:
    """The detections of one image that match no labelled box of their class at ``iou``, each with its kind."""
    tp = match(gt, det, np.array([iou]))[:, 0]
    overlaps = box_iou(det.boxes, gt.boxes) >= iou if gt.classes.size else np.zeros((det.classes.size, 0), bool)
    out = []
    for row in np.flatnonzero(~tp):
        same = overlaps[row] & (gt.classes == det.classes[row])
        kind = "duplicate" if same.any() else "confusion" if overlaps[row].any() else "background"
        box = [round(float(v), 5) for v in det.boxes[row]]
        out.append({"box": box, "conf": round(float(det.scores[row]), 5), "class": int(det.classes[row]), "kind": kind})
    return sorted(out, key=lambda fp: (-fp["conf"], fp["box"]))


def detect(weights: Path, images: list[Path], cfg: Config, conf: float, device: Any) -> list[Detections]:
    """The checkpoint's detections (normalised x1 y1 x2 y2) at or above ``conf`` on each image, at ``model.imgsz``."""
    model = ultra.YOLO(str(weights))
    out = []
    for start in range(0, len(images), BATCH):
        chunk = [str(p) for p in images[start : start + BATCH]]
        for result in model.predict(chunk, imgsz=cfg.imgsz, conf=conf, device=device, verbose=False, save=False):
            boxes = result.boxes
            out.append(Detections(boxes.cls.cpu().numpy(), boxes.conf.cpu().numpy(), boxes.xyxyn.cpu().numpy()))
    return out


def mine(cfg: Config, stage_name: str, weights: Path, organized: Path) -> dict[str, Any]:
    """Run the stage's ``from`` checkpoint over its train images (and the pool's); the mined.json content."""
    stage = cfg.stages[stage_name]
    record: dict[str, Any] = {"stage": stage_name, "model": stage.upstream, "dataset": stage.dataset}
    spec = stage.hard_negatives
    if spec is None:
        return {**record, "settings": None}
    from stagetrain.train import checkpoint  # torch: only a stage that mines pays for its import

    checkpoint.check_class_names(weights, cfg.classes)
    datasets = [stage.dataset, *([spec.pool] if spec.pool else [])]
    images = {dataset: split_images(organized_yaml(organized, dataset, cfg), "train") for dataset in datasets}
    device = ultra.resolve_device(stage.train_args.get("device"))
    per_image, kinds = [], dict.fromkeys(KINDS, 0)
    for dataset in datasets:
        for image, det in zip(images[dataset], detect(weights, images[dataset], cfg, spec.conf, device), strict=True):
            found = false_positives(ground_truth(image), det, spec.iou)
            for fp in found:
                kinds[fp["kind"]] += 1
            if found:
                per_image.append({"dataset": dataset, "image": image.name, "false_positives": found})
    ranked = sorted(
        per_image, key=lambda item: (-len(item["false_positives"]), -item["false_positives"][0]["conf"], item["dataset"], item["image"])
    )
    selected = ranked[: spec.max_images] if spec.max_images is not None else ranked
    return {
        **record,
        "settings": asdict(spec),
        "scanned_images": {dataset: len(paths) for dataset, paths in images.items()},
        "false_positives": sum(kinds.values()),
        "by_kind": kinds,
        "images_with_false_positives": len(per_image),
        "left_out_by_max_images": [f"{item['dataset']}/{item['image']}" for item in ranked[len(selected) :]],
        "selected": [
            {"dataset": item["dataset"], "image": item["image"], "false_positives": len(item["false_positives"])} for item in selected
        ],
        "images": sorted(per_image, key=lambda item: (item["dataset"], item["image"])),
    }


def run(cfg: Config, stage_name: str, weights: Path, organized: Path, out_dir: Path) -> dict[str, Any]:
    """Mine and write ``<out_dir>/mined.json``; return its content."""
    mined = mine(cfg, stage_name, weights, organized)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MINED_FILE).write_text(json.dumps(mined, indent=1) + "\n")
    return mined
