"""trainset@<stage>: the list of images a training stage trains on, as a data.yaml + train.txt, no image copied.

Ultralytics trains from ``train: train.txt`` (one image path per line; a line starting with ``./`` is
resolved against the list's folder, and each image's label is Ultralytics' ``/images/`` -> ``/labels/``
swap of its path). The list is built in steps, each adding entries tagged with the dataset and the
reason they come from:

1. ``own``: the whole train split of the stage's ``dataset``;
2. ``replay``: for each ``replay: {<dataset>: <fraction>}`` entry, a seeded fraction of that dataset's
   train split (against forgetting what an earlier stage learnt on it);
3. ``oversample``: with ``oversample: {<class>: <factor>}``, every listed image holding that class (the
   largest factor where it holds several) appears ``factor`` times in all: ``floor(factor)`` times each,
   and a seeded ``factor - floor(factor)`` of them once more (the count rounded half up), so 2.5 over 10
   images lists them 25 times. Ultralytics keeps repeated lines (it sorts the list, never dedupes it):
   a repeated image is drawn that many times an epoch, each time with its own augmentation;
4. ``mined``: with ``hard_negatives:``, each image mine@<stage> found false positives in
   (``data/mined/<stage>/mined.json``, see :mod:`stagetrain.mine`), ``copies`` times, with its own
   labels (a background-only image, as a pool of negatives holds, has none).

Later steps that add images the same way (imported annotations, ...) append entries with their own
reason; :func:`write` needs no change for them.

Outputs (``data/trainsets/<stage>``), every path relative so that a copy of the repo trains the same:

- ``data.yaml``: the canonical class names, ``train: train.txt``, ``val:`` the stage dataset's val split;
- ``train.txt``: ``./../../organized/<dataset>/images/train/<file>`` lines, sorted;
- ``manifest.json``: counts per dataset (images, boxes per class, background images), the replay
  selection (fraction, of how many, how many), oversampling's images and boxes per class before and
  after, the mined images (false positives, copies) and a SHA-256 of every listed image and label file and
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
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from stagetrain import ultra
from stagetrain.config import Config
from stagetrain.data.organized import split_images
from stagetrain.errors import UserError

DATA_YAML, LIST, MANIFEST = "data.yaml", "train.txt", "manifest.json"
OWN, REPLAY, OVERSAMPLE, MINED = "own", "replay", "oversample", "mined"  # why an entry is in the list
MINED_FILE = "mined.json"  # mine@<stage>'s output, read from data/mined/<stage>


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


def oversample_counts(factor: float, images: int) -> tuple[int, int]:
    """``(whole, extra)``: each of ``images`` images is listed ``whole`` times, ``extra`` of them once more.

    ``factor`` is taken as written (2.2 is exactly 11/5); the fractional part's count rounds half up, so
    ``images * factor`` entries in all, to the nearest integer.
    """
    exact = Fraction(str(factor))
    whole = math.floor(exact)
    return whole, math.floor((exact - whole) * images + Fraction(1, 2))


def label_classes(image: Path) -> list[int]:
    """Class ids of an image's label rows (none for a missing label file: a background image)."""
    label = Path(ultra.img2label_paths([str(image)])[0])
    rows = label.read_text().splitlines() if label.is_file() else []
    try:
        return [int(row.split()[0]) for row in rows if row.strip()]
    except ValueError:
        raise UserError(f"{label}: a label row does not start with a class id; rerun organize") from None


def oversample(entries: list[Entry], factors: dict[str, float], classes: tuple[str, ...], seed: int, stage: str) -> list[Entry]:
    """The extra entries that make each image holding a class of ``factors`` appear its (largest) factor times."""
    by_factor: dict[float, list[Entry]] = {}
    for entry in entries:
        held = {classes[i] for i in label_classes(entry.image) if 0 <= i < len(classes)}
        factor = max((factors[name] for name in held if name in factors), default=1.0)
        if factor > 1:
            by_factor.setdefault(factor, []).append(entry)
    extra: list[Entry] = []
    for factor, group in sorted(by_factor.items()):
        whole, more = oversample_counts(factor, len(group))
        ranked = sorted(group, key=lambda e: _rank_key(seed, stage, f"{OVERSAMPLE}\0{e.dataset}", e.image.name))
        extra += [Entry(e.image, e.dataset, OVERSAMPLE) for e in group for _ in range(whole - 1)]
        extra += [Entry(e.image, e.dataset, OVERSAMPLE) for e in ranked[:more]]
    return extra


