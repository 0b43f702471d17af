"""Raw YOLO folder -> canonical organized dataset with a seeded split and a report.

Output layout (``data/organized/<dataset>``)::

    images/{train,val,test}/   labels/{train,val,test}/   data.yaml (no `path:`, canonical names)

Files are hard-linked from the raw folder (copied where links are impossible), never re-encoded.
Every label problem is found before anything is written; ``on_bad: error`` raises one error listing
them as ``file:line: reason``, ``on_bad: skip`` leaves the bad files out and lists them in the report.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from sklearn.model_selection import train_test_split

from stagetrain.config import SPLITS, Config, ConfigError, DatasetSpec

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
MAX_LISTED_PROBLEMS = 50


@dataclass
class Sample:
    image: Path
    label: Path | None
    boxes: list[tuple[int, float, float, float, float]] = field(default_factory=list)  # canonical class ids


def _raw_names(raw_dir: Path) -> list[str]:
    data_yaml = raw_dir / "data.yaml"
    if not data_yaml.exists():
        raise ConfigError(f"{data_yaml}: missing; a raw YOLO folder needs a data.yaml with `names:`")
    names = (yaml.safe_load(data_yaml.read_text()) or {}).get("names")
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names)]
    if not isinstance(names, list) or not names:
        raise ConfigError(f"{data_yaml}: `names:` must list the class names")
    return [str(n) for n in names]


def class_mapping(names: list[str], spec: DatasetSpec, classes: tuple[str, ...], where: str) -> dict[int, int | None]:
    """Map the dataset's class ids to canonical ids (``None`` = dropped via ``class_map: null``)."""
    mapping, unmapped = {}, []
    for i, name in enumerate(names):
        target = spec.class_map.get(name, name)
        if target is None:
            mapping[i] = None
        elif target in classes:
            mapping[i] = classes.index(target)
        else:
            unmapped.append(name)
    if unmapped:
        raise ConfigError(
            f"{where}: classes {unmapped} are neither canonical nor mapped; add them to "
            f"`datasets.{spec.name}.class_map` (name -> one of {list(classes)}, or null to drop)"
        )
    return mapping


def _parse_label(path: Path, mapping: dict[int, int | None], problems: list[str], dropped: Counter) -> list | None:
    boxes = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        where = f"{path}:{lineno}"
        try:
            values = [float(p) for p in parts]
        except ValueError:
            problems.append(f"{where}: not numbers: {line.strip()!r}")
            continue
        if len(values) != 5:
            problems.append(f"{where}: expected 5 numbers (class xc yc w h), got {len(values)}")
            continue
        cls, xc, yc, w, h = values
        if not all(map(math.isfinite, values)) or cls != int(cls) or int(cls) not in mapping:
            problems.append(f"{where}: class id {parts[0]} is not one of 0..{len(mapping) - 1}")
            continue
        if w <= 0 or h <= 0 or xc - w / 2 < -0.01 or yc - h / 2 < -0.01 or xc + w / 2 > 1.01 or yc + h / 2 > 1.01:
            problems.append(f"{where}: box {xc} {yc} {w} {h} is empty or outside the image")
            continue
        target = mapping[int(cls)]
        if target is None:
            dropped[int(cls)] += 1
            continue
        boxes.append((target, xc, yc, w, h))
    return boxes


