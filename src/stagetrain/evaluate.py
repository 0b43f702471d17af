"""evaluate: every model in ``evaluate.models`` on the test split of ``evaluate.dataset``.

Ultralytics' validator scores each checkpoint (optionally with test-time augmentation). The very
predictions it saves (``save_json``) are scored a second time by pycocotools against a COCO
ground truth built here from the organized YOLO labels, so a bug on either side (label loading,
coordinate scaling, matching) shows up as a gap between the two mAP50-95 figures in eval.json.
Per model it also returns the test PR curve and the confusion rows that ``dvc plots`` draws.

The same predictions and ground truth feed a paired bootstrap over the test images (``stats``):
every model but ``baseline`` gets, in eval.json, the difference to the baseline in mAP50-95 and
mAP50 with a 95% interval, the smallest difference the split can detect, and the verdict.

The forgetting matrix (``forgetting``) scores the models once more on the split of every dataset of
``evaluate.datasets``: each (model, dataset) pair is scored once, the pairs above included.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import yaml
from PIL import Image

from stagetrain import forgetting, progress, stats, ultra
from stagetrain.config import Config, EvaluateSpec
from stagetrain.data.organized import split_images
from stagetrain.errors import UserError
from stagetrain.train import checkpoint

MAX_DET = 300  # detections kept per image: Ultralytics' val default, and COCOeval's maxDets to match it
PR_POINTS = 101  # recall steps of the PR curve written for dvc plots (COCO's 101-point grid)
BACKGROUND = "background"
BASELINE = EvaluateSpec.BASELINE
FORGETTING = EvaluateSpec.FORGETTING


# Ultralytics' detection validator that fills the confusion matrix with plots off (at conf 0.25, Ultralytics'
# predict threshold) and leaves COCO scoring to pycocotools here; subclass it to observe or feed the validator.
EvalValidator = ultra.EvalValidator


class ModelEvaluation(NamedTuple):
    metrics: dict[str, Any]  # one model's entry in metrics/eval.json
    pr_curve: list[dict[str, float]]  # rows {recall, precision}: mean over classes, IoU 0.5
    confusion: list[dict[str, str]]  # rows {actual, predicted}: one per matched or unmatched box
    records: stats.DetectionRecords  # per-image matches of its predictions: the input of the paired bootstrap
    predictions: list[dict[str, Any]]  # Ultralytics-format (COCO json) predictions: what ensembles fuse (ensemble.py)


def coco_ground_truth(images: list[Path], classes: tuple[str, ...]) -> dict[str, Any]:
    """COCO ground truth from YOLO labels: image ids 1..n in file order, category id = class index + 1.

    Category ids match Ultralytics' ``class_map`` for custom data; predictions are matched to
    images by file name, since Ultralytics' own image ids are file stems.
    """
    coco: dict[str, Any] = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": n} for i, n in enumerate(classes)]}
    for image_id, (image, label) in enumerate(zip(images, ultra.img2label_paths([str(p) for p in images])), 1):
        with Image.open(image) as im:
            width, height = ultra.exif_size(im)
        coco["images"].append({"id": image_id, "file_name": image.name, "width": width, "height": height})
        rows = [line.split() for line in Path(label).read_text().splitlines() if line.strip()] if Path(label).exists() else []
        for row in rows:
            cls, coords = int(row[0]), np.array(row[1:], dtype=float)
            if len(coords) == 4:  # cx cy w h
                x0, y0, x1, y1 = coords[0] - coords[2] / 2, coords[1] - coords[3] / 2, coords[0] + coords[2] / 2, coords[1] + coords[3] / 2
            else:  # a polygon: Ultralytics trains and validates on its bounding box
                x0, y0, x1, y1 = coords[0::2].min(), coords[1::2].min(), coords[0::2].max(), coords[1::2].max()
            box = [x0 * width, y0 * height, (x1 - x0) * width, (y1 - y0) * height]
            ann_id = len(coco["annotations"]) + 1
            coco["annotations"].append(
                {"id": ann_id, "image_id": image_id, "category_id": cls + 1, "bbox": box, "area": box[2] * box[3], "iscrowd": 0}
            )
    return coco


def coco_scores(ground_truth: dict[str, Any], predictions: list[dict[str, Any]]) -> dict[str, float]:
    """pycocotools' bbox mAP50 and mAP50-95 of Ultralytics-format predictions (matched to images by file name)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ids = {image["file_name"]: image["id"] for image in ground_truth["images"]}
    detections = [
        {"image_id": ids[p["file_name"]], "category_id": p["category_id"], "bbox": p["bbox"], "score": p["score"]} for p in predictions
    ]
    if not detections or not ground_truth["annotations"]:
        return {"mAP50": 0.0, "mAP50-95": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and summary table
        gt = COCO()
        gt.dataset = ground_truth
        gt.createIndex()
        scorer = COCOeval(gt, gt.loadRes(detections), "bbox")
        scorer.params.maxDets = [1, 10, MAX_DET]
        scorer.evaluate()
        scorer.accumulate()
    # precision[iou, recall, class, area, maxDets]; -1 marks classes without ground truth. summarize() is not
    # used: its mAP50-95 line is hard-wired to maxDets=100, which our [1, 10, MAX_DET] does not contain.
    precision = scorer.eval["precision"][:, :, :, 0, -1]
    return {"mAP50": _mean_defined(precision[0]), "mAP50-95": _mean_defined(precision)}


def _mean_defined(precision: np.ndarray) -> float:
    defined = precision[precision > -1]
    return float(defined.mean()) if defined.size else 0.0


def detection_records(ground_truth: dict[str, Any], predictions: list[dict[str, Any]], n_classes: int) -> stats.DetectionRecords:
    """The bootstrap's per-image records from the COCO ground truth and predictions that ``coco_scores`` reads.

    Boxes become pixel x1, y1, x2, y2 (COCO's are x, y, w, h), images keep the ground truth's order
    (predictions are matched to them by file name) and class ids are category ids - 1.
    """
    row = {image["id"]: i for i, image in enumerate(ground_truth["images"])}
    by_name = {image["file_name"]: i for i, image in enumerate(ground_truth["images"])}
    gt: list[list[dict[str, Any]]] = [[] for _ in row]
    found: list[list[dict[str, Any]]] = [[] for _ in row]
    for ann in ground_truth["annotations"]:
        gt[row[ann["image_id"]]].append(ann)
    for pred in predictions:
        found[by_name[pred["file_name"]]].append(pred)
    ground_truths = [stats.GroundTruth([a["category_id"] - 1 for a in anns], _xyxy([a["bbox"] for a in anns])) for anns in gt]
    detections = [
        stats.Detections([p["category_id"] - 1 for p in preds], [p["score"] for p in preds], _xyxy([p["bbox"] for p in preds]))
        for preds in found
    ]
    return stats.build_records(ground_truths, detections, n_classes)


def _xyxy(boxes: list[list[float]]) -> np.ndarray:
    xywh = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)


