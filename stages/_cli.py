"""Shared plumbing for the stage CLIs: put ../src on the path, load params once, print errors cleanly.

The stages import the library from this checkout's ``src/`` (not an installed copy) so that
``dvc exp run --queue``, which runs each experiment in a temp copy of the repo, runs that copy's code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable

SRC = str(Path(__file__).resolve().parents[1] / "src")
sys.path.insert(0, SRC)
# Child processes (Ultralytics' DDP workers) must import the same checkout's code.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))

from stagetrain.config import Config, ConfigError, load  # noqa: E402


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return p


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def main(p: argparse.ArgumentParser, work: Callable[[Config, argparse.Namespace], None]) -> None:
    """Parse arguments, load the typed config, run ``work``; a user error exits 2 without a traceback."""
    args = p.parse_args()
    try:
        work(load(args.params), args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
