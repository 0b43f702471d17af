"""Fresh copies of a checkout, test-sized params and a ``dvc`` runner: for ``make repro-check`` and the tests.

A copy holds what a clone followed by ``dvc pull`` would: git's tracked and untracked-but-not-ignored
files plus the data that ``.dvc`` files track (``dvc add``), and none of the checkout's run state.
``dvc.lock`` stays behind even when it is committed: it records the outputs of an earlier run (of
other params, often), and those outputs stay behind too (git-ignored, cache not copied), so in a
copy it would only be stale entries for stages the copy never ran. Without it, ``dvc repro`` in the
copy runs every stage it reaches from scratch, and the lock it writes names exactly those stages.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from stagetrain.config.schema import SYNTHETIC_SPLITS

REPO = Path(__file__).resolve().parents[3]
GIT = ["git", "-c", "user.email=repro@stagetrain", "-c", "user.name=repro-check"]
RUN_STATE = frozenset({"dvc.lock"})  # file names a copy never gets: the record of a run whose outputs stay behind
SHRUNK_BATCH = 8


def repo_params(root: Path = REPO) -> dict:
    return yaml.safe_load((root / "params.yaml").read_text())


def shrink(params: dict, images: int = 40, size: int = 96, imgsz: int = 64, epochs: int = 1, flat: bool = False) -> dict:
    """The repo's params made test-sized: same keys and DAG, tiny data and one epoch per stage.

    Only synthetic datasets get smaller (``images`` images, or that many split 70/15/15 plus ``images // 10``
    pool images in the fixed-split form; ``flat`` turns that form into ``images: N``, split by organize, for
    tests of organize's own split): a ``roboflow`` or ``local`` one is kept as it is (see
    ``full_size_datasets``), and training on it is shrunk all the same.
    """
    params = copy.deepcopy(params)
    for dataset in params["datasets"].values():
        block = dataset.get("synthetic") if dataset.get("kind") == "synthetic" else None
        if isinstance(block, dict):
            block["size"] = size
            if flat or "images" in block or "train" not in block:
                for key in SYNTHETIC_SPLITS:
                    block.pop(key, None)
                block["images"] = images
            else:  # the fixed-split form: the same images in organize's default proportions, and a few pool images
                held = max(1, round(images * 0.15))
                block.update(train=max(1, images - 2 * held), val=held, test=held)
                if block.get("pool"):
                    block["pool"] = max(1, images // 10)
    if flat:  # the flat form has no unlabelled pool: an active-learning round (`select:`) would have nothing to rank
        params["select"] = {}  # (kept as a key: dvc.yaml iterates over it)
    params["model"]["imgsz"] = imgsz
    params.setdefault("train", {}).update(batch=SHRUNK_BATCH, device="cpu")
    for stage in params["stages"].values():
        stage["epochs"] = epochs
        for key in ("batch", "device"):  # a stage's own keys win over `train:`
            stage.pop(key, None)
    params["export"]["formats"] = ["onnx", "engine"]
    return params


def full_size_datasets(params: dict) -> dict[str, str]:
    """``{dataset: kind}`` for the datasets ``shrink`` keeps as they are (all but synthetic ones)."""
    return {name: str(spec.get("kind")) for name, spec in params["datasets"].items() if spec.get("kind") != "synthetic"}


def _git_files(source: Path) -> list[str]:
    cmd = ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"]
    listed = subprocess.run(cmd, cwd=source, check=True, capture_output=True).stdout.decode().split("\0")
    return [name for name in listed if name and Path(name).name not in RUN_STATE]


def _dvc_tracked(source: Path, names: list[str]) -> list[str]:
    """The paths that ``.dvc`` files among ``names`` track and ``source``'s workspace holds."""
    found = []
    for name in (n for n in names if n.endswith(".dvc") and (source / n).is_file()):
        try:
            spec = yaml.safe_load((source / name).read_text())
        except yaml.YAMLError:
            continue  # not ours to judge: DVC reports it in the copy
        outs = spec.get("outs") if isinstance(spec, dict) else None
        for out in (o for o in (outs if isinstance(outs, list) else []) if isinstance(o, dict) and o.get("path")):
            rel = os.path.normpath(Path(name).parent / str(out["path"]))
            if not rel.startswith("..") and not os.path.isabs(rel) and (source / rel).exists():  # inside the repo only
                found.append(rel)
    return found


def _link_or_copy(src: str | Path, dst: str | Path) -> None:
    """A hard link where the filesystem allows one (datasets can be large), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def copy_repo(target: Path, source: Path = REPO) -> Path:
    """Copy ``source`` to ``target`` as a fresh git repo of one commit, without its run state.

    Git's tracked and untracked-but-not-ignored files are copied, less ``dvc.lock`` (see the module
    docstring); the data ``.dvc`` files track is then linked in, git-ignored as in ``source``. Read
    it only: a hard link shares the file with ``source``.
    """
    names = _git_files(source)
    for name in names:
        if (source / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            (target / name).write_bytes((source / name).read_bytes())
    subprocess.run(["git", "init", "-q"], cwd=target, check=True)
    subprocess.run([*GIT, "add", "-A"], cwd=target, check=True)
    subprocess.run([*GIT, "commit", "-qm", "copy"], cwd=target, check=True)
    for rel in _dvc_tracked(source, names):
        if (target / rel).exists():
            continue
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        if (source / rel).is_dir():
            shutil.copytree(source / rel, target / rel, copy_function=_link_or_copy)
        else:
            _link_or_copy(source / rel, target / rel)
    return target


def _point_local_datasets_at(params: dict, target: Path, source: Path) -> None:
    """A ``local`` dataset at a relative path the copy lacks (git-ignored, not DVC-tracked): read ``source``'s."""
    for spec in params["datasets"].values():
        local = spec.get("local") if spec.get("kind") == "local" else None
        if not isinstance(local, dict) or not isinstance(local.get("path"), str):
            continue
        path = Path(local["path"]).expanduser()
        if not path.is_absolute() and not (target / path).exists() and (source / path).exists():
            local["path"] = str((source / path).resolve())


def shrunk_copy(target: Path, source: Path = REPO) -> Path:
    """``copy_repo`` plus shrunk params, committed: what the end-to-end tests and the check run."""
    copy_repo(target, source)
    params = shrink(repo_params(target))
    _point_local_datasets_at(params, target, source)
    (target / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run([*GIT, "commit", "-qam", "shrink"], cwd=target, check=True)
    return target


def dvc_env() -> dict[str, str]:
    """DVC runs stage commands with ``python`` from PATH: put this interpreter's bin dir first."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # each stage puts its own src/ on the path
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def dvc(repo: Path, *args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """``dvc <args>`` in ``repo`` with this interpreter; raises with DVC's output when it fails and ``check``."""
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env or dvc_env(), capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"`dvc {' '.join(args)}` failed in {repo} (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def upstream_stages(repo: Path, targets: list[str]) -> set[str]:
    """The stages ``dvc repro <targets>`` reaches in ``repo`` (every stage when ``targets`` is empty)."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with contextlib.chdir(repo), Repo(str(repo)) as dvc_repo:  # DVC resolves targets against the current directory
            if not targets:
                return {stage.addressing for stage in dvc_repo.index.stages}
            return {stage.addressing for target in targets for stage in dvc_repo.stage.collect(target, with_deps=True)}
    except DvcException as err:
        raise RuntimeError(f"DVC cannot read the pipeline in {repo}: {err}") from None