def versus_baseline(baseline: stats.DetectionRecords, model: stats.DetectionRecords, cfg: Config) -> dict[str, Any]:
    """``model - baseline`` in test mAP50-95 and mAP50: paired bootstrap interval, detectable difference, verdict.

    The verdict is taken on mAP50-95 against ``evaluate.margin``; numbers are rounded for eval.json.
    """
    started = time.perf_counter()
    boot = stats.paired_bootstrap(baseline, model, resamples=cfg.evaluate.resamples, seed=cfg.seed)
    decision = stats.verdict(boot["map50_95"]["ci_low"], boot["map50_95"]["ci_high"], cfg.evaluate.margin)
    renamed = {"a": BASELINE, "b": "model"}  # the stats' a and b, named for a reader of eval.json
    return {
        "direction": f"model - {BASELINE}",
        "images": boot["images"],
        "resamples": boot["resamples"],
        "seed": boot["seed"],
        "confidence": round(1 - boot["alpha"], 6),
        "margin": cfg.evaluate.margin,
        **{metric: {renamed.get(k, k): round(v, 6) for k, v in boot[metric].items()} for metric in ("map50_95", "map50")},
        "verdict": str(decision.decision),
        "sentence": decision.sentence,
        "seconds": round(time.perf_counter() - started, 2),
    }


