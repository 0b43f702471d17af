"""Crash-safe stages: SIGKILL a real (tiny) training run after its first epoch; the rerun resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from stagetrain.config import parse
from stagetrain.data import organize, sources
from stagetrain.train import checkpoint

EPOCHS = 3


@pytest.fixture
def workspace(tmp_path, params):
    """Organized target data, base weights and a params file for a 3-epoch stage2, in tmp_path."""
    params["stages"]["stage2"]["epochs"] = EPOCHS
    cfg = parse(params)
    sources.run(cfg, "target", tmp_path / "raw")
    organize.run(cfg, "target", tmp_path / "raw", tmp_path / "data")
    checkpoint.build_base(cfg, tmp_path / "base.pt")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path


def train_cmd(tmp: Path) -> list[str]:
    return [
        sys.executable, str(REPO / "stages/train.py"), "stage2", "--params", "params.yaml",
        "--data", "data/data.yaml", "--upstream", "base.pt", "--out", "out", "--metrics", "stage2.json",
        "--live", "live", "--work", "work", "--teacher", "base.pt",
    ]  # fmt: skip


def start_and_kill_after_first_epoch(tmp: Path) -> None:
    proc = subprocess.Popen(train_cmd(tmp), cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp / "work/run/weights/last.pt"
    deadline = time.monotonic() + 300
    while not last.exists():
        assert proc.poll() is None, "training ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert checkpoint.read(last)["epoch"] + 1 < EPOCHS, "killed too late to prove a resume"


@pytest.mark.slow  # trains a model
@pytest.mark.parametrize("kind", [None, "logit", "feature"])
def test_killed_stage_resumes_and_finishes(workspace, kind):
    if kind:  # a distilled stage resumes like a plain one (its teacher rebuilt, not resumed from the checkpoint)
        params = yaml.safe_load((workspace / "params.yaml").read_text())
        params["stages"]["stage2"].update(teacher="stage1", distill={"kind": kind})
        (workspace / "params.yaml").write_text(yaml.safe_dump(params))
    start_and_kill_after_first_epoch(workspace)
    completed = checkpoint.read(workspace / "work/run/weights/last.pt")["epoch"] + 1
    subprocess.run(train_cmd(workspace), cwd=workspace, check=True, capture_output=True)
    metrics = json.loads((workspace / "stage2.json").read_text())
    assert metrics["resumed_from_epoch"] == completed >= 1
    assert metrics["epochs_run"] == EPOCHS
    assert metrics["distill"] == (kind and {"kind": kind, "teacher": "stage1"})
    steps = (workspace / "live/plots/metrics/train/box_loss.tsv").read_text().splitlines()[1:]
    assert [int(line.split("\t")[0]) for line in steps] == list(range(EPOCHS))  # one curve, no restart at 0
    assert not (workspace / "work").exists()


@pytest.mark.slow  # trains a model
def test_changed_params_never_resume_stale_work(workspace):
    start_and_kill_after_first_epoch(workspace)
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["stages"]["stage2"]["lr0"] = 0.002
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))
    subprocess.run(train_cmd(workspace), cwd=workspace, check=True, capture_output=True)
    metrics = json.loads((workspace / "stage2.json").read_text())
    assert metrics["resumed_from_epoch"] is None and metrics["epochs_run"] == EPOCHS
    assert yaml.safe_load((workspace / "out/args.yaml").read_text())["lr0"] == 0.002


@pytest.mark.slow  # trains a model
def test_a_second_trainer_of_the_same_stage_is_refused(workspace):
    """An orphaned trainer (its `dvc repro` killed) still owns the run folder; a rerun must not train beside it."""
    first = subprocess.Popen(train_cmd(workspace), cwd=workspace, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock = workspace / ".work.lock"
        deadline = time.monotonic() + 120
        while f"pid {first.pid}" not in (lock.read_text() if lock.exists() else ""):
            assert first.poll() is None and time.monotonic() < deadline, "first trainer never took the lock"
            time.sleep(0.1)
        second = subprocess.run(train_cmd(workspace), cwd=workspace, capture_output=True, text=True, check=False)
        assert second.returncode == 2
        assert f"work: pid {first.pid} is still training this stage" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.kill()
        first.wait()
    # the kernel dropped the dead holder's lock: the next run proceeds (and resumes if it can)
    subprocess.run(train_cmd(workspace), cwd=workspace, check=True, capture_output=True)
    assert json.loads((workspace / "stage2.json").read_text())["epochs_run"] == EPOCHS


@pytest.mark.slow
def test_dvc_repro_recovers_from_both_crash_shapes(tmp_path):
    """Kill only the training process, then the whole `dvc repro` process group; each rerun resumes."""
    import psutil

    from conftest import copy_repo, repo_params, shrink

    repo = copy_repo(tmp_path / "repo")
    params = shrink(repo_params())
    params["stages"]["stage2"]["epochs"] = 4
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(repo / "src")}
    dvc = [sys.executable, "-m", "dvc", "repro", "train@stage2"]
    last = repo / ".stagetrain/runs/stage2/run/weights/last.pt"

    def run_until_epoch(epochs_done: int) -> subprocess.Popen:
        proc = subprocess.Popen(dvc, cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 600
        while not (last.exists() and checkpoint.read(last)["epoch"] + 1 >= epochs_done):
            assert proc.poll() is None and time.monotonic() < deadline, "dvc repro ended or stalled before the kill"
            time.sleep(0.5)
        return proc

    # 1. out of memory: only the training process dies; DVC reports the failure and exits
    proc = run_until_epoch(1)
    # the python process itself, not a shell wrapping it (killing only the shell would orphan the trainer)
    trainer = next(
        p for p in psutil.Process(proc.pid).children(recursive=True)
        if p.name().startswith("python") and "stages/train.py" in " ".join(p.cmdline())
    )  # fmt: skip
    trainer.kill()
    assert proc.wait() != 0
    # 2. reboot / kill -9 of everything: the rerun is killed with its whole process group
    proc = run_until_epoch(2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    unlocked = subprocess.run(
        [sys.executable, "-m", "stagetrain.tools.unlock"], cwd=repo, env=env, capture_output=True, text=True, check=False
    )
    assert unlocked.returncode == 0, unlocked.stderr
    done = subprocess.run(dvc, cwd=repo, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    metrics = json.loads((repo / "metrics/stage2.json").read_text())
    assert metrics["resumed_from_epoch"] >= 2 and metrics["epochs_run"] == 4
