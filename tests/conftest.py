"""Shared fixtures: the repo's own params, shrunk for tests (tiny images, 1 epoch, CPU)."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def repo_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def shrink(params: dict, images: int = 40, size: int = 96, imgsz: int = 64, epochs: int = 1) -> dict:
    """The repo's params made test-sized: same keys and DAG, tiny data and one epoch per stage."""
    params = copy.deepcopy(params)
    for dataset in params["datasets"].values():
        dataset["synthetic"].update(images=images, size=size)
    params["model"]["imgsz"] = imgsz
    params["train"].update(batch=8, device="cpu")
    for stage in params["stages"].values():
        stage["epochs"] = epochs
    params["export"]["formats"] = ["onnx", "engine"]
    return params


@pytest.fixture
def params() -> dict:
    """A fresh, shrunk copy of the repo's params.yaml (mutate freely)."""
    return shrink(repo_params())


def copy_repo(target: Path) -> Path:
    """Copy the repo's tracked and untracked-but-not-ignored files to ``target`` as a fresh git repo."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO, check=True, capture_output=True
    ).stdout.decode().split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            (target / name).write_bytes(src.read_bytes())
    git = ["git", "-c", "user.email=test@example.com", "-c", "user.name=test"]
    subprocess.run(["git", "init", "-q"], cwd=target, check=True)
    subprocess.run([*git, "add", "-A"], cwd=target, check=True)
    subprocess.run([*git, "commit", "-qm", "copy"], cwd=target, check=True)
    return target
