"""Overhead of a stagetrain train stage vs raw Ultralytics, measured side by side in one run.

Three variants train the same tiny stage (same data, upstream weights, epochs, arguments), each in
a fresh process, interleaved over ``--rounds``:

- ``ours``: ``stagetrain.train.runner.run`` (hermetic set-up, fingerprint, atomic checkpoints, dvclive, all cores)
- ``raw_same``: ``YOLO(base).train(...)`` with the same arguments and the same torch thread count (``ultra.CPU_THREADS``)
- ``raw_default``: ``YOLO(base).train(...)`` with Ultralytics' own thread default (cpu_count - 1)

Prints the whole-run wall ratio ours / raw_same (goal <= 1.02) and the training img/s ratio
ours / raw_default (goal >= 1.7 on 2 cores), img/s taken over the training part of each epoch after
the first (Ultralytics' callbacks), so set-up and validation do not dilute the thread count's effect. Usage: ``.venv/bin/python bench/overhead.py [--epochs 3] [--images 160] [--rounds 2]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

VARIANT = r"""
import json, os, sys, time
from pathlib import Path
variant, workspace = sys.argv[1], sys.argv[2]
os.chdir(workspace)
spec = json.load(open("bench.json"))
from _timing import EpochClock
clock = EpochClock()
if variant == "ours":
    from stagetrain.config import load
    from stagetrain.train import resume, runner
    cfg = load("params.yaml")
    clock.attach_to_trainers(resume.AtomicCheckpointTrainer)
    start = time.perf_counter()
    runner.run(cfg, "stage2", Path("data/data.yaml"), Path("base.pt"), Path("out"), Path("live"), Path("work"))
else:
    os.environ.update(YOLO_CONFIG_DIR=os.path.abspath("raw_config"), YOLO_OFFLINE="1", YOLO_AUTOINSTALL="false")
    import torch
    from ultralytics import YOLO
    from ultralytics.utils import SETTINGS
    SETTINGS.update(dvc=False, sync=False)
    model = YOLO("base.pt")
    clock.attach(model)
    if variant == "raw_same":  # Ultralytics resets threads in select_device(): set them back once training starts
        model.add_callback("on_pretrain_routine_end", lambda trainer: torch.set_num_threads(spec["threads"]))
    start = time.perf_counter()
    model.train(**spec["args"], project=os.path.abspath("raw_runs"), name=variant, exist_ok=True, verbose=False)
print(json.dumps({"seconds": time.perf_counter() - start, **clock.report()}))
"""


def prepare(workspace: Path, images: int, epochs: int) -> dict:
    """Synthetic target data, base weights, params for a stage2-like stage, and its exact Ultralytics args."""
    from stagetrain.config import parse
    from stagetrain.data import organize, sources
    from stagetrain.train import checkpoint, runner
    from stagetrain.train.freeze import frozen_layers
    from stagetrain.ultra import CPU_THREADS, YOLO, resolve_device

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    synthetic = {k: v for k, v in params["datasets"]["target"]["synthetic"].items() if k not in ("train", "val", "test", "pool")}
    params["datasets"]["target"]["synthetic"] = {**synthetic, "images": images}  # the flat form: organize splits it 70/15/15
    params["stages"]["stage2"].update(epochs=epochs, close_mosaic=0)
    cfg = parse(params, str(workspace / "params.yaml"))
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))
    sources.run(cfg, "target", workspace / "raw")
    organize.run(cfg, "target", workspace / "raw", workspace / "data")
    checkpoint.build_base(cfg, workspace / "base.pt")
    stage = cfg.stages["stage2"]
    freeze = frozen_layers(YOLO(str(workspace / "base.pt")).model, stage.freeze_level)
    args = runner.effective_args(cfg, "stage2", Path("data/data.yaml"), freeze, resolve_device(stage.train_args.get("device")))
    train_images = len(list((workspace / "data/images/train").iterdir()))
    spec = {"args": args, "train_images": train_images, "epochs": epochs, "threads": CPU_THREADS}
    (workspace / "bench.json").write_text(json.dumps(spec))
    return spec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=160, help="synthetic target images (70%% train)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2, help="interleaved repetitions of the three variants")
    opts = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(tmp)
        spec = prepare(workspace, opts.images, opts.epochs)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "bench")])}
        walls: dict[str, list[float]] = {"ours": [], "raw_same": [], "raw_default": []}
        train_epochs: dict[str, list[float]] = {k: [] for k in walls}
        for _ in range(opts.rounds):
            for variant, seconds in walls.items():
                out = subprocess.run([sys.executable, "-c", VARIANT, variant, tmp], env=env, check=True, capture_output=True, text=True)
                run = json.loads(out.stdout.strip().splitlines()[-1])
                seconds.append(run["seconds"])
                train_epochs[variant] += run["train"][1:]  # the first epoch warms up (allocator, dataloader)
    wall = {k: statistics.median(v) for k, v in walls.items()}
    img_per_s = {k: spec["train_images"] / statistics.median(v) for k, v in train_epochs.items()}
    result = {
        "cpu_count": os.cpu_count(),
        "torch_threads": spec["threads"],  # the CPUs this process may use (affinity, cgroup quota)
        "train_images": spec["train_images"],
        "epochs": spec["epochs"],
        "median_wall_seconds": {k: round(v, 2) for k, v in wall.items()},
        "train_img_per_s": {k: round(v, 1) for k, v in img_per_s.items()},
        "wall_ratio_ours_vs_raw_same": round(wall["ours"] / wall["raw_same"], 3),
        "img_per_s_ratio_ours_vs_raw_default": round(img_per_s["ours"] / img_per_s["raw_default"], 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
