"""The deploy package's predict.py: standalone (no torch, no Ultralytics, no stagetrain), and PyTorch's detections within the gate."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from stagetrain.config import parse
from stagetrain.data.organized import split_images
from stagetrain.deploy import package as deploy_package
from stagetrain.deploy import parity, predict
from stagetrain.errors import UserError
from test_export import WEIGHTS, export_params, module_monkeypatch, package  # noqa: F401  (fixtures: the exported package)

# predict.py runs in a fresh, isolated interpreter (-I: no PYTHONPATH, no user site) where importing any of these fails
BLOCKED = ("torch", "torchvision", "ultralytics", "stagetrain", "cv2")
RUN_BLOCKED = (
    "import sys, runpy\n"
    f"for name in {BLOCKED!r}: sys.modules[name] = None\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


def run_predict(pkg: Path, images: list[Path], *args: str) -> list[dict]:
    proc = subprocess.run(
        [sys.executable, "-I", "-c", RUN_BLOCKED, str(pkg / "predict.py"), *map(str, images), *args],
        cwd=pkg.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def as_detections(lines: list[dict], images: list[Path]) -> list[parity.Detections]:
    per_image = []
    for image in images:
        rows = [d for d in lines if d["image"] == str(image)]
        per_image.append(
            {
                "class_id": np.array([d["class_id"] for d in rows], dtype=np.int64),
                "raw_conf": np.array([d["raw_conf"] for d in rows]),
                "box": np.array([d["box"] for d in rows]).reshape(-1, 4),
            }
        )
    return per_image


@pytest.mark.slow  # trains a model, exports
@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_standalone_predict_matches_pytorch_within_the_gate(package, tmp_path, fmt):  # noqa: F811
    workspace, _ = package
    pkg = tmp_path / "shipped"
    shutil.copytree(workspace / "models/export", pkg)  # away from the repo: the package alone
    cfg = parse(export_params())
    images = [Path(shutil.copy(f, tmp_path)) for f in split_images(workspace / "organized/data.yaml", cfg.evaluate.split)[:8]]
    floor = parity.collect_floor(cfg.export.conf, cfg.export.parity, int8=False)

    lines = run_predict(pkg, images, "--format", fmt, "--conf", str(floor))
    assert lines and set(lines[0]) == {"image", "class", "class_id", "conf", "raw_conf", "box"}
    assert all(d["class"] == cfg.classes[d["class_id"]] and d["conf"] == d["raw_conf"] >= floor for d in lines)  # uncalibrated
    from stagetrain import export  # the PyTorch side: Ultralytics' predictor on the exported checkpoint

    reference = export.ultralytics_detections(workspace / WEIGHTS, images, cfg, floor, "cpu")
    figures = parity.compare(reference, as_detections(lines, images), cfg.export.conf)
    assert figures["detections"] >= 10
    assert parity.failures(fmt, {**figures, "map50_delta": None}, cfg.export.parity, int8=False) == [], figures
    default = run_predict(pkg, images[:2], "--format", fmt)  # deploy.yaml's thresholds: export.conf for every class
    assert default and min(d["conf"] for d in default) >= cfg.export.conf


@pytest.mark.slow  # trains a model, exports
def test_calibration_and_class_thresholds_shape_the_output(package, tmp_path):  # noqa: F811
    """An identity curve for one class, a halving curve for the rest; a threshold for the first: predict applies them all."""
    workspace, _ = package
    cfg = parse(export_params())
    first, *rest = cfg.classes
    curves = {first: {"x": [0, 1], "y": [0, 1]}, **{c: {"x": [0, 1], "y": [0, 0.5]} for c in rest}}
    (tmp_path / "calibration.json").write_text(
        json.dumps({"model": "baseline", "method": "hand", "classes": curves, "thresholds": {first: 0.5}})
    )
    pkg = tmp_path / "pkg"
    shutil.copytree(workspace / "models/export", pkg)
    deploy = json.loads((pkg / "deploy.yaml").read_text())
    deploy_package.write(cfg, pkg, deploy["models"], deploy_package.read_calibration(tmp_path / "calibration.json", cfg.classes))
    written = json.loads((pkg / "deploy.yaml").read_text())
    assert written["calibration"]["method"] == "hand" and written["thresholds"] == {first: 0.5, **{c: cfg.export.conf for c in rest}}

    image = predict.read_image(split_images(workspace / "organized/data.yaml", "test")[0])
    raw = predict.Detector(pkg).raw(image, 0.001)
    expected = []
    for cls, conf in zip(raw["class_id"], raw["raw_conf"], strict=True):
        calibrated = conf if cls == 0 else conf / 2
        if calibrated >= (0.5 if cls == 0 else cfg.export.conf):
            expected.append((int(cls), round(float(calibrated), 5)))
    got = [(d["class_id"], d["conf"]) for d in predict.Detector(pkg)(image)]
    assert got == expected and got, (got, expected)


def test_resize_and_letterbox_follow_opencv_and_ultralytics():
    """Bilinear resize within one grey level of cv2.INTER_LINEAR (its fixed-point rounding); letterbox geometry as Ultralytics'."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (96, 131, 3), dtype=np.uint8)
    for width, height in ((64, 47), (200, 147), (131, 96)):
        ours = predict.resize_bilinear(image, width, height).astype(int)
        theirs = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR).astype(int)
        assert np.abs(ours - theirs).max() <= 1
    x, gain, (left, top) = predict.letterbox(image, 64)
    assert x.shape == (1, 3, 64, 64) and x.dtype == np.float32 and gain == 64 / 131
    # 131 x 96 -> 64 x 47: 17 rows of padding, 8 above (round(8.5 - 0.1)) and 9 below, grey 114
    assert (left, top) == (0, 8) and np.all(x[0, :, :8] == np.float32(114 / 255)) and np.all(x[0, :, 55:] == np.float32(114 / 255))
    assert not np.all(x[0, :, 8] == np.float32(114 / 255))


def test_calibration_file_errors_name_the_file(tmp_path):
    classes = ("a", "b")
    bad = {
        "unknown class": (
            {"classes": {"c": {"x": [0, 1], "y": [0, 1]}}},
            r"`classes` names classes that are not in params.yaml `classes`: c",
        ),
        "short curve": ({"classes": {"a": {"x": [0], "y": [0]}}}, r"`classes.a` needs `x` and `y` lists of equal length >= 2"),
        "decreasing x": ({"classes": {"a": {"x": [0.5, 0.2], "y": [0, 1]}}}, r"x non-decreasing"),
        "threshold": ({"classes": {}, "thresholds": {"a": 2}}, r"`thresholds.a` is 2; a confidence from 0 to 1"),
        "shape": ([], r"expected \{"),
    }
    for name, (content, message) in bad.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(content))
        with pytest.raises(UserError, match=message):
            deploy_package.read_calibration(path, classes)
    assert deploy_package.read_calibration(None, classes) is None