def read_mined(cfg: Config, stage_name: str, mined_dir: Path | None) -> dict[str, Any] | None:
    """mine@<stage>'s ``mined.json`` for a stage with ``hard_negatives:`` (None without), checked against params."""
    stage = cfg.stages[stage_name]
    if stage.hard_negatives is None:
        return None
    path = (mined_dir or Path("data/mined") / stage_name) / MINED_FILE
    if mined_dir is None or not path.is_file():
        raise UserError(
            f"{path}: not found, but `stages.{stage_name}.hard_negatives` is set; run mine@{stage_name} first "
            f"(`dvc repro` runs it) and pass its folder as --mined"
        )
    mined = json.loads(path.read_text())
    wanted = {"stage": stage_name, "model": stage.upstream, "dataset": stage.dataset, "settings": asdict(stage.hard_negatives)}
    found = {key: mined.get(key) for key in wanted}
    if found != wanted:
        raise UserError(f"{path}: written for {found}, but {cfg.source} now says {wanted}; rerun mine@{stage_name} (`dvc repro` does)")
    return mined


def mined_entries(mined: dict[str, Any], organized: Path, copies: int) -> list[Entry]:
    """Each selected image of ``mined.json``, ``copies`` times; an image no longer in its train split is an error."""
    entries = []
    for item in mined["selected"]:
        image = organized / item["dataset"] / "images" / "train" / item["image"]
        if not image.is_file():
            raise UserError(f"{image}: mined by mine@{mined['stage']} but not in the organized train split; rerun mine@{mined['stage']}")
        entries += [Entry(image, item["dataset"], MINED)] * copies
    return entries


def build(cfg: Config, stage_name: str, organized: Path, mined: dict[str, Any] | None = None) -> list[Entry]:
    """The stage's training list, step by step (see the module docstring); ``mined`` is :func:`read_mined`'s."""
    stage = cfg.stages[stage_name]
    own = split_images(organized_yaml(organized, stage.dataset, cfg), "train")
    entries = [Entry(image, stage.dataset, OWN) for image in own]
    for dataset, fraction in stage.replay.items():
        images = split_images(organized_yaml(organized, dataset, cfg), "train")
        entries += [Entry(image, dataset, REPLAY) for image in select(images, fraction, cfg.seed, stage_name, dataset)]
    if stage.oversample:
        entries += oversample(entries, dict(stage.oversample), cfg.classes, cfg.seed, stage_name)
    if mined is not None and stage.hard_negatives is not None:
        entries += mined_entries(mined, organized, stage.hard_negatives.copies)
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


def _totals(entries: list[Entry], classes: list[list[int]], names: tuple[str, ...], reasons: tuple[str, ...]) -> dict[str, Any]:
    """Images (list entries) and boxes per class over the entries of ``reasons``."""
    boxes: Counter = Counter()
    images = 0
    for entry, ids in zip(entries, classes, strict=True):
        if entry.reason in reasons:
            images += 1
            boxes.update(names[i] for i in ids if 0 <= i < len(names))  # an id out of range: _counts names the file
    return {"images": images, "boxes": {name: boxes[name] for name in names}}