def pr_rows(recall: np.ndarray, precision: np.ndarray) -> list[dict[str, float]]:
    """Mean precision over the classes present, at ``PR_POINTS`` recall steps (IoU 0.5).

    ``recall`` is Ultralytics' recall grid and ``precision`` its (classes, grid) precision on it (``ultra.pr_curve``).
    """
    prec = np.asarray(precision)
    mean = prec.mean(0) if prec.size else np.zeros_like(recall)
    steps = np.linspace(0, len(recall) - 1, PR_POINTS).round().astype(int)
    return [{"recall": round(float(recall[i]), 4), "precision": round(float(mean[i]), 6)} for i in steps]


def confusion_rows(matrix: np.ndarray, classes: tuple[str, ...]) -> list[dict[str, str]]:
    """DVC's confusion-template rows from Ultralytics' ``[predicted, actual]`` count matrix (last index = background)."""
    names = [*classes, BACKGROUND]
    return [
        {"actual": names[actual], "predicted": names[predicted]}
        for predicted, actual in zip(*np.nonzero(matrix))
        for _ in range(int(matrix[predicted, actual]))
    ]


def evaluate_model(cfg: Config, weights: Path, data_yaml: Path, work_dir: Path, validator: type = EvalValidator) -> ModelEvaluation:
    """Test-split metrics of one checkpoint, cross-checked with pycocotools, plus its PR and confusion rows."""
    checkpoint.check_class_names(weights, cfg.classes)
    train_args = cfg.stages[weights.parent.name].train_args if weights.parent.name in cfg.stages else {}
    images = split_images(data_yaml, cfg.evaluate.split)
    shutil.rmtree(work_dir, ignore_errors=True)  # predictions.json of an earlier run must not be read as this one's
    started = time.perf_counter()
    result = ultra.YOLO(str(weights)).val(
        validator=validator,
        data=str(data_yaml),
        split=cfg.evaluate.split,
        imgsz=cfg.imgsz,
        batch=train_args.get("batch", 16),
        device=ultra.resolve_device(train_args.get("device")),
        augment=cfg.evaluate.tta,
        max_det=MAX_DET,
        save_json=True,
        plots=False,
        verbose=False,
        project=str(work_dir.parent.resolve()),
        name=work_dir.name,
        exist_ok=True,
    )
    seconds = time.perf_counter() - started
    predictions_file = work_dir / "predictions.json"
    predictions = json.loads(predictions_file.read_text()) if predictions_file.exists() else []  # absent: no detections
    ground_truth = coco_ground_truth(images, cfg.classes)
    coco = coco_scores(ground_truth, predictions)
    box = result.box
    per_class = {name: {"AP50": 0.0, "AP50-95": 0.0} for name in cfg.classes}
    for i, class_id in enumerate(result.ap_class_index):
        per_class[cfg.classes[int(class_id)]] = {"AP50": round(float(box.ap50[i]), 6), "AP50-95": round(float(box.ap[i]), 6)}
    metrics = {
        "mAP50": round(float(box.map50), 6),
        "mAP50-95": round(float(box.map), 6),
        "precision": round(float(box.mp), 6),
        "recall": round(float(box.mr), 6),
        "coco_mAP50": round(coco["mAP50"], 6),
        "coco_mAP50-95": round(coco["mAP50-95"], 6),
        "coco_delta_mAP50-95": round(coco["mAP50-95"] - float(box.map), 6),
        "tta": cfg.evaluate.tta,
        "images": len(ground_truth["images"]),
        "instances": len(ground_truth["annotations"]),
        "detections": len(predictions),
        "inference_ms_per_image": round(float(result.speed["inference"]), 3),
        "seconds": round(seconds, 1),
        "per_class": per_class,
    }
    return ModelEvaluation(
        metrics,
        pr_rows(*ultra.pr_curve(result)),
        confusion_rows(ultra.confusion_counts(result), cfg.classes),
        detection_records(ground_truth, predictions, len(cfg.classes)),
        predictions,
    )


