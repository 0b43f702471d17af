"""Shared plumbing for the stage CLIs: put ../src on the path, load params once, print errors cleanly.

The stages import the library from this checkout's ``src/`` (not an installed copy) so that
``dvc exp run --queue``, which runs each experiment in a temp copy of the repo, runs that copy's code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")
sys.path.insert(0, SRC)
# Child processes (Ultralytics' DDP workers) must import the same checkout's code.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))

from stagetrain.config import Config, load, suggest
from stagetrain.errors import UserError

# A positional or option naming a params entry, and the section it must be a key of.
NAMED_ENTRIES = {"stage": ("stages", "stages"), "dataset": ("datasets", "datasets"), "init": ("inits", "model.inits")}


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return p


def existing(kind: str = "file") -> Callable[[str], Path]:
    """An argparse type for an input path: a missing one is a usage error (exit 2) that says what produces it."""

    def check(value: str) -> Path:
        path = Path(value)
        if not path.exists():
            raise argparse.ArgumentTypeError(
                f"{kind} {value} does not exist; run the stage that writes it first (`dvc repro` runs them in order)"
            )
        return path

    return check


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def _check_names(cfg: Config, args: argparse.Namespace) -> None:
    for attr, (field, section) in NAMED_ENTRIES.items():
        value, known = getattr(args, attr, None), getattr(cfg, field)
        if value is not None and value not in known:
            hint = suggest(value, list(known)) or f"use one of: {', '.join(known) or '(none defined)'}"
            raise UserError(f"{cfg.source}: `{section}` has no entry {value!r} (named on the command line); {hint}")


def main(p: argparse.ArgumentParser, work: Callable[[Config, argparse.Namespace], None]) -> None:
    """Parse arguments, load the typed config, run ``work``; a user error exits 2 without a traceback.

    A missing or unreadable file (an input deleted under the stage, a permission) is reported the same
    way, with the path; set ``STAGETRAIN_TRACEBACK=1`` to see where it was raised.
    """
    args = p.parse_args()
    try:
        cfg = load(args.params)
        _check_names(cfg, args)
        work(cfg, args)
    except UserError as err:
        _fail(str(err))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as err:
        if os.environ.get("STAGETRAIN_TRACEBACK"):
            raise
        _fail(f"{err.filename or ''}: {err.strerror or err}; check the path (an input of this stage is missing or unreadable)")


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)
