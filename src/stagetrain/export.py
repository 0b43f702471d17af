"""export: the chosen stage's best.pt -> ONNX (always) and TensorRT (with a CUDA GPU).

For each format ``metrics/export.json`` records the file (relative path) and its size, the parity
with PyTorch on real test images (max absolute difference of the raw outputs, and the test mAP50
of the exported model scored by Ultralytics' own validator next to the PyTorch one), and the median
latency per image at the trained size and at 640 px, measured interleaved with PyTorch so that
both see the same machine load. Without a CUDA device ``engine`` is recorded as skipped.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stagetrain.config import Config
from stagetrain.data.organized import split_images
from stagetrain.errors import UserError
from stagetrain.ultra import CPU_THREADS, YOLO

PARITY_IMAGES = 8  # test images whose raw outputs are compared element by element
LATENCY_RUNS = 10  # timed calls per model and size (after one warm-up), batch 1; bench/export.py takes more
REFERENCE_IMGSZ = 640  # the size deployment figures are quoted at, measured besides the trained one
NO_CUDA = "no CUDA device: TensorRT engines are built on the GPU they run on"


def portable(path: Path) -> str:
    """``path`` relative to the working directory (the repo root under DVC); never a host path."""
    path = Path(os.path.abspath(path))
    try:
        return path.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return path.name  # outside the repo (a test's temp dir): the name is all that is portable


def load_images(files: list[Path], imgsz: int) -> np.ndarray:
    """Images as a float32 NCHW batch in [0, 1], resized to ``imgsz`` x ``imgsz``."""
    arrays = [np.asarray(Image.open(f).convert("RGB").resize((imgsz, imgsz), Image.BILINEAR), dtype=np.float32) / 255 for f in files]
    return np.stack(arrays).transpose(0, 3, 1, 2).copy()


def paired_median_ms(fns: dict[str, Callable[[], object]], runs: int = LATENCY_RUNS) -> dict[str, float]:
    """Median ms per call of each function, called in turn so that every one sees the same machine load."""
    for fn in fns.values():
        fn()  # warm-up: allocations, lazy initialisation
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: round(statistics.median(t), 3) for name, t in times.items()}


def onnx_session(path: Path, threads: int = CPU_THREADS):
    """An onnxruntime CPU session with ``threads`` intra-op threads (PyTorch gets as many: like for like)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _onnx_forward(session) -> Callable[[np.ndarray], np.ndarray]:
    name = session.get_inputs()[0].name
    return lambda batch: np.concatenate(
        [session.run(None, {name: batch[i : i + 1]})[0] for i in range(len(batch))]
    )  # batch 1: static graphs too


def _check_opset(cfg: Config) -> None:
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if cfg.export.opset is not None and cfg.export.opset > newest:
        raise UserError(f"{cfg.source}: `export.opset` is {cfg.export.opset}; the installed onnx supports up to {newest} (or use null)")


def _export(weights: Path, cfg: Config, fmt: str, imgsz: int, data_yaml: Path) -> Path:
    """Export with Ultralytics (it writes beside ``weights``); the params pick opset, dynamic axes, simplification, precision."""
    args = {"format": fmt, "imgsz": imgsz, "dynamic": cfg.export.dynamic, "simplify": cfg.export.simplify, "opset": cfg.export.opset}
    if fmt == "engine":  # Ultralytics 8.4's `quantize` replaces half/int8; INT8 calibrates on the val split of data_yaml
        args.update(device=0, data=str(data_yaml), quantize=8 if cfg.export.int8 else 16 if cfg.export.half else None)
    else:
        args.update(device="cpu")
    return Path(YOLO(str(weights)).export(**args))


def _val_map50(model: Path, cfg: Config, data_yaml: Path, work_dir: Path, batch: int, device: object) -> float:
    """Test-split mAP50 by Ultralytics' validator; square letterboxed batches, as every export format receives."""
    result = YOLO(str(model), task="detect").val(
        data=str(data_yaml),
        split=cfg.evaluate.split,
        imgsz=cfg.imgsz,
        batch=batch,
        rect=False,
        device=device,
        plots=False,
        verbose=False,
        project=str(work_dir.resolve()),
        name=f"val_{model.suffix.lstrip('.')}",
        exist_ok=True,
    )
    return round(float(result.box.map50), 6)


def _shipped(path: Path, target: Path) -> dict:
    shutil.move(path, target)
    return {"file": portable(target), "bytes": target.stat().st_size}


def _sizes(cfg: Config) -> list[int]:
    return sorted({cfg.imgsz, REFERENCE_IMGSZ})


def _export_onnx(
    cfg: Config, local: Path, data_yaml: Path, out_dir: Path, work_dir: Path, images: np.ndarray, reference: np.ndarray, threads: int
) -> tuple[dict, dict]:
    """ONNX entry of export.json and a forward function per latency size (a dynamic graph serves all sizes)."""
    import onnx

    entry = _shipped(_export(local, cfg, "onnx", cfg.imgsz, data_yaml), out_dir / "model.onnx")
    graph = onnx.load(out_dir / "model.onnx", load_external_data=False)
    entry.update(opset=int(graph.opset_import[0].version), dynamic=cfg.export.dynamic, simplify=cfg.export.simplify)
    forward = _onnx_forward(onnx_session(out_dir / "model.onnx", threads))
    entry["max_abs_diff"] = float(np.abs(forward(images) - reference).max())
    forwards = {}
    for size in _sizes(cfg):
        if size == cfg.imgsz or cfg.export.dynamic:
            forwards[size] = forward
        else:  # a static graph runs at its export size only: a scratch export for the latency figure
            scratch = _export(local, cfg, "onnx", size, data_yaml).rename(work_dir / f"model_{size}.onnx")
            forwards[size] = _onnx_forward(onnx_session(scratch, threads))
    return entry, forwards


