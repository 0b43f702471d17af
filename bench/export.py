"""Latency of the exported model vs PyTorch, measured interleaved in one run (``stagetrain.export.run``).

Exports a checkpoint exactly as the export stage does and prints the median-latency ratios per image
(batch 1) at the trained size and at 640 px:

- ``onnx / pytorch`` on the CPU, same thread count for both (goal at 640: <= 0.6)
- ``engine / pytorch_fp32`` on the GPU, TensorRT at ``export.half``/``int8`` precision (goal at 640: <= 0.3);
  reported as skipped without a CUDA device

Latency does not depend on the weights' values: by default the seeded random-init base weights of
``model.arch`` are exported (pass ``--weights`` for a trained checkpoint). Usage:
``.venv/bin/python bench/export.py [--runs 30] [--imgsz 160] [--threads N] [--weights models/stage3/best.pt]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def main() -> None:
    from stagetrain import export
    from stagetrain.config import parse
    from stagetrain.data import organize, sources
    from stagetrain.train import checkpoint
    from stagetrain.ultra import CPU_THREADS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=30, help="timed calls per model and size")
    p.add_argument("--imgsz", type=int, help="trained image size (default: model.imgsz of params.yaml)")
    p.add_argument("--weights", type=Path, help="checkpoint to export (default: random-init base weights)")
    p.add_argument("--threads", type=int, default=CPU_THREADS, help="CPU threads for both runtimes (1 is steadier on a busy machine)")
    opts = p.parse_args()

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    # the flat form, split 70/15/15 by organize: only the test split's first images are used
    synthetic = {k: v for k, v in params["datasets"]["target"]["synthetic"].items() if k not in ("train", "val", "test", "pool")}
    params["datasets"]["target"]["synthetic"] = {**synthetic, "images": 40}
    params["export"]["formats"] = ["onnx", "engine"]
    if opts.imgsz:
        params["model"]["imgsz"] = opts.imgsz
    cfg = parse(params)
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(tmp)
        sources.run(cfg, "target", workspace / "raw")
        organize.run(cfg, "target", workspace / "raw", workspace / "data")
        weights = opts.weights.resolve() if opts.weights else workspace / "base.pt"
        if not opts.weights:
            checkpoint.build_base(cfg, weights)
        os.chdir(workspace)
        results = export.run(
            cfg, weights, Path("data/data.yaml"), Path("export"), Path("work"), latency_runs=opts.runs, threads=opts.threads
        )
    onnx, engine = results.get("onnx", {}), results.get("engine", {})
    print(
        json.dumps(
            {
                "cpu_count": os.cpu_count(),
                "threads": opts.threads,
                "imgsz": cfg.imgsz,
                "runs": opts.runs,
                "latency_ms": {"pytorch_cpu": results["pytorch"].get("latency_ms"), "onnxruntime_cpu": onnx.get("latency_ms")},
                "ratio_onnx_vs_pytorch": onnx.get("latency_ratio"),
                "goal_ratio_onnx_vs_pytorch_at_640": 0.6,
                "ratio_engine_vs_pytorch_fp32": engine.get("latency_ratio", engine.get("skipped")),
                "goal_ratio_engine_vs_pytorch_fp32_at_640": 0.3,
                "onnx_max_abs_diff": onnx.get("max_abs_diff"),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
