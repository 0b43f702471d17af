"""Detect objects with a stagetrain deploy package: numpy, Pillow and onnxruntime (or openvino), no torch, no Ultralytics.

Usage, from anywhere::

    python predict.py IMAGE [IMAGE ...] [--format onnx|openvino] [--conf 0.25] [--package DIR]

Prints one JSON line per detection: image, class, class_id, conf (calibrated when the package
carries a calibration), raw_conf (the network's), box as x1, y1, x2, y2 in the image's own pixels.

The package folder holds this file, ``deploy.yaml`` (JSON, which is YAML too: no parser needed
beyond the standard library) and the model files it names. Pre- and post-processing follow
Ultralytics' predictor: square letterbox at ``imgsz`` (bilinear resize with half-pixel centres, as
OpenCV's INTER_LINEAR; grey 114 padding centred), RGB in [0, 1], NCHW; per-class NMS. The export
stage checks this file's detections against PyTorch's (the parity gate). It ships as a copy of
``src/stagetrain/deploy/predict.py`` and must never import stagetrain.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

FORMATS = ("onnx", "openvino")


def resize_bilinear(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``image`` (H, W, 3 uint8) resized like ``cv2.resize(..., INTER_LINEAR)``: half-pixel centres, edges clamped, no antialiasing."""
    rows, cols = image.shape[:2]
    if (rows, cols) == (height, width):
        return image

    def axis(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5, 0, size_in - 1)
        lo = np.floor(pos).astype(np.int64)
        return lo, np.minimum(lo + 1, size_in - 1), (pos - lo).astype(np.float32)

    y0, y1, wy = axis(rows, height)
    x0, x1, wx = axis(cols, width)
    img = image.astype(np.float32)
    top = img[y0][:, x0] * (1 - wx)[None, :, None] + img[y0][:, x1] * wx[None, :, None]
    bottom = img[y1][:, x0] * (1 - wx)[None, :, None] + img[y1][:, x1] * wx[None, :, None]
    out = top * (1 - wy)[:, None, None] + bottom * wy[:, None, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def letterbox(image: np.ndarray, size: int, pad_value: int = 114) -> tuple[np.ndarray, float, tuple[int, int]]:
    """(1, 3, size, size) float32 input, scale gain, (left, top) padding: Ultralytics' LetterBox(auto=False, center=True)."""
    rows, cols = image.shape[:2]
    gain = min(size / rows, size / cols)
    new_w, new_h = max(round(cols * gain), 1), max(round(rows * gain), 1)
    dw, dh = (size - new_w) / 2, (size - new_h) / 2
    left, top = round(dw - 0.1), round(dh - 0.1)
    canvas = np.full((size, size, 3), pad_value, dtype=np.uint8)
    canvas[top : top + new_h, left : left + new_w] = resize_bilinear(image, new_w, new_h)
    return (canvas.transpose(2, 0, 1)[None].astype(np.float32) / 255), gain, (left, top)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy NMS, highest score first (boxes x1, y1, x2, y2)."""
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.clip(np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]), 0, None)
        h = np.clip(np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]), 0, None)
        inter = w * h
        order = rest[inter / (areas[i] + areas[rest] - inter + 1e-9) <= iou]
    return np.asarray(keep, dtype=np.int64)


def decode(output: np.ndarray, classes: int, conf: float, nms_cfg: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(classes, scores, boxes in input pixels) of one image's head output.

    ``(4 + classes, anchors)``: a YOLOv8-style dense head (cx, cy, w, h, class scores) that needs NMS, as
    Ultralytics' ``non_max_suppression`` does it (best class per box, class-offset boxes, ``max_det``);
    ``(max_det, 6)``: an end-to-end head (YOLOv10/YOLO26) that already gives x1, y1, x2, y2, score, class.
    """
    if output.shape[0] == 4 + classes:
        pred = output.T
        scores, cls = pred[:, 4:].max(1), pred[:, 4:].argmax(1)
        keep = scores > conf
        xywh, scores, cls = pred[keep, :4], scores[keep], cls[keep]
        boxes = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], axis=1)
        top = np.argsort(-scores, kind="stable")[: nms_cfg["max_nms"]]
        boxes, scores, cls = boxes[top], scores[top], cls[top]
        offset = 0 if nms_cfg["agnostic"] else cls[:, None].astype(np.float32) * nms_cfg["max_wh"]
        kept = nms(boxes + offset, scores, nms_cfg["iou"])[: nms_cfg["max_det"]]
        return cls[kept], scores[kept], boxes[kept]
    if output.ndim == 2 and output.shape[1] == 6:
        keep = output[:, 4] > conf
        return output[keep, 5].astype(np.int64), output[keep, 4], output[keep, :4]
    raise ValueError(f"model output of shape {output.shape} is neither (4 + {classes}, anchors) nor (max_det, 6)")


