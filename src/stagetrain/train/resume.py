"""Crash-safe training: in-progress state outside the DVC outputs, keyed by a fingerprint.

DVC deletes a stage's outputs before running it, so a stage's in-progress run lives in
``.stagetrain/runs/<stage>/`` (git-ignored) next to a ``fingerprint.json``. The fingerprint covers
everything that decides the result: the effective train arguments, the upstream (and teacher) checkpoint's bytes,
the data (the folder of the stage's data.yaml: a trainset's list and manifest, whose SHA-256 covers every
listed image and label and the val split; or an organized dataset's file names and sizes, labels and
data.yaml) and the training code.
The next run resumes the saved ``last.pt`` only when the fingerprint matches, so work done under
other params or inputs is never resumed; it is thrown away.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stagetrain import ultra
from stagetrain.errors import UserError

# Every file of the package that stages/train.py loads (tests/test_deps.py checks it), relative to PACKAGE_DIR.
CODE_FILES = (
    "__init__.py",
    "errors.py",
    "progress.py",
    "ultra.py",
    "config/__init__.py",
    "config/calibration.py",
    "config/checks.py",
    "config/datasets.py",
    "config/graph.py",
    "config/load.py",
    "config/schema.py",
    "config/select.py",
    "config/stages.py",
    "config/ultralytics_args.py",
    "data/__init__.py",
    "data/organized.py",
    "data/trainset.py",
    "train/__init__.py",
    "train/runner.py",
    "train/resume.py",
    "train/freeze.py",
    "train/checkpoint.py",
    "train/distill.py",
)
PACKAGE_DIR = Path(__file__).resolve().parents[1]


def _sha256_file(path: Path, digest: Any = None) -> Any:
    digest = digest or hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest


def dataset_digest(data_yaml: Path) -> str:
    """Names and sizes of every file beside ``data_yaml``, full contents of labels, lists, yaml and json (caches excluded).

    For a trainset folder (data.yaml, train.txt, manifest.json) that is every byte of it, and the manifest's
    SHA-256 covers the listed images and labels and the val split; for an organized dataset, its whole tree.
    """
    root = data_yaml.parent
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix != ".cache"):
        rel = path.relative_to(root).as_posix()
        digest.update(f"{rel}\0{path.stat().st_size}\0".encode())
        if path.suffix in (".txt", ".yaml", ".json"):
            _sha256_file(path, digest)
    return digest.hexdigest()


def fingerprint(train_args: dict[str, Any], upstream: Path, data_yaml: Path, teacher: Path | None = None, distill: Any = None) -> str:
    """Hash of everything a stage's result depends on (see the module docstring)."""
    parts = {
        "args": train_args,
        "upstream": _sha256_file(upstream).hexdigest(),
        "teacher": _sha256_file(teacher).hexdigest() if teacher else None,
        "distill": distill,
        "data": dataset_digest(data_yaml),
        "code": {name: _sha256_file(PACKAGE_DIR / name).hexdigest() for name in CODE_FILES},
        "ultralytics": ultra.installed_version(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class RunState:
    """Where a stage's in-progress run lives and whether it can be resumed."""

    work_dir: Path
    fingerprint: str

    @property
    def run_dir(self) -> Path:
        return self.work_dir / "run"

    @property
    def last(self) -> Path:
        return self.run_dir / "weights" / "last.pt"

    @property
    def live_dir(self) -> Path:
        return self.work_dir / "live"

    def resumable_epoch(self, epochs: int) -> int | None:
        """Epochs completed by a matching interrupted run, or None when it must start afresh."""
        marker = self.work_dir / "fingerprint.json"
        if not (marker.exists() and self.last.exists()):
            return None
        if json.loads(marker.read_text()).get("fingerprint") != self.fingerprint:
            return None
        from stagetrain.train.checkpoint import read

        try:
            ckpt = read(self.last)
        except Exception:  # noqa: BLE001  (a torn file cannot happen with atomic saves, but never trust it blindly)
            return None
        completed, resumable = ultra.checkpoint_progress(ckpt)
        if not resumable or not 0 < completed < epochs:
            return None  # stripped (finished) or not started: nothing to resume
        return completed

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the stage's run folder for this process; a second trainer of the same stage is refused.

        A `dvc repro` killed without its training process (the trainer is orphaned and goes on) must
        not let the next `dvc repro` train into the same folder beside it. ``flock`` is released by
        the kernel when the holder dies, so a crash never leaves a stale lock behind.
        """
        self.work_dir.parent.mkdir(parents=True, exist_ok=True)
        lock = self.work_dir.parent / f".{self.work_dir.name}.lock"
        with open(lock, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise UserError(
                    f"{self.work_dir}: {holder} is still training this stage (an orphan of a killed run?); "
                    "wait for it to finish or kill it, then rerun"
                ) from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}\n")
            handle.flush()
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def start_fresh(self) -> None:
        if self.work_dir.exists():
            shutil.rmtree(self.work_dir)
        self.work_dir.mkdir(parents=True)
        (self.work_dir / "fingerprint.json").write_text(json.dumps({"fingerprint": self.fingerprint}) + "\n")


# Ultralytics' DetectionTrainer with atomic checkpoint writes (defined in ultra.py, beside the other overrides).
AtomicCheckpointTrainer = ultra.AtomicCheckpointTrainer
