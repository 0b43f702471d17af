"""The deploy package in ``models/export/``: model files, ``deploy.yaml``, ``predict.py`` and a README.

``deploy.yaml`` is written as JSON (JSON is YAML): ``predict.py`` reads it with the standard library.
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

from stagetrain.config import Config
from stagetrain.errors import UserError

PREDICT = Path(__file__).with_name("predict.py")
NMS = {"max_det": 300, "max_nms": 30000, "max_wh": 7680, "agnostic": False}  # Ultralytics' predict defaults
CALIBRATED_FLOOR = 0.001  # with a calibration, NMS keeps boxes down to this raw score before thresholds apply
README = """\
stagetrain deploy package: {stage} at {imgsz} px, classes {classes}.

  pip install numpy Pillow onnxruntime      (or openvino, for --format openvino)
  python predict.py image.jpg [more.jpg ...] [--format onnx|openvino] [--conf 0.25]

One JSON line per detection: class, conf (calibrated: {calibrated}), raw_conf, box x1 y1 x2 y2 in the
image's pixels. deploy.yaml holds the classes, input size, letterbox and normalisation, NMS settings,
calibration curves, per-class thresholds, the source stage's test metrics and each format's parity
with PyTorch (parity.json has the detail and the latencies). No torch, no Ultralytics needed.
"""


def read_calibration(path: Path | None, classes: tuple[str, ...]) -> dict | None:
    """The calibrate stage's JSON (per-class curves ``x`` -> ``y`` and thresholds), checked; None without one."""
    if path is None:
        return None
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: cannot be read as calibration JSON ({err}); rerun the calibrate stage") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("classes"), dict) or not isinstance(raw.get("thresholds", {}), dict):
        raise UserError(
            f'{path}: expected {{"model", "method", "classes": {{class: {{"x": [...], "y": [...]}}}}, "thresholds": {{class: conf}}}}'
        )
    for section in ("classes", "thresholds"):
        unknown = sorted(set(raw.get(section, {})) - set(classes))
        if unknown:
            raise UserError(f"{path}: `{section}` names classes that are not in params.yaml `classes`: {', '.join(unknown)}")
    for name, curve in raw["classes"].items():
        x, y = (curve.get(k) if isinstance(curve, dict) else None for k in ("x", "y"))
        ok = isinstance(x, list) and isinstance(y, list) and len(x) == len(y) >= 2
        ok = ok and all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in [*x, *y])
        if not ok or any(b < a for a, b in itertools.pairwise(x)):
            raise UserError(f"{path}: `classes.{name}` needs `x` and `y` lists of equal length >= 2, x non-decreasing, values in [0, 1]")
    for name, value in raw.get("thresholds", {}).items():
        if not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise UserError(f"{path}: `thresholds.{name}` is {value!r}; a confidence from 0 to 1")
    raw_thresholds = [v for v in (raw.get("raw_thresholds") or {}).values() if isinstance(v, (int, float))]
    return {
        "model": raw.get("model"),
        "method": raw.get("method"),
        "classes": raw["classes"],
        "thresholds": raw.get("thresholds", {}),
        # the calibrate stage's lowest raw score any threshold keeps: NMS needs no box below it
        "nms_floor": max(min(raw_thresholds) - 1e-6, CALIBRATED_FLOOR) if raw_thresholds else CALIBRATED_FLOOR,
    }


def write(cfg: Config, out_dir: Path, models: dict[str, str], calibration: dict | None, extra: dict | None = None) -> dict:
    """Write ``deploy.yaml``, ``predict.py`` and ``README.txt`` into ``out_dir``; return the deploy dict.

    ``models``: format -> file relative to ``out_dir``; ``extra``: test metrics and parity, added once measured.
    """
    deploy = {
        "format_version": 1,
        "source_stage": cfg.export.model,
        "classes": list(cfg.classes),
        "imgsz": cfg.imgsz,
        "input": {"layout": "NCHW", "channels": "RGB", "dtype": "float32", "scale": "1/255", "batch": 1},
        "letterbox": {"pad_value": 114, "center": True, "scaleup": True, "resize": "bilinear, half-pixel centres (OpenCV INTER_LINEAR)"},
        "nms": {"iou": cfg.export.iou, **NMS, "conf_floor": calibration["nms_floor"] if calibration else CALIBRATED_FLOOR},
        "conf": cfg.export.conf,
        "calibration": None if calibration is None else {k: calibration[k] for k in ("model", "method", "classes")},
        "thresholds": {c: calibration["thresholds"].get(c, cfg.export.conf) for c in cfg.classes}
        if calibration
        else {c: cfg.export.conf for c in cfg.classes},
        "models": models,
        "openvino_precision": "f32",  # OpenVINO's CPU default is bf16 where the CPU has it: scores move past the gate's FP32 bar
        **(extra or {}),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "deploy.yaml").write_text(json.dumps(deploy, indent=2) + "\n")
    shutil.copyfile(PREDICT, out_dir / "predict.py")
    (out_dir / "README.txt").write_text(
        README.format(
            stage=cfg.export.model, imgsz=cfg.imgsz, classes=", ".join(cfg.classes), calibrated="yes" if calibration else "no, raw scores"
        )
    )
    return deploy
