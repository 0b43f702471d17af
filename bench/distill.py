"""Epoch time of a distilled stage (yolov8s teacher) vs the plain student, measured side by side in one run.

Variants, each in a fresh process, interleaved over ``--rounds``, all training the same yolov8n
student on the same synthetic data with the same arguments and torch threads:

- ``plain``: no teacher
- ``logit``: stagetrain's logit distillation (``distill: {kind: logit}``)
- ``feature``: Ultralytics' built-in feature distillation (``distill: {kind: feature}``)

An epoch's time is train + val, taken from Ultralytics' callbacks; the first epoch (warm-up) is
dropped and the median of the rest is kept. Prints the ratio of each kind to ``plain``
(goal for ``logit`` <= 1.6). Usage: ``.venv/bin/python bench/distill.py [--epochs 3] [--images 160] [--rounds 2]``
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
from stagetrain.config import load
from stagetrain.train import runner
cfg = load(f"params_{variant}.yaml")
from _timing import EpochClock
from stagetrain.train import distill, resume
clock = EpochClock()
clock.attach_to_trainers(resume.AtomicCheckpointTrainer, distill.LogitDistillTrainer)  # every trainer the runner may pick
runner.run(cfg, "student", Path("data/data.yaml"), Path("base.pt"), Path(f"out_{variant}"), Path(f"live_{variant}"), Path(f"work_{variant}"), Path("teacher.pt"))
print(json.dumps(clock.report()))
"""


def prepare(workspace: Path, images: int, epochs: int) -> int:
    """Synthetic target data, a yolov8n student base, a yolov8s teacher, and one params file per variant."""
    from stagetrain.config import parse
    from stagetrain.data import organize, sources
    from stagetrain.train import checkpoint

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    synthetic = {k: v for k, v in params["datasets"]["target"]["synthetic"].items() if k not in ("train", "val", "test", "pool")}
    params["datasets"]["target"]["synthetic"] = {**synthetic, "images": images}  # the flat form: organize splits it 70/15/15
    student = {
        "from": "base",
        "teacher": "base",
        "dataset": "target",
        "epochs": epochs,
        "freeze_level": 0,
        "lr0": 0.001,
        "warmup_epochs": 0,
    }
    params["stages"] = {"student": student}
    params["evaluate"]["models"] = ["student"]
    params["export"]["model"] = "student"
    cfg = parse(params, str(workspace / "params.yaml"))
    sources.run(cfg, "target", workspace / "raw")
    organize.run(cfg, "target", workspace / "raw", workspace / "data")
    checkpoint.build_base(cfg, workspace / "base.pt")
    checkpoint.build_base(cfg, workspace / "teacher.pt", "yolov8s.yaml")
    for variant, block in {"plain": None, "logit": {"kind": "logit"}, "feature": {"kind": "feature"}}.items():
        stage = {**student, **({"teacher": "base", "distill": block} if block else {})}
        (workspace / f"params_{variant}.yaml").write_text(yaml.safe_dump({**params, "stages": {"student": stage}}))
    return len(list((workspace / "data/images/train").iterdir()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=160, help="synthetic target images (70%% train)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is dropped as warm-up")
    p.add_argument("--rounds", type=int, default=2, help="interleaved repetitions of the variants")
    p.add_argument(
        "--kinds", nargs="+", default=["logit", "feature"], choices=["logit", "feature"], help="distillation kinds timed beside plain"
    )
    opts = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        train_images = prepare(Path(tmp), opts.images, opts.epochs)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "bench")])}
        epochs: dict[str, list[float]] = {k: [] for k in ["plain", *opts.kinds]}
        for _ in range(opts.rounds):
            for variant in epochs:
                out = subprocess.run([sys.executable, "-c", VARIANT, variant, tmp], env=env, capture_output=True, text=True, check=False)
                if out.returncode:
                    sys.exit(f"{variant} failed:\n{out.stderr[-3000:]}")
                epochs[variant] += json.loads(out.stdout.strip().splitlines()[-1])["total"][1:]
    median = {k: statistics.median(v) for k, v in epochs.items()}
    print(json.dumps({
        "cpu_count": os.cpu_count(),
        "train_images": train_images,
        "teacher": "yolov8s.yaml", "student": "yolov8n.yaml",
        "median_epoch_seconds": {k: round(v, 2) for k, v in median.items()},
        **{f"ratio_{k}_vs_plain": round(median[k] / median["plain"], 3) for k in opts.kinds},
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