def _cuda_synced(fn: Callable[[], object]) -> Callable[[], object]:
    return lambda: (fn(), torch.cuda.synchronize())  # CUDA calls return before the GPU is done


def _engine(cfg: Config, local: Path, data_yaml: Path, out_dir: Path, work_dir: Path, runs: int, pytorch_map50: float) -> dict:
    """TensorRT entry (CUDA only; unverified without a GPU): size, mAP50, latency vs PyTorch FP32 on the same GPU."""
    from stagetrain.ultra import AutoBackend  # Ultralytics' runtime for an exported file

    entry = _shipped(_export(local, cfg, "engine", cfg.imgsz, data_yaml), out_dir / "model.engine")
    entry["precision"] = "int8" if cfg.export.int8 else "fp16" if cfg.export.half else "fp32"
    entry["mAP50"] = _val_map50(out_dir / "model.engine", cfg, data_yaml, work_dir, 1, 0)
    entry["mAP50_diff"] = round(entry["mAP50"] - pytorch_map50, 6)
    model = YOLO(str(local)).model.float().eval().fuse(verbose=False).to("cuda")
    latency: dict[str, dict[str, float]] = {}
    for size in _sizes(cfg):
        engine = out_dir / "model.engine"
        if size != cfg.imgsz:  # TensorRT's dynamic profile stops at 2x the export size
            engine = _export(local, cfg, "engine", size, data_yaml).rename(work_dir / f"model_{size}.engine")
        backend = AutoBackend(str(engine), device=torch.device("cuda:0"), fp16=entry["precision"] != "fp32", verbose=False)
        x = torch.rand(1, 3, size, size, device="cuda")
        xe = x.half() if backend.fp16 else x
        with torch.inference_mode():
            latency[str(size)] = paired_median_ms(
                {"pytorch_fp32": _cuda_synced(lambda x=x: model(x)), "engine": _cuda_synced(lambda b=backend, xe=xe: b(xe))}, runs
            )
    entry["latency_ms"] = {size: ms["engine"] for size, ms in latency.items()}
    entry["pytorch_fp32_cuda_latency_ms"] = {size: ms["pytorch_fp32"] for size, ms in latency.items()}
    entry["latency_ratio"] = {size: round(ms["engine"] / ms["pytorch_fp32"], 3) for size, ms in latency.items()}
    return entry


def run(
    cfg: Config, weights: Path, data_yaml: Path, out_dir: Path, work_dir: Path, latency_runs: int = LATENCY_RUNS, threads: int = CPU_THREADS
) -> dict:
    """Export ``weights`` into ``out_dir``; return per-format file, size, parity with PyTorch and latency.

    ``threads``: CPU threads of both PyTorch and onnxruntime while timing (default: all cores).
    """
    _check_opset(cfg)
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    local = work_dir / "model.pt"  # Ultralytics writes exports beside the weights: keep them out of models/<stage>
    shutil.copyfile(weights, local)
    out_dir.mkdir(parents=True, exist_ok=True)
    test_images = split_images(data_yaml, cfg.evaluate.split)[:PARITY_IMAGES]
    images = load_images(test_images, cfg.imgsz)

    model = YOLO(str(local)).model.float().eval().fuse(verbose=False)  # fused, as Ultralytics predicts and exports
    with torch.inference_mode():
        reference = model(torch.from_numpy(images))[0].numpy()
    batch = 8 if cfg.export.dynamic else 1  # a static graph takes batch 1; rect=False makes the batch size irrelevant to scores
    pytorch: dict = {"mAP50": _val_map50(local, cfg, data_yaml, work_dir, batch, "cpu")}
    results: dict = {
        "model": cfg.export.model,
        "source": portable(weights),
        "imgsz": cfg.imgsz,
        "parity_images": len(images),
        "cpu_threads": threads,
    }
    results["pytorch"] = pytorch

    if "onnx" in cfg.export.formats:
        onnx_entry, forwards = _export_onnx(cfg, local, data_yaml, out_dir, work_dir, images, reference, threads)
        onnx_entry["mAP50"] = _val_map50(out_dir / "model.onnx", cfg, data_yaml, work_dir, batch, "cpu")
        onnx_entry["mAP50_diff"] = round(onnx_entry["mAP50"] - pytorch["mAP50"], 6)
        latency, torch_threads = {}, torch.get_num_threads()
        torch.set_num_threads(threads)  # Ultralytics' validators reset it; set it for the timing only
        try:
            with torch.inference_mode():
                for size, forward in forwards.items():
                    x = load_images(test_images[:1], size)
                    xt = torch.from_numpy(x)
                    latency[str(size)] = paired_median_ms(
                        {"pytorch": lambda xt=xt: model(xt), "onnx": lambda f=forward, x=x: f(x)}, latency_runs
                    )
        finally:
            torch.set_num_threads(torch_threads)
        pytorch["latency_ms"] = {size: ms["pytorch"] for size, ms in latency.items()}
        onnx_entry["latency_ms"] = {size: ms["onnx"] for size, ms in latency.items()}
        onnx_entry["latency_ratio"] = {size: round(ms["onnx"] / ms["pytorch"], 3) for size, ms in latency.items()}
        results["onnx"] = onnx_entry
    if "engine" in cfg.export.formats:
        results["engine"] = (
            _engine(cfg, local, data_yaml, out_dir, work_dir, latency_runs, pytorch["mAP50"])
            if torch.cuda.is_available()
            else {"skipped": NO_CUDA}
        )
    shutil.rmtree(work_dir, ignore_errors=True)
    return results
