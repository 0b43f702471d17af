"""YOLO: ``images/`` + ``labels/`` (flat or with split folders inside), the Roboflow export
(``train/ valid/ test/`` each with ``images/ labels/``), or a ``.txt`` beside each image.

Class names come from the dataset yaml Ultralytics would train from: any ``*.yaml`` / ``*.yml``
holding ``names:`` (``data.yaml``, ``dataset.yaml``, ``coco8.yaml``...), the shallowest one, with
``data.yaml`` preferred beside others; several at that depth with different names are an error
that names them. ``names:`` is a list, or a mapping whose keys are the ids 0..n-1 as ints or
quoted digits (``{"0": person}``), as Ultralytics' ``check_class_names`` reads it. Without such a
yaml, ``classes.txt`` / ``obj.names`` (Darknet) give the names, one a line.

Label lines are ``class xc yc w h`` normalised, or a polygon ``class x1 y1 ... xn yn`` (n >= 3)
turned into its bounding box; CRLF and a UTF-8 BOM are fine.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path

import yaml

from stagetrain.data.formats.common import Box, Item, Source, basename, folders, split_of
from stagetrain.errors import UserError

NAMES_FILES = ("classes.txt", "obj.names")  # Darknet's names files: one class a line
PREFERRED_YAMLS = ("data.yaml", "data.yml")  # Ultralytics' and Roboflow's name for it
MAX_YAML_BYTES = 2**20  # a dataset yaml is a few KiB; larger yaml files are data, not read for `names:`
_ID = re.compile(r"\s*\d+\s*")


def _is_yaml(rel: str) -> bool:
    return rel.lower().endswith((".yaml", ".yml"))


def dataset_yamls(raw_dir: Path, files: list[str]) -> tuple[dict[str, object], dict[str, str]]:
    """Every yaml that is a mapping with ``names:`` (relative path -> its ``names`` value), and why others did not parse."""
    found, broken = {}, {}
    for rel in filter(_is_yaml, files):
        path = raw_dir / rel
        try:
            if path.stat().st_size > MAX_YAML_BYTES:
                continue
            data = yaml.safe_load(path.read_bytes().decode("utf-8-sig"))
        except (OSError, yaml.YAMLError, UnicodeDecodeError) as err:  # OSError: e.g. a dangling link
            broken[rel] = f"{type(err).__name__}: {err}".splitlines()[0]
            continue
        if isinstance(data, dict) and "names" in data:
            found[rel] = data["names"]
    return found, broken


def evidence(raw_dir: Path, files: list[str]) -> list[str]:
    """The files that make ``raw_dir`` look like a YOLO dataset: dataset yamls, names files, anything under ``labels/``."""
    yamls, _ = dataset_yamls(raw_dir, files)
    return sorted([*yamls, *(f for f in files if basename(f) in NAMES_FILES or "labels" in folders(f))])


def class_names(path: Path, names: object) -> dict[int, str]:
    """A yaml's ``names:`` as id -> name, read as Ultralytics reads it (a list, or ids 0..n-1 as ints or quoted digits)."""
    if isinstance(names, list) and names:
        return dict(enumerate(map(str, names)))
    if not (isinstance(names, dict) and names):
        raise UserError(f"{path}: `names:` must list the class names (a list, or a mapping id -> name), got {names!r}")
    ids = {}
    for key, name in names.items():
        if isinstance(key, int) and not isinstance(key, bool):
            ids[key] = str(name)
        elif isinstance(key, str) and _ID.fullmatch(key):
            ids[int(key)] = str(name)
    if sorted(ids) != list(range(len(names))):
        raise UserError(
            f"{path}: `names:` keys must be the class ids 0..{len(names) - 1} (ints or quoted digits, as Ultralytics "
            f"requires), got {list(names)}; or write `names:` as a list"
        )
    return dict(sorted(ids.items()))


