"""trainset@<stage>: the list of images a training stage trains on, as a data.yaml + train.txt, no image copied.

Ultralytics trains from ``train: train.txt`` (one image path per line; a line starting with ``./`` is
resolved against the list's folder, and each image's label is Ultralytics' ``/images/`` -> ``/labels/``
swap of its path). The list is built in steps, each adding entries tagged with the dataset and the
reason they come from:

1. ``own``: the whole train split of the stage's ``dataset``;
2. ``replay``: for each ``replay: {<dataset>: <fraction>}`` entry, a seeded fraction of that dataset's
   train split (against forgetting what an earlier stage learnt on it).

Later steps that add images the same way (critical-class oversampling, imported annotations, mined
hard negatives) append entries with their own reason; :func:`write` needs no change for them.

Outputs (``data/trainsets/<stage>``), every path relative so that a copy of the repo trains the same:

- ``data.yaml``: the canonical class names, ``train: train.txt``, ``val:`` the stage dataset's val split;
- ``train.txt``: ``./../../organized/<dataset>/images/train/<file>`` lines, sorted;
- ``manifest.json``: counts per dataset (images, boxes per class, background images), the replay
  selection (fraction, of how many, how many) and a SHA-256 of every listed image and label file and
  of the val split: ``train@<stage>`` depends on this folder, so it reruns exactly when what it reads
  changes, and its resume fingerprint hashes it.

The selection is deterministic: an image is picked by the rank of ``sha256(seed, stage, dataset, its
name)``, so the same params give the same list byte for byte, another seed another one, and a new image
in the replayed dataset changes the pick by at most that image.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from stagetrain import ultra
from stagetrain.config import Config
from stagetrain.data.organized import split_images
from stagetrain.errors import UserError

DATA_YAML, LIST, MANIFEST = "data.yaml", "train.txt", "manifest.json"
OWN, REPLAY = "own", "replay"  # why an entry is in the list (issue 13's steps add their own reasons)


@dataclass(frozen=True)
class Entry:
    """One line of the training list."""

    image: Path  # the image file inside data/organized/<dataset>/images/train
    dataset: str  # the dataset it belongs to
    reason: str  # OWN, REPLAY, ...


def replay_count(fraction: float, images: int) -> int:
    """Images a ``fraction`` of a split of ``images`` replays: the nearest integer, halves up, and at least one.

    The fraction is taken as written in params (``0.2`` is exactly 1/5), so 0.2 of 300 is 60, not 60.000...01
    rounded; any fraction > 0 of a non-empty split replays at least one image.
    """
    if images <= 0:
        return 0
    return max(1, min(images, math.floor(Fraction(str(fraction)) * images + Fraction(1, 2))))


def _rank_key(seed: int, stage: str, dataset: str, name: str) -> bytes:
    return hashlib.sha256(f"{seed}\0{stage}\0{dataset}\0{name}".encode()).digest()


def select(images: list[Path], fraction: float, seed: int, stage: str, dataset: str) -> list[Path]:
    """The replayed subset of ``images`` (a train split), in file-name order; seeded by (seed, stage, dataset)."""
    ranked = sorted(images, key=lambda p: _rank_key(seed, stage, dataset, p.name))
    return sorted(ranked[: replay_count(fraction, len(images))])


def organized_yaml(organized: Path, dataset: str, cfg: Config) -> Path:
    """``<organized>/<dataset>/data.yaml``, checked to carry the canonical classes (else organize is stale)."""
    data_yaml = organized / dataset / DATA_YAML
    if not data_yaml.is_file():
        raise UserError(f"{data_yaml}: not found; run organize@{dataset} first (`dvc repro` runs it before trainset@<stage>)")
    names = yaml.safe_load(data_yaml.read_text()).get("names")
    names = list(names.values()) if isinstance(names, dict) else names
    if names != list(cfg.classes):
        raise UserError(f"{data_yaml}: class names {names} are not `classes` of {cfg.source} {list(cfg.classes)}; rerun organize@{dataset}")
    return data_yaml


def build(cfg: Config, stage_name: str, organized: Path) -> list[Entry]:
    """The stage's training list, step by step (see the module docstring)."""
    stage = cfg.stages[stage_name]
    own = split_images(organized_yaml(organized, stage.dataset, cfg), "train")
    entries = [Entry(image, stage.dataset, OWN) for image in own]
    for dataset, fraction in stage.replay.items():
        images = split_images(organized_yaml(organized, dataset, cfg), "train")
        entries += [Entry(image, dataset, REPLAY) for image in select(images, fraction, cfg.seed, stage_name, dataset)]
    return entries


def _line(image: Path, out_dir: Path) -> str:
    """``./<path from the list's folder>``: Ultralytics resolves a ``./`` line against the list's folder.

    ``abspath``, not ``resolve``: a DVC output checked out as links must not turn into a path into the cache.
    """
    return "./" + Path(os.path.relpath(os.path.abspath(image), os.path.abspath(out_dir))).as_posix()


