"""Write the organized layout: images hard-linked (never re-encoded), labels as Ultralytics reads them, data.yaml.

Layout (``data/organized/<dataset>``)::

    images/{train,val,test}/   labels/{train,val,test}/   data.yaml (no `path:`, canonical names)
    images/pool/               unlabelled images (only when the raw folder has a pool/), no labels folder
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections import Counter
from pathlib import Path

import yaml

from stagetrain.config import SPLITS
from stagetrain.data import workers
from stagetrain.data.splits import Sample


def label_line(class_id: int, xc: float, yc: float, w: float, h: float) -> str:
    """One label row as written (without its newline): what Ultralytics compares when it drops duplicate rows."""
    return f"{class_id} {xc:.6f} {yc:.6f} {w:.6f} {h:.6f}"


def output_stems(samples: list[Sample]) -> list[str]:
    """File stems unique within a split (case-insensitively, and across suffixes: labels share ``stem.txt``)."""
    stems = [Path(s.rel).stem for s in samples]
    clashes = Counter(stem.lower() for stem in stems)
    return [
        stem if clashes[stem.lower()] == 1 else f"{stem}_{hashlib.sha1(s.rel.encode()).hexdigest()[:8]}"
        for stem, s in zip(stems, samples, strict=True)
    ]


def _place(task: tuple[str, str, str | None, str]) -> None:
    """Pool task: hard-link one image into the output (a copy where links are impossible) and write its label (if any)."""
    src, image, label, text = task
    try:
        os.link(src, image)
    except OSError:  # another filesystem, or links not supported
        shutil.copy2(src, image)
    if label is not None:
        with open(label, "w") as f:
            f.write(text)


def write_layout(
    out_dir: Path, splits: dict[str, list[Sample]], classes: tuple[str, ...], pool, desc: str, unlabelled: list[Sample] | None = None
) -> dict:
    """Replace ``out_dir`` with the organized dataset; return the counts per split (images, boxes per class, backgrounds).

    ``unlabelled`` (None: the raw folder has no pool) goes to ``images/pool/``, images only.
    """
    if out_dir.exists():
        shutil.rmtree(out_dir)
    counts: dict = {"images": {}, "boxes": {}, "background_images": {}}
    tasks = []
    for split in SPLITS:
        (out_dir / "images" / split).mkdir(parents=True)
        (out_dir / "labels" / split).mkdir(parents=True)
        samples = sorted(splits[split], key=lambda s: s.rel)
        for sample, stem in zip(samples, output_stems(samples), strict=True):
            lines = "".join(label_line(*box) + "\n" for box in sample.boxes)
            tasks.append(
                (str(sample.image), f"{out_dir}/images/{split}/{stem}{sample.image.suffix}", f"{out_dir}/labels/{split}/{stem}.txt", lines)
            )
        boxes = Counter(classes[b[0]] for s in samples for b in s.boxes)
        counts["images"][split] = len(samples)
        counts["boxes"][split] = {name: boxes[name] for name in classes}
        counts["background_images"][split] = sum(1 for s in samples if not s.boxes)
    if unlabelled is not None:
        (out_dir / "images" / "pool").mkdir(parents=True)
        samples = sorted(unlabelled, key=lambda s: s.rel)
        for sample, stem in zip(samples, output_stems(samples), strict=True):
            tasks.append((str(sample.image), f"{out_dir}/images/pool/{stem}{sample.image.suffix}", None, ""))
    workers.pmap(pool, _place, tasks, desc)
    data = {split: f"images/{split}" for split in SPLITS} | {"names": dict(enumerate(classes))}
    (out_dir / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return counts
