"""export: the chosen stage's best.pt -> the deploy package (ONNX, OpenVINO; TensorRT on a CUDA GPU), gated on parity.

``models/export/`` gets the model files, ``deploy.yaml``, the standalone ``predict.py`` and
``parity.json``. Every format goes through the gate (``stagetrain.deploy.parity``): PyTorch
(Ultralytics' predictor on best.pt) and the format (the package's own ``predict.py`` code for ONNX and
OpenVINO, Ultralytics' predictor for an engine) detect on the same test images; the share matched,
the worst |Δconf| and the test mAP50 delta (Ultralytics' validator on the exported file) must meet
``export.parity``, else the stage fails naming the format and figures. Latency per image (batch 1) at
the trained size and at 640 px is measured interleaved with PyTorch, so both see the same machine
load. ``metrics/export.json`` stays flat and small; ``parity.json`` holds the detail.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stagetrain import progress
from stagetrain.config import Config
from stagetrain.data.organized import split_images
from stagetrain.deploy import package, parity, predict
from stagetrain.errors import UserError
from stagetrain.ultra import CPU_THREADS, YOLO

PARITY_IMAGES = 16  # test images both models detect on (and whose raw outputs are compared element by element)
LATENCY_RUNS = 10  # timed calls per model and size (after one warm-up), batch 1; bench/export.py takes more
REFERENCE_IMGSZ = 640  # the size deployment figures are quoted at, measured besides the trained one
NO_CUDA = "no CUDA device"  # TensorRT engines are built on the GPU they run on; short: it is a `dvc metrics show` cell
CPU_FORMATS = ("onnx", "openvino")  # formats the package's predict.py runs
SHIPPED = {"onnx": "model.onnx", "openvino": "model_openvino_model/model.xml", "engine": "model.engine"}  # in the package


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


def _check_opset(cfg: Config) -> None:
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if cfg.export.opset is not None and cfg.export.opset > newest:
        raise UserError(f"{cfg.source}: `export.opset` is {cfg.export.opset}; the installed onnx supports up to {newest} (or use null)")


def _export(weights: Path, cfg: Config, fmt: str, imgsz: int, data_yaml: Path) -> Path:
    """Export with Ultralytics (it writes beside ``weights``); the params pick opset, dynamic axes, simplification, precision."""
    args = {"format": fmt, "imgsz": imgsz, "dynamic": cfg.export.dynamic}
    if fmt == "onnx":
        args.update(simplify=cfg.export.simplify, opset=cfg.export.opset)
    if fmt == "engine":  # Ultralytics 8.4's `quantize` replaces half/int8; INT8 calibrates on the val split of data_yaml
        args.update(device=0, data=str(data_yaml), quantize=8 if cfg.export.int8 else 16 if cfg.export.half else None)
    else:
        args.update(device="cpu")  # OpenVINO stays FP32: the gate's FP32 thresholds apply
    return Path(YOLO(str(weights)).export(**args))


def _model_file(exported: Path) -> Path:
    """The loadable file of an export: itself, or the ``.xml`` inside an OpenVINO folder."""
    return next(exported.glob("*.xml")) if exported.is_dir() else exported


def _val(model: Path, cfg: Config, data_yaml: Path, work_dir: Path, batch: int, device: object) -> tuple[float, float]:
    """Test-split (mAP50, mAP50-95) by Ultralytics' validator; square letterboxed batches, as every export format receives."""
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
        name=f"val_{model.name}",
        exist_ok=True,
    )
    return round(float(result.box.map50), 6), round(float(result.box.map), 6)


