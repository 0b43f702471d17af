"""A parameter sweep with DVC's own syntax: `dvc exp run --queue -S 'key=v1,v2'` queues one experiment per value.

The README's "Sweeps" section names the commands; this runs them on the shrunk pipeline with a
parameter that reruns only `evaluate` (the README sweeps `stages.stage3.lr0`: the same syntax, more stages).
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import pytest

from stagetrain.tools import repo as repro

pytestmark = pytest.mark.slow
SWEPT = "evaluate.margin"
VALUES = (0.005, 0.02)  # the default is 0.01: both differ from the baseline commit
TIMEOUT_S = 900  # two evaluate-only experiments, one after the other, on a loaded 2-core machine


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A shrunk copy, reproduced once and committed with its dvc.lock: the sweep's baseline."""
    root = repro.shrunk_copy(tmp_path_factory.mktemp("sweep"))
    repro.dvc(root, "repro")
    subprocess.run(["git", "add", "dvc.lock"], cwd=root, check=True)
    subprocess.run([*repro.GIT, "commit", "-qm", "baseline"], cwd=root, check=True)
    yield root
    repro.dvc(root, "queue", "stop", check=False)  # never leave a worker behind


def queue_finished(root) -> str:
    """Poll `dvc queue status` until nothing is queued or running; returns the last status."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        status = repro.dvc(root, "queue", "status").stdout
        rows = [line.split() for line in status.splitlines()[1:] if line.strip()]
        if rows and not any(state in row for row in rows for state in ("Queued", "Running")):
            return status
        time.sleep(5)
    raise AssertionError(f"the sweep did not finish in {TIMEOUT_S} s:\n{status}")


def experiments(shown: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{name: data}`` of every experiment in `dvc exp show --json` (baseline commits and the workspace left out)."""
    found = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            for rev in exp.get("revs") or []:
                found[rev.get("name") or rev["rev"]] = rev.get("data") or {}
    return found


def scores_of(metrics: dict[str, Any], model: str) -> dict[str, float] | None:
    """``model``'s test scores among an experiment's metrics files (``metrics/test/<model>.json`` or eval.json's entry)."""
    for path, entry in metrics.items():
        data = (entry or {}).get("data") or {}
        for scores in (data, data.get(model)):
            if isinstance(scores, dict) and {"mAP50", "mAP50-95"} <= set(scores) and (scores is not data or model in path):
                return scores
    return None


def test_a_two_value_sweep_queues_two_experiments_that_run_with_their_values(repo):
    queued = repro.dvc(repo, "exp", "run", "--queue", "-S", f"{SWEPT}={','.join(map(str, VALUES))}").stdout
    assert queued.count("Queued experiment") == len(VALUES), queued
    repro.dvc(repo, "queue", "start", "-j", "1")
    status = queue_finished(repo)
    assert status.count("Success") == len(VALUES) and "Failed" not in status, status

    shown = experiments(json.loads(repro.dvc(repo, "exp", "show", "--json").stdout))
    assert len(shown) == len(VALUES), shown.keys()
    swept = {}
    for name, data in shown.items():
        params = data["params"]["params.yaml"]["data"]
        swept[params["evaluate"]["margin"]] = name
        assert scores_of(data["metrics"], "stage3") is not None, (name, data["metrics"])
        log = repro.dvc(repo, "queue", "logs", name).stdout  # only evaluate reran; its progress is one line per model
        assert "Running stage 'evaluate'" in log and "Running stage 'train@" not in log, log
        assert "evaluate: stage3 on target/test:" in log, log
    assert sorted(swept) == sorted(VALUES)

    compared = repro.dvc(repo, "exp", "show", "--only-changed", "--csv").stdout  # the README's comparison
    header = compared.splitlines()[0].split(",")
    assert SWEPT in header and "stages.stage3.lr0" not in header, header