def _digest_files(images: list[Path], out_dir: Path) -> tuple[str, list[list[int]]]:
    """SHA-256 over every image and its label (path as listed, and bytes), and each label's rows as class ids."""
    digest, classes = hashlib.sha256(), []
    for image, label in zip(images, ultra.img2label_paths([str(p) for p in images]), strict=True):
        label_path = Path(label)
        text = label_path.read_bytes() if label_path.is_file() else None  # no label file = a background image
        with open(image, "rb") as f:
            image_digest = hashlib.file_digest(f, "sha256").hexdigest()
        label_digest = hashlib.sha256(text).hexdigest() if text is not None else "-"
        digest.update(f"{_line(image, out_dir)}\0{image_digest}\0{label_digest}\n".encode())
        rows = [line.split()[0] for line in (text or b"").decode().splitlines() if line.strip()]
        try:
            classes.append([int(row) for row in rows])
        except ValueError:
            raise UserError(f"{label_path}: a label row does not start with a class id; rerun organize") from None
    return digest.hexdigest(), classes


def _counts(entries: list[Entry], classes: list[list[int]], names: tuple[str, ...], order: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Per dataset (``order`` first): images, boxes per class and images without boxes."""
    out: dict[str, dict[str, Any]] = {dataset: {"images": 0, "boxes": Counter(), "background_images": 0} for dataset in order}
    for entry, ids in zip(entries, classes, strict=True):
        counts = out.setdefault(entry.dataset, {"images": 0, "boxes": Counter(), "background_images": 0})
        counts["images"] += 1
        counts["background_images"] += not ids
        for class_id in ids:
            if not 0 <= class_id < len(names):
                raise UserError(f"{entry.image}: class id {class_id} is not one of the {len(names)} classes; rerun organize")
            counts["boxes"][names[class_id]] += 1
    for counts in out.values():
        counts["boxes"] = {name: counts["boxes"][name] for name in names}
    return out


def write(cfg: Config, stage_name: str, entries: list[Entry], organized: Path, out_dir: Path) -> dict[str, Any]:
    """Write data.yaml, train.txt and manifest.json to ``out_dir``; return the manifest."""
    stage = cfg.stages[stage_name]
    own_yaml = organized_yaml(organized, stage.dataset, cfg)
    val_images = split_images(own_yaml, "val")
    entries = sorted(entries, key=lambda e: _line(e.image, out_dir))
    train_sha, classes = _digest_files([e.image for e in entries], out_dir)
    val_sha, _ = _digest_files(val_images, out_dir)
    replay = {
        dataset: {
            "fraction": fraction,
            "of": len(split_images(organized_yaml(organized, dataset, cfg), "train")),
            "images": sum(e.dataset == dataset and e.reason == REPLAY for e in entries),
        }
        for dataset, fraction in stage.replay.items()
    }
    manifest = {
        "stage": stage_name,
        "dataset": stage.dataset,
        "seed": cfg.seed,
        "train_images": len(entries),
        "replayed_images": {dataset: counts["images"] for dataset, counts in replay.items()},
        "replay": replay,
        "datasets": _counts(entries, classes, cfg.classes, order=(stage.dataset, *stage.replay)),
        "val": {"dataset": stage.dataset, "images": len(val_images)},
        "sha256": {"train": train_sha, "val": val_sha},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {"train": LIST, "val": _line(val_images[0].parent, out_dir)[2:], "names": dict(enumerate(cfg.classes))}
    (out_dir / DATA_YAML).write_text(yaml.safe_dump(data, sort_keys=False))
    (out_dir / LIST).write_text("".join(_line(e.image, out_dir) + "\n" for e in entries))
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def run(cfg: Config, stage_name: str, organized: Path, out_dir: Path) -> dict[str, Any]:
    """Build and write ``stage_name``'s training list from the organized datasets under ``organized``."""
    return write(cfg, stage_name, build(cfg, stage_name, organized), organized, out_dir)


def summary(cfg: Config, stage_name: str, data_yaml: Path) -> dict[str, Any]:
    """``train_images`` and ``replayed_images`` (per dataset) of the data a stage trains on, for metrics/<stage>.json.

    A trainset's manifest must match the stage's params (else trainset@<stage> did not run since they changed);
    an organized data.yaml (no manifest beside it) serves a stage without replay only.
    """
    stage = cfg.stages[stage_name]
    manifest_path = data_yaml.parent / MANIFEST
    if not manifest_path.is_file():
        if stage.replay:
            raise UserError(
                f"{data_yaml}: `stages.{stage_name}` replays {', '.join(stage.replay)}, but this data.yaml has no {MANIFEST} "
                f"beside it; train on data/trainsets/{stage_name}/{DATA_YAML}, written by trainset@{stage_name}"
            )
        return {"train_images": len(split_images(data_yaml, "train")), "replayed_images": {}}
    manifest = json.loads(manifest_path.read_text())
    wanted = {"stage": stage_name, "dataset": stage.dataset, "seed": cfg.seed, "replay": dict(stage.replay)}
    found = {**{k: manifest.get(k) for k in wanted}, "replay": {d: r["fraction"] for d, r in manifest.get("replay", {}).items()}}
    if found != wanted:
        raise UserError(
            f"{manifest_path}: written for {found}, but {cfg.source} now says {wanted}; "
            f"rerun trainset@{stage_name} (`dvc repro` does) before training the stage"
        )
    return {"train_images": manifest["train_images"], "replayed_images": manifest["replayed_images"]}