def _names_file(raw_dir: Path, files: list[str]) -> tuple[Path, dict[int, str]]:
    """The class names Ultralytics would train with, and the file they come from."""
    yamls, broken = dataset_yamls(raw_dir, files)
    for rel, reason in broken.items():
        if basename(rel) in PREFERRED_YAMLS:
            raise UserError(f"{raw_dir / rel}: not a YAML file Ultralytics can read ({reason}); fix or re-export it")
    if yamls:
        depth = min(rel.count("/") for rel in yamls)
        top = [rel for rel in sorted(yamls) if rel.count("/") == depth]
        top = [rel for rel in top if basename(rel) in PREFERRED_YAMLS] or top
        names = {rel: class_names(raw_dir / rel, yamls[rel]) for rel in top}
        if len({tuple(n.items()) for n in names.values()}) > 1:
            listed = "; ".join(f"{raw_dir / rel}: {list(n.values())}" for rel, n in names.items())
            raise UserError(
                f"{raw_dir}: several dataset yamls with different `names:` ({listed}); keep the one Ultralytics "
                "should train from and remove the others from the dataset"
            )
        return raw_dir / top[0], names[top[0]]
    for rel in sorted((f for f in files if basename(f) in NAMES_FILES), key=lambda f: (f.count("/"), f)):
        lines = (raw_dir / rel).read_text(encoding="utf-8-sig").splitlines()
        return raw_dir / rel, dict(enumerate(line.strip() for line in lines if line.strip()))
    unparsed = f" (these did not parse: {', '.join(str(raw_dir / rel) for rel in broken)})" if broken else ""
    raise UserError(
        f"{raw_dir}: no dataset yaml with `names:` (data.yaml or any *.yaml) nor classes.txt found{unparsed}; "
        "a YOLO dataset needs its class names"
    )


def label_of(rel: str) -> str:
    """Ultralytics' rule: the last ``images`` folder becomes ``labels``; no ``images`` folder: beside the image."""
    parts = rel.split("/")
    if "images" in parts[:-1]:
        parts[len(parts) - 2 - parts[-2::-1].index("images")] = "labels"
    parts[-1] = parts[-1].rsplit(".", 1)[0] + ".txt"
    return "/".join(parts)


def read(raw_dir: Path, files: list[str], images: list[str]) -> Source:
    """Locate every image's label file; the labels themselves are parsed per image by :func:`parse_label`."""
    names_from, names = _names_file(raw_dir, files)
    present, expected, items = set(files), set(), []
    for rel in images:
        label = label_of(rel)
        expected.add(label)
        items.append(Item(raw_dir / rel, rel, split_of(folders(rel)), raw_dir / label if label in present else None))
    image_dirs = {rel.rpartition("/")[0] for rel in images}

    def is_label(rel: str) -> bool:
        folder, _, name = rel.rpartition("/")
        beside_images = folder in image_dirs and name not in NAMES_FILES and not name.startswith("README")
        return name.endswith(".txt") and ("labels" in folder.split("/") or beside_images)

    orphans = [
        f"{raw_dir / rel}: label file without an image (no image of that name beside it or under images/)"
        for rel in files
        if is_label(rel) and rel not in expected
    ]
    return Source("yolo", list(names.values()), names_from, items, names, orphans)


def parse_label(path: Path, names: Mapping[int, str]) -> tuple[list[Box], list[str], int]:
    """Read a YOLO label file into normalised boxes.

    Args:
        path: the ``.txt`` label file.
        names: the dataset's class id -> name (from its dataset yaml).

    Returns:
        The boxes, the problems as ``file:line: reason``, and how many lines were polygons.
    """
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a BOM from Windows editors is harmless
    except UnicodeDecodeError as err:
        return [], [f"{path}: not UTF-8 text ({err.reason} at byte {err.start})"], 0
    boxes, problems, polygons = [], [], 0
    for lineno, line in enumerate(text.splitlines(), 1):  # splitlines: CRLF and CR too
        parts = line.split()
        if not parts:
            continue
        where = f"{path}:{lineno}"
        try:
            values = [float(p) for p in parts]
        except ValueError:
            problems.append(f"{where}: not numbers: {line.strip()[:80]!r}")
            continue
        if not all(map(math.isfinite, values)):
            problems.append(f"{where}: {line.strip()[:80]!r} holds a value that is not a finite number")
            continue
        if len(values) == 5:
            cls, xc, yc, w, h = values
        elif len(values) >= 7 and len(values) % 2:
            cls, xs, ys = values[0], values[1::2], values[2::2]
            xc, yc, w, h = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, max(xs) - min(xs), max(ys) - min(ys)
            polygons += 1
        else:
            problems.append(f"{where}: expected 5 numbers (class xc yc w h) or a polygon (class x1 y1 x2 y2 x3 y3 ...), got {len(values)}")
            continue
        if cls != int(cls) or int(cls) not in names:
            problems.append(f"{where}: class id {parts[0]} is not one of 0..{max(names)} (the classes in the dataset's yaml)")
            continue
        boxes.append(Box(names[int(cls)], xc, yc, w, h, where))
    return boxes, problems, polygons
