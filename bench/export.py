"""CPU latency of the deploy package's runtimes vs PyTorch, side by side in one run: onnxruntime and OpenVINO.

Exports a checkpoint with the export stage's own settings (``export.*`` of params.yaml, through
``stagetrain.export``), then times one image (batch 1) at the trained size and at 640 px, the runtimes
called in turn within every repeat so that all see the same machine load, each with the same CPU threads:

- ``pytorch``: the fused PyTorch model (as Ultralytics predicts)
- ``onnxruntime``: model.onnx (goal at 640: <= 0.6x PyTorch)
- ``openvino_f32``: the OpenVINO model as the package runs it (FP32 inference; goal at 640: <= 0.4x PyTorch)
- ``openvino_cpu_default``: the same model at OpenVINO's CPU default precision (bf16 where the CPU has
  AVX512-BF16/AMX: faster, but confidences move ~0.03, past the FP32 gate; informational)

Latency does not depend on the weights' values: by default the seeded random-init base weights of
``model.arch`` are exported (pass ``--weights`` for a trained checkpoint). TensorRT needs a CUDA GPU and is
left to the export stage (metrics/export.json). Usage:
``.venv/bin/python bench/export.py [--runs 30] [--imgsz 160] [--threads N] [--weights models/stage3/best.pt]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

GOALS_AT_640 = {"onnxruntime": 0.6, "openvino_f32": 0.4}


def main() -> None:
    import openvino as ov
    import torch

    from stagetrain import export
    from stagetrain.config import parse
    from stagetrain.deploy.predict import runtime
    from stagetrain.train import checkpoint
    from stagetrain.ultra import CPU_THREADS, YOLO

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=30, help="timed calls per runtime and size")
    p.add_argument("--imgsz", type=int, help="trained image size (default: model.imgsz of params.yaml)")
    p.add_argument("--weights", type=Path, help="checkpoint to export (default: random-init base weights)")
    p.add_argument("--threads", type=int, default=CPU_THREADS, help="CPU threads for every runtime (1 is steadier on a busy machine)")
    opts = p.parse_args()

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    if opts.imgsz:
        params["model"]["imgsz"] = opts.imgsz
    cfg = parse(params)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        weights = work / "model.pt"
        if opts.weights:
            shutil.copyfile(opts.weights, weights)
        else:
            checkpoint.build_base(cfg, weights)
        files = {fmt: export._model_file(export._export(weights, cfg, fmt, cfg.imgsz, Path("unused.yaml"))) for fmt in ("onnx", "openvino")}
        model = YOLO(str(weights)).model.float().eval().fuse(verbose=False)
        torch.set_num_threads(opts.threads)
        forwards = {
            "onnxruntime": runtime("onnx", files["onnx"], opts.threads),
            "openvino_f32": runtime("openvino", files["openvino"], opts.threads, "f32"),
            "openvino_cpu_default": runtime(
                "openvino", files["openvino"], opts.threads, ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").to_string()
            ),
        }
        for size in sorted({cfg.imgsz, export.REFERENCE_IMGSZ}):
            x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
            xn = x.numpy()
            fns = {"pytorch": lambda x=x: model(x), **{name: (lambda f=f, xn=xn: f(xn)) for name, f in forwards.items()}}
            with torch.inference_mode():
                results[str(size)] = export.paired_median_ms(fns, opts.runs)
    ratios = {size: {name: round(ms[name] / ms["pytorch"], 3) for name in forwards} for size, ms in results.items()}
    at_640 = ratios[str(export.REFERENCE_IMGSZ)]
    print(
        json.dumps(
            {
                "command": " ".join(["python", *sys.argv]),
                "cpu": platform.processor() or platform.machine(),
                "cpu_count": os.cpu_count(),
                "threads": opts.threads,
                "weights": str(opts.weights or "random-init base"),
                "imgsz": cfg.imgsz,
                "runs": opts.runs,
                "openvino_cpu_default_precision": ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").to_string(),
                "median_ms": results,
                "ratio_vs_pytorch": ratios,
                "goals_at_640": {
                    name: {"goal": goal, "ratio": at_640[name], "met": at_640[name] <= goal} for name, goal in GOALS_AT_640.items()
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