def data_yamls(cfg: Config, organized: Path) -> dict[str, Path]:
    """``{dataset: data.yaml}`` under the organized root for ``evaluate.dataset`` and every dataset of the matrix."""
    return {name: organized / name / "data.yaml" for name in dict.fromkeys((cfg.evaluate.dataset, *cfg.evaluate.datasets))}


def unscorable(data_yaml: Path, split: str) -> str | None:
    """Why ``split`` of an organized dataset cannot be scored (no such split, no image, no labelled box), or None."""
    if not data_yaml.is_file():
        raise UserError(f"{data_yaml} does not exist; run organize for that dataset first (`dvc repro` runs it)")
    if not (yaml.safe_load(data_yaml.read_text()) or {}).get(split):
        return f"no `{split}` split in its data.yaml"
    try:
        images = split_images(data_yaml, split)
    except UserError:
        return f"its `{split}` split holds no images"
    labels = (Path(label) for label in ultra.img2label_paths([str(image) for image in images]))
    if not any(label.is_file() and label.read_text().strip() for label in labels):
        return f"its `{split}` split holds no labelled box ({len(images)} images): mAP is undefined"
    return None


def run(
    cfg: Config,
    data: Mapping[str, Path],
    models_dir: Path,
    work_dir: Path,
    plots_dir: Path | None = None,
    validator: type = EvalValidator,
) -> dict:
    """Evaluate every ``evaluate.models`` checkpoint and build the forgetting matrix; returns eval.json's content.

    ``data`` maps each dataset (``evaluate.dataset`` and those of ``evaluate.datasets``, see
    ``data_yamls``) to its organized data.yaml. The result holds ``{model: metrics}`` on
    ``evaluate.dataset``, and under ``forgetting`` the matrix (``forgetting.matrix``). Every model
    but the baseline carries ``vs_baseline`` (see ``versus_baseline``), or ``{"skipped": why}`` when
    the baseline is not among ``evaluate.models``. With ``plots_dir``, writes ``pr/<model>.json`` and
    ``confusion/<model>.json`` there (the folders dvc.yaml declares as plots), replacing whatever an
    earlier run left.
    """
    missing = [name for name in (cfg.evaluate.dataset, *cfg.evaluate.datasets) if name not in data]
    if missing:
        raise UserError(f"evaluate: no data.yaml given for dataset(s) {', '.join(missing)}")
    # checked first: a missing data.yaml fails before minutes of scoring, not after
    skipped = {name: why for name in cfg.evaluate.datasets if (why := unscorable(data[name], cfg.evaluate.split)) is not None}
    scored: dict[tuple[str, str], ModelEvaluation] = {}

    def score(model: str, dataset: str) -> ModelEvaluation:
        if (dataset, model) not in scored:
            weights, folder = models_dir / model / "best.pt", work_dir / dataset / model
            with progress.phase(f"evaluate: {model} on {dataset}/{cfg.evaluate.split}") as scoring:  # one line per model and dataset
                scored[dataset, model] = evaluate_model(cfg, weights, data[dataset], folder, validator)
                scoring.update(scored[dataset, model].metrics["images"])
        return scored[dataset, model]

    results = {}
    for sub in ("pr", "confusion"):
        if plots_dir is not None:
            shutil.rmtree(plots_dir / sub, ignore_errors=True)
            (plots_dir / sub).mkdir(parents=True)
    for name in cfg.evaluate.models:
        evaluation = score(name, cfg.evaluate.dataset)
        results[name] = evaluation.metrics
        if plots_dir is not None:
            (plots_dir / "pr" / f"{name}.json").write_text(json.dumps(evaluation.pr_curve) + "\n")
            (plots_dir / "confusion" / f"{name}.json").write_text(json.dumps(evaluation.confusion) + "\n")
    from stagetrain import ensemble  # here, not at the top: ensemble.py imports this module

    for name, spec in cfg.evaluate.ensembles.items():  # WBF of the members' predictions, scored (and compared) like a model
        members = [score(model, cfg.evaluate.dataset) for model in spec.models]
        scored[cfg.evaluate.dataset, name] = ensemble.evaluate_ensemble(cfg, spec, members, data[cfg.evaluate.dataset])
        results[name] = scored[cfg.evaluate.dataset, name].metrics
    for name in (n for n in results if n != BASELINE):
        results[name]["vs_baseline"] = (
            versus_baseline(scored[cfg.evaluate.dataset, BASELINE].records, scored[cfg.evaluate.dataset, name].records, cfg)
            if BASELINE in results
            else {"skipped": f"`{BASELINE}` is not in `evaluate.models`: no comparison made"}
        )
    records = {
        dataset: {model: score(model, dataset).records for model in forgetting.to_score(cfg, dataset)}
        for dataset in cfg.evaluate.datasets
        if dataset not in skipped
    }
    results[FORGETTING] = forgetting.matrix(cfg, records, skipped)
    shutil.rmtree(work_dir, ignore_errors=True)
    return results


