"""evaluate: every model in ``evaluate.models`` on the test split of ``evaluate.dataset``."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from stagetrain.config import Config
from stagetrain.train import checkpoint


def evaluate_model(cfg: Config, weights: Path, data_yaml: Path, work_dir: Path) -> dict:
    """Test-split metrics of one checkpoint: mAP50, mAP50-95, precision, recall, per-class AP."""
    from stagetrain.ultra import YOLO, resolve_device

    checkpoint.check_class_names(weights, cfg.classes)
    train_args = cfg.stages[weights.parent.name].train_args if weights.parent.name in cfg.stages else {}
    started = time.perf_counter()
    result = YOLO(str(weights)).val(
        data=str(data_yaml),
        split=cfg.evaluate_split,
        imgsz=cfg.imgsz,
        batch=train_args.get("batch", 16),
        device=resolve_device(train_args.get("device")),
        plots=False,
        verbose=False,
        project=str(work_dir.parent.resolve()),
        name=work_dir.name,
        exist_ok=True,
    )
    seconds = time.perf_counter() - started
    box = result.box
    per_class = {name: {"AP50": 0.0, "AP50-95": 0.0} for name in cfg.classes}
    for i, class_id in enumerate(result.ap_class_index):
        per_class[cfg.classes[int(class_id)]] = {"AP50": round(float(box.ap50[i]), 6), "AP50-95": round(float(box.ap[i]), 6)}
    return {
        "mAP50": round(float(box.map50), 6),
        "mAP50-95": round(float(box.map), 6),
        "precision": round(float(box.mp), 6),
        "recall": round(float(box.mr), 6),
        "inference_ms_per_image": round(float(result.speed["inference"]), 3),
        "seconds": round(seconds, 1),
        "per_class": per_class,
    }


def run(cfg: Config, data_yaml: Path, models_dir: Path, work_dir: Path) -> dict:
    """Evaluate every ``evaluate.models`` checkpoint; returns ``{model: metrics}``."""
    results = {}
    for name in cfg.evaluate_models:
        results[name] = evaluate_model(cfg, models_dir / name / "best.pt", data_yaml, work_dir / name)
    shutil.rmtree(work_dir, ignore_errors=True)
    return results