def ultralytics_detections(model: Path, files: list[Path], cfg: Config, conf: float, device: object) -> list[parity.Detections]:
    """Detections by Ultralytics' predictor (letterbox at imgsz, its NMS), boxes in image pixels."""
    yolo = YOLO(str(model), task="detect")
    found = []
    for f in files:
        boxes = yolo.predict(str(f), imgsz=cfg.imgsz, conf=conf, iou=cfg.export.iou, device=device, verbose=False)[0].boxes
        found.append(
            {
                "class_id": boxes.cls.cpu().numpy().astype(np.int64),
                "raw_conf": boxes.conf.cpu().numpy().astype(np.float64),
                "box": boxes.xyxy.cpu().numpy().astype(np.float64),
            }
        )
    return found


def _bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.parent.iterdir() if f.is_file()) if path.suffix == ".xml" else path.stat().st_size


def _sizes(cfg: Config) -> list[int]:
    return sorted({cfg.imgsz, REFERENCE_IMGSZ})


def _ship(exported: Path, out_dir: Path, fmt: str) -> Path:
    """Move an export into the package under its fixed name; return the loadable file."""
    target = out_dir / SHIPPED[fmt]
    shutil.rmtree(target.parent if fmt == "openvino" else target, ignore_errors=True)
    shutil.move(exported, target.parent if fmt == "openvino" else target)  # the weights are model.pt: files are model.*
    return target


def _latency_file(fmt: str, shipped: Path, size: int, cfg: Config, local: Path, data_yaml: Path, work_dir: Path) -> Path:
    """The shipped model, or (a static graph runs at its export size only) a scratch export at ``size``."""
    if size == cfg.imgsz or cfg.export.dynamic:
        return shipped
    scratch = work_dir / f"{size}_{fmt}"
    shutil.move(_export(local, cfg, fmt, size, data_yaml), scratch)
    return _model_file(scratch)


def _cpu_latency(
    cfg: Config, model: torch.nn.Module, shipped: dict[str, Path], images: list[Path], ctx: dict
) -> dict[str, dict[str, float]]:
    """{size: {runtime: median ms}}: PyTorch and every CPU format, interleaved, the same thread count for all."""
    latency, torch_threads = {}, torch.get_num_threads()
    torch.set_num_threads(ctx["threads"])  # Ultralytics' validators reset it; set it for the timing only
    try:
        with torch.inference_mode():
            for size in _sizes(cfg):
                x = load_images(images[:1], size)
                xt = torch.from_numpy(x)
                fns: dict[str, Callable[[], object]] = {"pytorch": lambda xt=xt: model(xt)}
                for fmt, path in shipped.items():
                    forward = predict.runtime(
                        fmt, _latency_file(fmt, path, size, cfg, ctx["local"], ctx["data_yaml"], ctx["work_dir"]), ctx["threads"]
                    )
                    fns[fmt] = lambda f=forward, x=x: f(x)
                latency[str(size)] = paired_median_ms(fns, ctx["runs"])
    finally:
        torch.set_num_threads(torch_threads)
    return latency


def _cuda_synced(fn: Callable[[], object]) -> Callable[[], object]:
    return lambda: (fn(), torch.cuda.synchronize())  # CUDA calls return before the GPU is done