def _collect(raw_dir: Path, mapping: dict[int, int | None]) -> tuple[list[Sample], list[str], Counter]:
    images = sorted(p for p in (raw_dir / "images").rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ConfigError(f"{raw_dir / 'images'}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    problems: list[str] = []
    dropped: Counter = Counter()
    samples = []
    for image in images:
        label = raw_dir / "labels" / image.relative_to(raw_dir / "images").with_suffix(".txt")
        if image.stat().st_size == 0:
            problems.append(f"{image}: empty file")
            continue
        n_before = len(problems)
        boxes = _parse_label(label, mapping, problems, dropped) if label.exists() else []
        if len(problems) == n_before:
            samples.append(Sample(image, label if label.exists() else None, boxes))
        else:
            problems.append(f"{image}: left out because its label has problems")
    return samples, problems, dropped


def _dedupe(samples: list[Sample]) -> tuple[list[Sample], list[dict]]:
    seen: dict[str, Path] = {}
    kept, removed = [], []
    for sample in samples:
        digest = hashlib.sha256(sample.image.read_bytes()).hexdigest()
        if digest in seen:
            removed.append({"file": str(sample.image), "duplicate_of": str(seen[digest])})
        else:
            seen[digest] = sample.image
            kept.append(sample)
    return kept, removed


def _stratify(strata: list[int], n_held_out: int) -> list[int] | None:
    """``strata`` if a held-out part of ``n_held_out`` can take one of each, else ``None`` (plain seeded split)."""
    counts = Counter(strata)
    return strata if min(counts.values()) >= 2 and len(counts) <= n_held_out else None


def split_samples(samples: list[Sample], fractions: dict[str, float], seed: int) -> dict[str, list[Sample]]:
    """Seeded split, stratified by each image's most frequent class (background = its own stratum)."""
    strata = [Counter(b[0] for b in s.boxes).most_common(1)[0][0] if s.boxes else -1 for s in samples]
    counts = Counter(strata)
    strata = [k if counts[k] >= 3 else -2 for k in strata]  # rare strata pooled so every split can take one
    n_test = max(1, round(len(samples) * fractions["test"]))
    n_val = max(1, round(len(samples) * fractions["val"]))
    rest, test, rest_strata, _ = train_test_split(samples, strata, test_size=n_test, random_state=seed, stratify=_stratify(strata, n_test))
    train, val = train_test_split(rest, test_size=n_val, random_state=seed, stratify=_stratify(rest_strata, n_val))
    return {"train": train, "val": val, "test": test}


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def run(cfg: Config, dataset: str, raw_dir: Path, out_dir: Path) -> dict:
    """Organize ``raw_dir`` into ``out_dir`` and return the report (counts and every skipped file)."""
    spec = cfg.datasets[dataset]
    names = _raw_names(raw_dir)
    mapping = class_mapping(names, spec, cfg.classes, f"{raw_dir / 'data.yaml'}")
    samples, problems, dropped = _collect(raw_dir, mapping)
    if problems and cfg.organize_on_bad == "error":
        listed = "\n  ".join(problems[:MAX_LISTED_PROBLEMS])
        more = f"\n  ... and {len(problems) - MAX_LISTED_PROBLEMS} more" if len(problems) > MAX_LISTED_PROBLEMS else ""
        raise ConfigError(f"{raw_dir}: {len(problems)} bad inputs (set `organize.on_bad: skip` to leave them out):\n  {listed}{more}")
    duplicates = []
    if cfg.organize_dedupe:
        samples, duplicates = _dedupe(samples)
    if len(samples) < 3:
        raise ConfigError(f"{raw_dir}: only {len(samples)} usable images; need at least 3 for train/val/test")
    splits = split_samples(samples, dict(cfg.organize_split), cfg.seed)

    if out_dir.exists():
        shutil.rmtree(out_dir)
    report: dict = {"dataset": dataset, "images": {}, "boxes": {}, "background_images": {}}
    for split in SPLITS:
        (out_dir / "images" / split).mkdir(parents=True)
        (out_dir / "labels" / split).mkdir(parents=True)
        boxes = Counter()
        for sample in sorted(splits[split], key=lambda s: s.image.name):
            _link(sample.image, out_dir / "images" / split / sample.image.name)
            lines = [f"{c} {xc:.6f} {yc:.6f} {w:.6f} {h:.6f}" for c, xc, yc, w, h in sample.boxes]
            (out_dir / "labels" / split / sample.image.with_suffix(".txt").name).write_text("".join(line + "\n" for line in lines))
            boxes.update(cfg.classes[b[0]] for b in sample.boxes)
        report["images"][split] = len(splits[split])
        report["boxes"][split] = {name: boxes[name] for name in cfg.classes}
        report["background_images"][split] = sum(1 for s in splits[split] if not s.boxes)
    data = {split: f"images/{split}" for split in SPLITS} | {"names": dict(enumerate(cfg.classes))}
    (out_dir / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    report["skipped"] = problems
    report["duplicates_removed"] = duplicates
    report["dropped_boxes"] = {names[i]: n for i, n in sorted(dropped.items())}
    return report
