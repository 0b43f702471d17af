"""Data-loop comparisons with 95% CIs: oversampling, hard-negative mining and active learning, one report.

    .venv/bin/python bench/data_loop.py --run /tmp/run0 --only active     # from a finished pipeline run
    .venv/bin/python bench/data_loop.py                                   # reproduce up to train@stage2 first (slow)

``--run DIR``: a pipeline checkout that has run (models/, data/raw, data/organized/). Without it, the repo is
copied to a temp folder and ``dvc repro train@stage2`` runs there first. Each comparison is a module with
``measure(args) -> list[str]``: bench/loop_oversample.py, bench/loop_mining.py, bench/loop_active.py.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

COMPARISONS = {"oversample": "loop_oversample", "mining": "loop_mining", "active": "loop_active"}


def _reproduce(tmp: Path) -> Path:
    from stagetrain.tools.repo import copy_repo, dvc

    repo = copy_repo(tmp / "repo")
    dvc(repo, "repro", "train@stage2")
    return repo


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=sorted(COMPARISONS), action="append", help="run only these comparisons (repeatable)")
    p.add_argument("--run", help="a pipeline checkout that has run (default: reproduce up to train@stage2 in a temp copy)")
    p.add_argument("--budget", type=int, default=40, help="active: images added per arm")
    p.add_argument("--strategy", default="least_confidence", help="active: the strategy measured against random")
    p.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs per arm")
    p.add_argument("--start", help="checkpoint (stage name) the arms start from (default: stage3 if present, else stage2)")
    p.add_argument("--resamples", type=int, default=1000, help="paired bootstrap resamples")
    p.add_argument(
        "--seeds", type=int, default=1, help="train every arm with this many seeds (seed, seed+1, ...): the spread of training noise"
    )
    p.add_argument("--arms", default="none,active,random", help="active: arms to train (none = no images added: the epochs alone)")
    p.add_argument("--reuse", action="store_true", help="keep what an earlier run left in --work (packages, trained arms; same params)")
    p.add_argument("--work", help="scratch folder (default: <run>_<comparison> beside the run)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.run is None:
            args.run = str(_reproduce(Path(tmp)))
        for name in args.only or list(COMPARISONS):
            try:
                module = importlib.import_module(COMPARISONS[name])
            except ModuleNotFoundError as err:
                print(f"== {name}: not available ({err})")
                continue
            started = time.perf_counter()
            print(f"== {name}")
            for line in module.measure(args):
                print(line, flush=True)
            print(f"   ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