def _engine(cfg: Config, files: list[Path], reference: list, floor: float, out_dir: Path, ctx: dict) -> dict:
    """TensorRT entry (CUDA only; unverified without a GPU): parity, mAP50, latency vs PyTorch FP32 on the same GPU."""
    from stagetrain.ultra import AutoBackend  # Ultralytics' runtime for an exported file

    local, data_yaml, work_dir = ctx["local"], ctx["data_yaml"], ctx["work_dir"]
    engine = _ship(_export(local, cfg, "engine", cfg.imgsz, data_yaml), out_dir, "engine")
    entry: dict = {"file": portable(engine), "bytes": engine.stat().st_size}
    entry["precision"] = "int8" if cfg.export.int8 else "fp16" if cfg.export.half else "fp32"
    entry.update(parity.compare(reference, ultralytics_detections(engine, files, cfg, floor, 0), cfg.export.conf))
    entry["mAP50"] = _val(engine, cfg, data_yaml, work_dir, 1, 0)[0]
    model = YOLO(str(local)).model.float().eval().fuse(verbose=False).to("cuda")
    latency: dict[str, dict[str, float]] = {}
    for size in _sizes(cfg):
        sized = engine
        if size != cfg.imgsz:  # TensorRT's dynamic profile stops at 2x the export size
            sized = _export(local, cfg, "engine", size, data_yaml).rename(work_dir / f"model_{size}.engine")
        backend = AutoBackend(str(sized), device=torch.device("cuda:0"), fp16=entry["precision"] != "fp32", verbose=False)
        x = torch.rand(1, 3, size, size, device="cuda")
        xe = x.half() if backend.fp16 else x
        with torch.inference_mode():
            latency[str(size)] = paired_median_ms(
                {"pytorch": _cuda_synced(lambda x=x: model(x)), "engine": _cuda_synced(lambda b=backend, xe=xe: b(xe))}, ctx["runs"]
            )
    entry["latency_ms"] = {size: ms["engine"] for size, ms in latency.items()}
    entry["pytorch_fp32_cuda_latency_ms"] = {size: ms["pytorch"] for size, ms in latency.items()}
    entry["latency_ratio"] = {size: round(ms["engine"] / ms["pytorch"], 3) for size, ms in latency.items()}
    return entry


def _flat(cfg: Config, pytorch_map50: float, detail: dict) -> dict:
    """metrics/export.json: a few numbers per format (``dvc metrics show`` prints one column each)."""
    flat: dict = {"model": cfg.export.model, "pytorch_map50": pytorch_map50}
    for fmt in (*CPU_FORMATS, "engine"):
        entry = detail.get(fmt)
        if entry is None:
            continue
        if "skipped" in entry:
            flat[f"{fmt}_skipped"] = entry["skipped"]
            continue
        flat.update({f"{fmt}_{k}": entry[k] for k in ("matched", "max_conf_delta", "map50_delta")})
        flat.update({f"{fmt}_latency_ratio_{size}": ratio for size, ratio in entry["latency_ratio"].items()})
    return flat


