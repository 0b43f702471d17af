"""export: the chosen stage's best.pt -> ONNX (always) and TensorRT (with a CUDA GPU).

For each format ``metrics/export.json`` records the file size, the median latency per image and
the parity with PyTorch (max absolute difference of raw outputs on real test images).
"""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from stagetrain.config import Config
from stagetrain.data.organize import IMAGE_SUFFIXES

PARITY_IMAGES = 8
LATENCY_RUNS = 20


def load_images(image_dir: Path, imgsz: int, limit: int = PARITY_IMAGES) -> np.ndarray:
    """Up to ``limit`` images as a float32 NCHW batch in [0, 1], resized to ``imgsz``."""
    files = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not files:
        raise FileNotFoundError(f"{image_dir}: no images for the parity check")
    arrays = [np.asarray(Image.open(f).convert("RGB").resize((imgsz, imgsz), Image.BILINEAR), dtype=np.float32) / 255 for f in files]
    return np.stack(arrays).transpose(0, 3, 1, 2).copy()


def median_ms(fn, runs: int = LATENCY_RUNS) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 3)


def run(cfg: Config, weights: Path, image_dir: Path, out_dir: Path, work_dir: Path) -> dict:
    """Export ``weights`` into ``out_dir`` and return per-format size, latency and parity."""
    import onnxruntime as ort
    import torch

    from stagetrain.ultra import YOLO

    if work_dir.exists():
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True)
    local = work_dir / "model.pt"  # Ultralytics writes exports beside the weights: keep them out of models/<stage>
    shutil.copyfile(weights, local)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = load_images(image_dir, cfg.imgsz)

    torch_model = YOLO(str(local)).model.float().eval()
    with torch.inference_mode():
        reference = torch_model(torch.from_numpy(images))[0].numpy()
        one = torch.from_numpy(images[:1])
        torch_ms = median_ms(lambda: torch_model(one))
    results: dict = {"source": str(weights), "imgsz": cfg.imgsz, "pytorch": {"latency_ms": torch_ms}}

    if "onnx" in cfg.export_formats:
        onnx_path = Path(YOLO(str(local)).export(format="onnx", imgsz=cfg.imgsz, dynamic=True, simplify=True, device="cpu"))
        target = out_dir / "model.onnx"
        shutil.move(onnx_path, target)
        session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name
        outputs = session.run(None, {input_name: images})[0]
        results["onnx"] = {
            "file": str(target),
            "bytes": target.stat().st_size,
            "latency_ms": median_ms(lambda: session.run(None, {input_name: images[:1]})),
            "max_abs_diff": float(np.abs(outputs - reference).max()),
            "parity_images": len(images),
        }
    if "engine" in cfg.export_formats:
        if not torch.cuda.is_available():
            results["engine"] = {"skipped": "no CUDA device: TensorRT engines are built on the GPU they run on"}
        else:
            engine = Path(YOLO(str(local)).export(format="engine", imgsz=cfg.imgsz, half=cfg.export_half, int8=cfg.export_int8, device=0))
            target = out_dir / "model.engine"
            shutil.move(engine, target)
            results["engine"] = {"file": str(target), "bytes": target.stat().st_size}
    shutil.rmtree(work_dir, ignore_errors=True)
    return results
