"""`make unlock`: a stale DVC rwlock is removed only when no live DVC process holds it."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import psutil
import pytest

from stagetrain.errors import UserError
from stagetrain.tools.unlock import unlock


def _write_lock(repo, pid, cmd="dvc repro"):
    path = repo / ".dvc/tmp/rwlock"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {"write": {"models/stage2/best.pt": {"pid": pid, "cmd": cmd}}, "read": {"data/organized/target": [{"pid": pid, "cmd": cmd}]}}
        )
    )
    return path


def test_dead_holders_are_removed(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # its PID is now free
    path = _write_lock(tmp_path, proc.pid)
    assert "removed" in unlock(tmp_path)
    assert not path.exists()


def test_pid_reused_by_another_program_is_not_a_holder(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        path = _write_lock(tmp_path, other.pid)
        unlock(tmp_path)
        assert not path.exists()
    finally:
        other.kill()


def test_live_dvc_holder_is_refused(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "dvc", "repro"])
    while "dvc" not in psutil.Process(holder.pid).cmdline():  # wait for the exec
        time.sleep(0.01)
    try:
        path = _write_lock(tmp_path, holder.pid)
        with pytest.raises(UserError, match=rf"(?s)still held by running DVC processes.*PID {holder.pid}"):
            unlock(tmp_path)
        assert path.exists()
    finally:
        holder.kill()


def test_no_lock_is_fine(tmp_path):
    assert "nothing to do" in unlock(tmp_path)