def _data_loop(cfg: Config, stage_name: str, entries: list[Entry], classes: list[list[int]], mined: dict[str, Any] | None) -> dict:
    """The manifest's ``oversample`` and ``mined`` sections (None where the stage has no such key)."""
    stage, names = cfg.stages[stage_name], cfg.classes
    out: dict[str, Any] = {"oversample": None, "mined": None}
    if stage.oversample:
        holding = {
            name: sum(e.reason in (OWN, REPLAY) and names.index(name) in ids for e, ids in zip(entries, classes, strict=True))
            for name in stage.oversample
        }
        out["oversample"] = {
            "factors": dict(stage.oversample),
            "images_holding": holding,  # before oversampling, per oversampled class
            "added": sum(e.reason == OVERSAMPLE for e in entries),
            "before": _totals(entries, classes, names, (OWN, REPLAY)),
            "after": _totals(entries, classes, names, (OWN, REPLAY, OVERSAMPLE)),
        }
    if stage.hard_negatives is not None and mined is not None:
        out["mined"] = {
            "settings": asdict(stage.hard_negatives),
            "model": mined["model"],
            "scanned_images": mined["scanned_images"],
            "false_positives_found": mined["false_positives"],
            "selected_images": len(mined["selected"]),
            "false_positives_in_images": sum(item["false_positives"] for item in mined["selected"]),
            "added": sum(e.reason == MINED for e in entries),
            "boxes": _totals(entries, classes, names, (MINED,))["boxes"],  # in the added entries
        }
    return out


def write(
    cfg: Config, stage_name: str, entries: list[Entry], organized: Path, out_dir: Path, mined: dict[str, Any] | None = None
) -> dict[str, Any]:
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
        "oversampled_images": sum(e.reason == OVERSAMPLE for e in entries),
        "mined_images": sum(e.reason == MINED for e in entries),
        **_data_loop(cfg, stage_name, entries, classes, mined),
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


def run(cfg: Config, stage_name: str, organized: Path, out_dir: Path, mined_dir: Path | None = None) -> dict[str, Any]:
    """Build and write ``stage_name``'s training list from the organized datasets under ``organized``.

    ``mined_dir``: mine@<stage>'s output folder, read only when the stage has ``hard_negatives:``.
    """
    mined = read_mined(cfg, stage_name, mined_dir)
    return write(cfg, stage_name, build(cfg, stage_name, organized, mined), organized, out_dir, mined)


def summary(cfg: Config, stage_name: str, data_yaml: Path) -> dict[str, Any]:
    """The data a stage trains on, for metrics/<stage>.json: ``train_images``, ``replayed_images`` (per dataset),
    ``oversampled_images`` and ``mined_images`` (list entries each step added).

    A trainset's manifest must match the stage's params (else trainset@<stage> did not run since they changed);
    an organized data.yaml (no manifest beside it) serves a stage without replay, oversampling or mining only.
    """
    stage = cfg.stages[stage_name]
    manifest_path = data_yaml.parent / MANIFEST
    if not manifest_path.is_file():
        steps = [
            key for key, on in (("replay", stage.replay), ("oversample", stage.oversample), ("hard_negatives", stage.hard_negatives)) if on
        ]
        if steps:
            raise UserError(
                f"{data_yaml}: `stages.{stage_name}` sets {', '.join(steps)}, but this data.yaml has no {MANIFEST} "
                f"beside it; train on data/trainsets/{stage_name}/{DATA_YAML}, written by trainset@{stage_name}"
            )
        return {"train_images": len(split_images(data_yaml, "train")), "replayed_images": {}, "oversampled_images": 0, "mined_images": 0}
    manifest = json.loads(manifest_path.read_text())
    wanted = {
        "stage": stage_name,
        "dataset": stage.dataset,
        "seed": cfg.seed,
        "replay": dict(stage.replay),
        "oversample": dict(stage.oversample),
        "hard_negatives": asdict(stage.hard_negatives) if stage.hard_negatives else None,
    }
    found = {
        **{k: manifest.get(k) for k in ("stage", "dataset", "seed")},
        "replay": {d: r["fraction"] for d, r in manifest.get("replay", {}).items()},
        "oversample": (manifest.get("oversample") or {}).get("factors", {}),
        "hard_negatives": (manifest.get("mined") or {}).get("settings"),
    }
    if found != wanted:
        raise UserError(
            f"{manifest_path}: written for {found}, but {cfg.source} now says {wanted}; "
            f"rerun trainset@{stage_name} (`dvc repro` does) before training the stage"
        )
    return {key: manifest[key] for key in ("train_images", "replayed_images", "oversampled_images", "mined_images")}