MODEL_METRICS = ("mAP50", "mAP50-95", "precision", "recall", "coco_mAP50-95")  # a model's row of `dvc metrics show`


def model_metrics(results: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{model: metrics/test/<model>.json}``: the few test figures a person compares across experiments, flat.

    Per evaluated model (every entry of ``run``'s result that holds a test ``mAP50-95``): ``MODEL_METRICS``,
    ``vs_baseline`` (``diff``, ``ci_low``, ``ci_high`` of test mAP50-95, model - baseline, and ``verdict``) and
    ``drop_mAP50-95`` (``{dataset: model - reference}`` for each forgetting-matrix cell with a drop). The rest
    (per-class AP, the mAP50 interval, bootstrap settings, the whole matrix) stays in eval.json.
    """
    drops: dict[str, dict[str, float]] = {}
    for dataset, entry in (results.get(FORGETTING) or {}).get("datasets", {}).items():
        for model, cell in entry.get("models", {}).items():
            if "drop_mAP50-95" in cell:
                drops.setdefault(model, {})[dataset] = cell["drop_mAP50-95"]["diff"]
    rows = {}
    for name, entry in results.items():
        if name == FORGETTING or not isinstance(entry, Mapping) or "mAP50-95" not in entry:
            continue
        row = {key: entry[key] for key in MODEL_METRICS if key in entry}
        versus = entry.get("vs_baseline") or {}
        if "map50_95" in versus:
            row["vs_baseline"] = {**{k: versus["map50_95"][k] for k in ("diff", "ci_low", "ci_high")}, "verdict": versus["verdict"]}
        if name in drops:
            row["drop_mAP50-95"] = drops[name]
        rows[name] = row
    return rows


def write_model_metrics(results: Mapping[str, Any], folder: Path) -> list[Path]:
    """One ``<model>.json`` per evaluated model in ``folder`` (emptied first): one row each in ``dvc metrics show``."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    written = []
    for name, row in model_metrics(results).items():
        written.append(folder / f"{name}.json")
        written[-1].write_text(json.dumps(row, indent=2) + "\n")
    return written
