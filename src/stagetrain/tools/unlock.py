"""Recover after the whole `dvc repro` process group was killed (reboot, ``kill -9``).

DVC records running commands in ``.dvc/tmp/rwlock``. After a hard kill the file still names their
PIDs; DVC drops dead ones itself, but after a reboot or in a container the same PIDs are often
alive again as *other* processes, and DVC then refuses to run ("is busy, it is being blocked by").
``make unlock`` removes the file only when none of the processes it names is a live DVC process;
then ``dvc repro`` resumes interrupted training stages from their last completed epoch. Usage::

    python -m stagetrain.tools.unlock [REPO]      # REPO: the DVC repo's root, default the current directory
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import psutil

from stagetrain.errors import UserError


def _holders(lock: dict) -> list[dict]:
    holders = list(lock.get("write", {}).values())
    for infos in lock.get("read", {}).values():
        holders.extend(infos)
    return holders


def _is_live_dvc(pid: int) -> bool:
    try:
        cmdline = " ".join(psutil.Process(pid).cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return "dvc" in cmdline


def unlock(repo: Path = Path(".")) -> str:
    """Remove a stale ``.dvc/tmp/rwlock``; raise UserError if a live DVC process holds it."""
    path = repo / ".dvc" / "tmp" / "rwlock"
    if not path.exists():
        return f"{path}: no lock file, nothing to do"
    try:
        holders = _holders(json.loads(path.read_text() or "{}"))
    except json.JSONDecodeError:
        holders = []  # a torn lock file protects nothing
    live = {h["pid"]: h for h in holders if _is_live_dvc(int(h["pid"]))}.values()
    if live:
        names = "\n".join(f"  PID {h['pid']}: {h['cmd']}" for h in live)
        raise UserError(f"{path}: still held by running DVC processes; stop them first or wait:\n{names}")
    path.unlink()
    return f"{path}: removed (held by {len(holders)} dead process entries); run `dvc repro` to resume"


def main() -> None:
    try:
        print(unlock(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".")))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
