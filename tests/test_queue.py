"""Queued experiments: two `-S` values through `dvc exp run --queue` + `dvc queue start -j 2`.

Each queued run gets a temp copy of the repo without git-ignored files: it only works when
everything a stage needs is DVC-tracked or generated.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from stagetrain.tools import repo as repro

pytestmark = pytest.mark.slow
EXPERIMENTS = {"lr-low": "stages.stage3.lr0=0.0001", "lr-high": "stages.stage3.lr0=0.003"}
TIMEOUT_S = 1800  # two experiments of three stages each, side by side on a 2-core machine under load


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A shrunk copy, reproduced once and committed with its dvc.lock: the experiments' baseline."""
    root = repro.shrunk_copy(tmp_path_factory.mktemp("queue"))
    repro.dvc(root, "repro")
    subprocess.run(["git", "add", "dvc.lock"], cwd=root, check=True)
    subprocess.run([*repro.GIT, "commit", "-qm", "baseline"], cwd=root, check=True)
    yield root
    repro.dvc(root, "queue", "stop", check=False)  # idle workers exit by themselves; never leave one behind


def wait_for_queue(root, names) -> str:
    """Poll `dvc queue status` until every named experiment has finished (or failed)."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        status = repro.dvc(root, "queue", "status").stdout
        rows = [line for line in status.splitlines() if any(name in line.split() for name in names)]
        if len(rows) == len(names) and all(("Success" in row or "Failed" in row) for row in rows):
            return status
        time.sleep(10)
    raise AssertionError(f"queue did not finish in {TIMEOUT_S} s:\n{status}")


def test_two_queued_experiments_run_side_by_side_and_compare(repo):
    for name, setting in EXPERIMENTS.items():
        repro.dvc(repo, "exp", "run", "--queue", "-n", name, "-S", setting)
    started = repro.dvc(repo, "queue", "start", "-j", "2").stdout
    assert "Started '2' new experiments task queue workers" in started

    status = wait_for_queue(repo, list(EXPERIMENTS))
    assert "Failed" not in status, status + "\n".join(repro.dvc(repo, "queue", "logs", n, check=False).stdout for n in EXPERIMENTS)
    for name in EXPERIMENTS:  # only what the changed param feeds reran; the rest came from the cache
        log = repro.dvc(repo, "queue", "logs", name).stdout
        assert "Running stage 'train@stage3'" in log and "Running stage 'train@stage1'" not in log, log

    assert set(repro.dvc(repo, "exp", "list", "--name-only").stdout.split()) == set(EXPERIMENTS)
    shown = repro.dvc(repo, "exp", "show", "--json").stdout
    assert all(name in shown for name in EXPERIMENTS) and "metrics/stage3.json" in shown
    params = json.loads(repro.dvc(repo, "params", "diff", "lr-low", "lr-high", "--json").stdout)
    lr0 = params["params.yaml"]["stages.stage3.lr0"]
    assert (lr0["old"], lr0["new"]) == (0.0001, 0.003)
    metrics = json.loads(repro.dvc(repo, "metrics", "diff", "lr-low", "lr-high", "--all", "--json").stdout)
    assert {"mAP50", "mAP50-95", "precision", "recall"} <= set(metrics["metrics/stage3.json"])
    stage1 = metrics["metrics/stage1.json"]["mAP50"]
    assert stage1["old"] == stage1["new"]  # upstream of the change: the same checkpoint in both