def runtime(fmt: str, model: Path, threads: int | None = None, openvino_precision: str = "f32"):
    """A function (1, 3, H, W) float32 -> the model's first output, run on CPU by onnxruntime or OpenVINO.

    ``openvino_precision``: OpenVINO's ``INFERENCE_PRECISION_HINT``. Its CPU default is bf16 wherever the CPU
    has bf16 instructions (AVX512-BF16, AMX), which moves confidences by ~0.03: f32 keeps FP32 parity.
    """
    if fmt == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x})[0]
    if fmt == "openvino":
        import openvino as ov

        config = {"INFERENCE_PRECISION_HINT": openvino_precision, **({"INFERENCE_NUM_THREADS": threads} if threads else {})}
        compiled = ov.Core().compile_model(str(model), "CPU", config)
        output = compiled.output(0)
        return lambda x: compiled([x])[output]
    raise SystemExit(f"--format {fmt}: use one of {', '.join(FORMATS)}")


class Detector:
    """One model of a deploy package, run on CPU by onnxruntime or OpenVINO."""

    def __init__(self, package: Path, fmt: str = "onnx", threads: int | None = None) -> None:
        self.package = Path(package)
        self.deploy = json.loads((self.package / "deploy.yaml").read_text())
        if fmt not in self.deploy["models"]:
            raise SystemExit(f"{self.package}: no {fmt} model in this package; it has {', '.join(self.deploy['models'])}")
        self.forward = runtime(fmt, self.package / self.deploy["models"][fmt], threads, self.deploy.get("openvino_precision", "f32"))
        self.classes = list(self.deploy["classes"])
        calibration = self.deploy.get("calibration") or {}
        self.curves = {self.classes.index(c): (np.asarray(v["x"]), np.asarray(v["y"])) for c, v in calibration.get("classes", {}).items()}
        thresholds = self.deploy.get("thresholds") or {}
        self.thresholds = np.array([thresholds.get(c, self.deploy["conf"]) for c in self.classes], dtype=np.float64)

    def raw(self, image: np.ndarray, conf: float) -> dict[str, np.ndarray]:
        """Detections of an RGB uint8 image above raw confidence ``conf``, before calibration: class_id, raw_conf, box."""
        size = self.deploy["imgsz"]
        x, gain, _ = letterbox(image, size, self.deploy["letterbox"]["pad_value"])
        cls, scores, boxes = decode(self.forward(x)[0], len(self.classes), conf, self.deploy["nms"])
        rows, cols = image.shape[:2]
        left, top = round((size - cols * gain) / 2 - 0.1), round((size - rows * gain) / 2 - 0.1)  # Ultralytics' scale_boxes
        boxes = (boxes - np.array([left, top, left, top], dtype=np.float32)) / gain
        boxes = np.clip(boxes, 0, [cols, rows, cols, rows])
        return {"class_id": cls.astype(np.int64), "raw_conf": scores.astype(np.float64), "box": boxes.astype(np.float64)}

    def __call__(self, image: np.ndarray, conf: float | None = None) -> list[dict]:
        """Detections to report: calibrated confidence at or above its class threshold (or ``conf`` for every class)."""
        threshold = self.thresholds if conf is None else np.full(len(self.classes), float(conf))
        # calibration can lift a low raw score over its class threshold: NMS then keeps every box above a low floor
        found = self.raw(image, self.deploy["nms"]["conf_floor"] if self.curves else float(threshold.min()))
        out = []
        for cls, raw, box in zip(found["class_id"], found["raw_conf"], found["box"], strict=True):
            curve = self.curves.get(int(cls))
            calibrated = float(np.interp(raw, *curve)) if curve else float(raw)
            if calibrated >= threshold[cls]:
                name = self.classes[cls]
                out.append(
                    {
                        "class": name,
                        "class_id": int(cls),
                        "conf": round(calibrated, 5),
                        "raw_conf": round(float(raw), 5),
                        "box": [round(float(v), 2) for v in box],
                    }
                )
        return out


def read_image(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--format", default="onnx", choices=FORMATS)
    p.add_argument("--conf", type=float, help="one threshold for every class (default: deploy.yaml's per-class thresholds)")
    p.add_argument("--package", type=Path, default=Path(__file__).resolve().parent, help="package folder (default: this file's)")
    p.add_argument("--threads", type=int, help="CPU threads (default: the runtime's choice)")
    args = p.parse_args(argv)
    detector = Detector(args.package, args.format, args.threads)
    for path in args.images:
        for detection in detector(read_image(path), args.conf):
            print(json.dumps({"image": str(path), **detection}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