def run(
    cfg: Config,
    weights: Path,
    data_yaml: Path,
    out_dir: Path,
    work_dir: Path,
    latency_runs: int = LATENCY_RUNS,
    threads: int = CPU_THREADS,
    calibration: Path | None = None,
) -> dict:
    """Export ``weights`` into the deploy package ``out_dir``, gate every format on parity, return export.json's figures.

    ``threads``: CPU threads of PyTorch, onnxruntime and OpenVINO while timing (default: all cores).
    ``calibration``: the calibrate stage's JSON, copied into deploy.yaml (absent: raw scores, ``export.conf`` everywhere).
    Raises UserError when a format misses ``export.parity`` (after writing the package and parity.json).
    """
    _check_opset(cfg)
    calib = package.read_calibration(calibration, cfg.classes)
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    local = work_dir / "model.pt"  # Ultralytics writes exports beside the weights: keep them out of models/<stage>
    shutil.copyfile(weights, local)
    ctx = {"local": local, "data_yaml": data_yaml, "work_dir": work_dir, "threads": threads, "runs": latency_runs}
    files = split_images(data_yaml, cfg.evaluate.split)[:PARITY_IMAGES]
    out_dir.mkdir(parents=True, exist_ok=True)
    shipped = {}
    for fmt in (f for f in CPU_FORMATS if f in cfg.export.formats):
        step = progress.Step(f"export: {fmt}")
        shipped[fmt] = _ship(_export(local, cfg, fmt, cfg.imgsz, data_yaml), out_dir, fmt)
        step.done()
    models = {fmt: path.relative_to(out_dir).as_posix() for fmt, path in shipped.items()}
    package.write(cfg, out_dir, models, calib)

    spec = cfg.export.parity
    floor = parity.collect_floor(cfg.export.conf, spec, int8=cfg.export.int8 and "engine" in cfg.export.formats)
    reference = ultralytics_detections(local, files, cfg, floor, "cpu")
    batch = 8 if cfg.export.dynamic else 1  # a static graph takes batch 1; rect=False makes the batch size irrelevant to scores
    map50, map50_95 = _val(local, cfg, data_yaml, work_dir, batch, "cpu")
    model = YOLO(str(local)).model.float().eval().fuse(verbose=False)  # fused, as Ultralytics predicts and exports
    images = load_images(files[:8], cfg.imgsz)
    with torch.inference_mode():
        raw = model(torch.from_numpy(images))[0].numpy()
    detail: dict = {"source": portable(weights), "imgsz": cfg.imgsz, "parity_images": len(files), "conf": cfg.export.conf}
    detail.update(match_iou=parity.MATCH_IOU, collected_above=floor, cpu_threads=threads, pytorch={"mAP50": map50, "mAP50-95": map50_95})
    failed: list[str] = []
    for fmt, path in shipped.items():
        step = progress.Step(f"export: {fmt} parity and mAP50")
        detector = predict.Detector(out_dir, fmt, threads)
        entry = {"file": portable(path), "bytes": _bytes(path), "precision": "fp32"}
        entry.update(parity.compare(reference, [detector.raw(predict.read_image(f), floor) for f in files], cfg.export.conf))
        entry["mAP50"] = _val(path if fmt == "onnx" else path.parent, cfg, data_yaml, work_dir, batch, "cpu")[0]
        entry["map50_delta"] = round(entry["mAP50"] - map50, 6)
        entry["max_abs_diff"] = float(np.abs(np.concatenate([detector.forward(images[i : i + 1]) for i in range(len(images))]) - raw).max())
        failed += parity.failures(fmt, entry, spec, int8=False)
        detail[fmt] = entry
        step.done()
    if shipped:
        latency = _cpu_latency(cfg, model, shipped, files, ctx)
        detail["pytorch"]["latency_ms"] = {size: ms["pytorch"] for size, ms in latency.items()}
        for fmt in shipped:
            detail[fmt]["latency_ms"] = {size: ms[fmt] for size, ms in latency.items()}
            detail[fmt]["latency_ratio"] = {size: round(ms[fmt] / ms["pytorch"], 3) for size, ms in latency.items()}
    if "onnx" in shipped:
        import onnx

        graph = onnx.load(shipped["onnx"], load_external_data=False)
        detail["onnx"].update(opset=int(graph.opset_import[0].version), dynamic=cfg.export.dynamic, simplify=cfg.export.simplify)
    if "engine" in cfg.export.formats:
        step = progress.Step("export: engine")
        if torch.cuda.is_available():
            detail["engine"] = _engine(cfg, files, reference, floor, out_dir, ctx)
            detail["engine"]["map50_delta"] = round(detail["engine"]["mAP50"] - map50, 6)
            failed += parity.failures("engine", detail["engine"], spec, int8=cfg.export.int8)
        else:
            detail["engine"] = {"skipped": NO_CUDA}
        step.done(detail["engine"].get("skipped", ""))

    figures = {
        fmt: {k: detail[fmt][k] for k in ("matched", "max_conf_delta", "map50_delta")}
        for fmt in (*CPU_FORMATS, "engine")
        if "matched" in detail.get(fmt, {})
    }
    test_metrics = {"dataset": cfg.evaluate.dataset, "split": cfg.evaluate.split, "mAP50": map50, "mAP50-95": map50_95}
    package.write(cfg, out_dir, models, calib, {"test_metrics": test_metrics, "parity": figures})
    (out_dir / "parity.json").write_text(json.dumps(detail, indent=2) + "\n")
    shutil.rmtree(work_dir, ignore_errors=True)
    if failed:
        raise UserError("export: the parity gate failed (see models/export/parity.json):\n  " + "\n  ".join(failed))
    return _flat(cfg, map50, detail)
