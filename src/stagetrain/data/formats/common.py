"""What every format reader shares: the :class:`Box`, :class:`Item` and :class:`Source` records and the file walk."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
_SPLIT = re.compile(r"(train|training|val|valid|validation|test|testing)\d*")
_SKIP_DIRS = ("__MACOSX",)  # macOS zip metadata: `._x.jpg` files there are not images
POOL_DIR = "pool"  # top-level folder of unlabelled images: passed through by organize, never read as annotated data


@dataclass(frozen=True)
class Box:
    """One box as the source gives it: centre and size, normalised (YOLO) or in pixels (COCO, VOC)."""

    name: str  # the source's class name
    xc: float
    yc: float
    w: float
    h: float
    where: str  # `file:line` (or `file: annotation id N`) for messages and the report


@dataclass
class Item:
    """One image of the source with where its annotation lives."""

    image: Path
    rel: str  # path relative to the raw folder (POSIX): sort key and output name source
    split: str | None  # the source's own split, None when it has none
    label: Path | None = None  # YOLO label file (None: background, or boxes below)
    boxes: list[Box] = field(default_factory=list)  # COCO / VOC boxes, in pixels
    declared_size: tuple[int, int] | None = None  # (w, h) the annotation file states, checked against the image
    problems: list[str] = field(default_factory=list)  # annotation problems found while reading


@dataclass
class Source:
    """Everything a reader found in one raw folder."""

    format: str
    names: list[str]  # the source's class names, in its own order
    names_from: Path  # the file (or folder) the names come from, for messages
    items: list[Item]
    yolo_names: dict[int, str] = field(default_factory=dict)  # YOLO class id -> name
    problems: list[str] = field(default_factory=list)  # not tied to a usable image: orphan labels, missing images
    crowd_skipped: int = 0
    pool: list[str] = field(default_factory=list)  # images under the top-level pool/ folder (unlabelled), relative paths


def split_of(parts: tuple[str, ...] | list[str]) -> str | None:
    """The split named by the first folder (or file stem token) that names one: ``valid`` -> ``val``."""
    for part in parts:
        match = _SPLIT.fullmatch(part.lower())
        if match:
            word = match.group(1)
            return "train" if word.startswith("tr") else "val" if word.startswith("v") else "test"
    return None


def walk_files(raw_dir: Path) -> list[str]:
    """Every file under ``raw_dir`` as a sorted POSIX path relative to it, without hidden files or OS metadata.

    Relative strings, not Paths: a 20k-image dataset would spend more time in pathlib than in this walk.
    """
    found = []
    for root, dirs, files in os.walk(raw_dir):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in _SKIP_DIRS]
        prefix = os.path.relpath(root, raw_dir).replace(os.sep, "/")
        prefix = "" if prefix == "." else f"{prefix}/"
        found.extend(prefix + name for name in files if not name.startswith("."))
    return sorted(found)


def in_pool(rel: str) -> bool:
    """True for a file under the top-level ``pool/`` folder."""
    return rel.startswith(POOL_DIR + "/")


def is_image(rel: str) -> bool:
    """True for the suffixes Ultralytics trains on (any case: ``.JPG`` too)."""
    return os.path.splitext(rel)[1].lower() in IMAGE_SUFFIXES


def folders(rel: str) -> list[str]:
    """The folder names of a relative POSIX path, outermost first."""
    return rel.split("/")[:-1]


def basename(rel: str) -> str:
    return rel.rpartition("/")[2]
