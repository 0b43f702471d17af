"""select@<round>: rank a dataset's unlabelled pool by a model's uncertainty and package the top ``budget`` images.

Scores (higher = more worth labelling), from the detections at or above ``conf`` of each image:

* ``least_confidence``: ``1 - max conf``: how unsure the model is of its surest detection. An image with
  no detection scores 1 (the max of nothing is 0): the model finds nothing there, either because there
  is nothing or because it misses everything, and only a label tells which.
* ``margin``: the confidence-weighted mean over boxes of ``1 - (top-1 minus top-2 class score)``, the
  class scores of each kept box read from the raw head output at the anchor NMS kept (Ultralytics'
  results carry only the winning class). Weighted, because a 0.06-confidence box has two tiny class
  scores and so a margin near 0 whatever the image: the plain minimum over boxes was ~1 for every
  image of the target pool (measured with stage1: pool mean 0.973). No detection scores 0 (no box to
  be ambiguous about). End-to-end heads (no per-anchor class scores) cannot use it.
* ``band``: how many detections have a confidence within ``band: [min, max]`` (the seed's rule: neither
  clearly found nor clearly background).
* ``random``: a seeded draw, the control the others are measured against (bench/data_loop.py).

Ties go by file name, so the ranking is deterministic. ``diversity: N`` walks the ranking and passes over
a candidate within N bits (of the 256-bit pHash, :mod:`stagetrain.data.near_dup`) of an earlier pick;
each one passed over is listed in the manifest with the pick it resembles.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from stagetrain import ultra
from stagetrain.config import Config
from stagetrain.data import annotation, near_dup
from stagetrain.errors import UserError
from stagetrain.train import checkpoint

BATCH = 16
IOU = 0.7  # Ultralytics' predict default NMS IoU
MAX_DET = 300


@dataclass
class Detections:
    """One pool image and what the model found there (conf >= the round's ``conf``)."""

    path: Path
    width: int
    height: int
    boxes: list[tuple[int, float, float, float, float, float]]  # (class_id, conf, x0, y0, x1, y1) in px
    margins: list[float] | None  # per box: top-1 minus top-2 class score; None where the head gives no class scores


def _postprocess(self, preds, img, orig_imgs, **kwargs):
    """DetectionPredictor.postprocess, plus each kept box's full class-score row (``result.class_scores``)."""
    raw = preds[0] if isinstance(preds, (list, tuple)) else preds
    end2end = getattr(self.model, "end2end", False)
    kept, indices = ultra.non_max_suppression(
        preds, self.args.conf, self.args.iou, None, self.args.agnostic_nms, max_det=self.args.max_det, end2end=end2end, return_idxs=True
    )
    if not isinstance(orig_imgs, list):
        orig_imgs = [im.permute(1, 2, 0).cpu().numpy()[..., ::-1] for im in orig_imgs]
    results = self.construct_results(kept, img, orig_imgs)
    nc = len(self.model.names)
    for b, (result, idx) in enumerate(zip(results, indices, strict=True)):
        rows = idx.view(-1).long()
        per_anchor = not end2end and raw.ndim == 3 and raw.shape[1] >= 4 + nc
        result.class_scores = raw[b, 4 : 4 + nc, rows].T.float().cpu().numpy() if per_anchor else None
    return results


def predict(weights: Path, images: list[Path], imgsz: int, conf: float, device: object) -> list[Detections]:
    """The model's detections on ``images`` (in order), with each box's class-score margin where the head has one."""
    predictor = type("ScoresPredictor", (ultra.DetectionPredictor,), {"postprocess": _postprocess})
    model = ultra.YOLO(str(weights))
    out = []
    for start in range(0, len(images), BATCH):
        chunk = [str(p) for p in images[start : start + BATCH]]
        results = model.predict(
            chunk, imgsz=imgsz, conf=conf, iou=IOU, max_det=MAX_DET, device=device, verbose=False, predictor=predictor, batch=BATCH
        )
        for path, result in zip(images[start : start + BATCH], results, strict=True):
            xyxy = result.boxes.xyxy.cpu().numpy().tolist()
            confs = result.boxes.conf.cpu().numpy().tolist()
            classes = result.boxes.cls.cpu().numpy().astype(int).tolist()
            boxes = [(c, float(p), *map(float, b)) for c, p, b in zip(classes, confs, xyxy, strict=True)]
            scores = result.class_scores
            margins = (
                None if scores is None else [float(np.diff(np.sort(row)[-2:])[0]) if len(row) > 1 else float(row[0]) for row in scores]
            )
            height, width = result.orig_shape
            out.append(Detections(path, int(width), int(height), boxes, margins))
    return out


def uncertainty(det: Detections, strategy: str, band: tuple[float, float]) -> tuple[float, dict]:
    """The image's score under ``strategy`` (higher = picked first) and the figures beside it in the manifest."""
    confs = [box[1] for box in det.boxes]
    if strategy == "least_confidence":
        top = max(confs, default=0.0)
        return 1.0 - top, {"max_conf": round(top, 6)}
    if strategy == "margin":
        if det.margins is None:
            raise UserError(
                "`strategy: margin` needs per-class scores, which this model's end-to-end head does not give; use least_confidence"
            )
        weight = sum(confs)
        ambiguity = sum(c * (1.0 - m) for c, m in zip(confs, det.margins, strict=True)) / weight if weight else 0.0
        return ambiguity, {"min_margin": round(min(det.margins, default=1.0), 6)}
    if strategy == "band":
        inside = sum(1 for c in confs if band[0] <= c <= band[1])
        return float(inside), {"in_band": inside}
    raise ValueError(f"unknown strategy {strategy!r}")


def rank(
    dets: list[Detections], strategy: str, band: tuple[float, float], seed: int, round_name: str
) -> list[tuple[Detections, float, dict]]:
    """Every image with its score and figures, best first; ties by file name."""
    if strategy == "random":
        draws = np.random.default_rng([seed, zlib.crc32(round_name.encode())]).random(len(dets))
        scored = [(det, float(draw), {}) for det, draw in zip(sorted(dets, key=lambda d: d.path.name), draws, strict=True)]
    else:
        scored = [(det, *uncertainty(det, strategy, band)) for det in dets]
    return sorted(scored, key=lambda item: (-item[1], item[0].path.name))


def pick(ranked: list, budget: int, diversity: int) -> tuple[list, list[dict]]:
    """The first ``budget`` of ``ranked``, passing over near-duplicates of earlier picks (``diversity`` bits; 0 = off)."""
    chosen, passed_over, hashes = [], [], []
    for det, score, figures in ranked:
        if len(chosen) == budget:
            break
        if diversity:
            with Image.open(det.path) as image:
                phash = near_dup.perceptual_hash(image)
            close = [(near_dup.distance(phash, h), c) for h, c in zip(hashes, chosen, strict=True)]
            nearest = min(close, key=lambda x: x[0], default=None)
            if nearest is not None and nearest[0] <= diversity:
                passed_over.append(
                    {"file": det.path.name, "score": round(score, 6), "like": nearest[1][0].path.name, "distance": nearest[0]}
                )
                continue
            hashes.append(phash)
        chosen.append((det, score, figures))
    return chosen, passed_over


def pool_images(pool_dir: Path) -> list[Path]:
    images = sorted(p for p in pool_dir.iterdir() if p.suffix.lower().lstrip(".") in ultra.IMG_FORMATS) if pool_dir.is_dir() else []
    if not images:
        raise UserError(
            f"{pool_dir}: no unlabelled pool images; give the dataset a pool (synthetic: `pool: N`; files: a pool/ folder) and rerun organize"
        )
    return images


def run(cfg: Config, round_name: str, weights: Path, pool_dir: Path, out_zip: Path) -> dict:
    """Rank ``pool_dir`` with ``weights`` as ``select.<round_name>`` says and write the package; return the summary.

    Raises:
        UserError: an empty pool, a checkpoint whose classes are not params' ``classes``, or ``margin``
            with a head that has no per-class scores.
    """
    spec = cfg.select[round_name]
    checkpoint.check_class_names(weights, cfg.classes)
    images = pool_images(pool_dir)
    device = ultra.resolve_device(cfg.stages[spec.model].train_args.get("device") if spec.model in cfg.stages else "auto")
    device = device[0] if isinstance(device, (list, tuple)) else device  # a DDP list: one device predicts
    dets = predict(weights, images, cfg.imgsz, spec.conf, device)
    ranked = rank(dets, spec.strategy, spec.band, cfg.seed, round_name)
    chosen, passed_over = pick(ranked, spec.budget, spec.diversity)
    picks = [
        annotation.Pick(det.path, i, score, det.width, det.height, det.boxes, figures) for i, (det, score, figures) in enumerate(chosen, 1)
    ]
    meta = {
        "round": round_name,
        "dataset": spec.dataset,
        "model": spec.model,
        "strategy": spec.strategy,
        "budget": spec.budget,
        "band": list(spec.band),
        "conf": spec.conf,
        "preannotate": spec.preannotate,
        "diversity": spec.diversity,
        "seed": cfg.seed,
        "pool_images": len(images),
        "passed_over": passed_over,
    }
    manifest = annotation.write_package(out_zip, picks, cfg.classes, meta, spec.preannotate)
    scores = [p.score for p in picks]
    return {
        "round": round_name,
        "strategy": spec.strategy,
        "pool_images": len(images),
        "selected": len(picks),
        "passed_over": len(passed_over),
        "pool_detections": sum(len(d.boxes) for d in dets),
        "preannotations": sum(1 for p in picks for b in p.detections if b[1] >= spec.preannotate),
        "score_selected_mean": round(float(np.mean(scores)), 6) if scores else None,
        "score_pool_mean": round(float(np.mean([s for _, s, _ in ranked])), 6),
        "files": [entry["file"] for entry in manifest["images"]],
    }
