"""Readers for the raw layouts organize accepts, all reduced to one list of :class:`Item`.

* ``yolo``: ``images/`` + ``labels/`` (flat or with ``train/ val/ test/`` inside), the Roboflow export
  (``train/ valid/ test/`` each with ``images/ labels/``), or ``.txt`` beside each image; class names
  from ``data.yaml`` (``names:``), else ``classes.txt`` / ``obj.names``.
* ``coco``: ``annotations/*.json`` or one ``_annotations.coco.json`` per split folder (Roboflow);
  ``bbox`` is ``[x, y, w, h]`` in pixels; crowd regions are skipped, as Ultralytics' converter does.
* ``voc``: ``Annotations/*.xml`` + ``JPEGImages/``, or each ``.xml`` beside its image; class names
  from ``<name>``; ``ImageSets/Main/{train,val,test}.txt`` give the split when present.

A source's own split comes from folder names (``valid`` -> ``val``, ``train2017`` -> ``train``).
Files are located here; :mod:`stagetrain.data.validate` reads and judges their contents.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from stagetrain.config import ConfigError
from stagetrain.data.validate import Box, coco_box, read_voc_xml

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
FORMATS = ("yolo", "coco", "voc")
FORMAT_ALIASES = {"roboflow": "yolo", **{f: f for f in FORMATS}}  # source.json's `format` -> reader
SOURCE_FILE = "source.json"  # written by download: {"kind": ..., "format": ...}
_SPLIT = re.compile(r"(train|training|val|valid|validation|test|testing)\d*")
_SKIP_DIRS = ("__MACOSX",)  # macOS zip metadata: `._x.jpg` files there are not images
_NOT_LABELS = ("classes.txt", "obj.names")


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


def is_image(rel: str) -> bool:
    """True for the suffixes Ultralytics trains on (any case: ``.JPG`` too)."""
    return os.path.splitext(rel)[1].lower() in IMAGE_SUFFIXES


def _folders(rel: str) -> list[str]:
    return rel.split("/")[:-1]


def declared_format(raw_dir: Path) -> str:
    """The format ``source.json`` names (``auto`` when there is none)."""
    path = raw_dir / SOURCE_FILE
    if not path.exists():
        return "auto"  # synthetic and hand-made raw folders carry no source.json
    try:
        fmt = str(json.loads(path.read_text()).get("format", "auto")).lower()
    except (ValueError, AttributeError) as err:
        raise ConfigError(f"{path}: not a JSON object ({err}); rerun `dvc repro download@<dataset>`") from None
    if fmt != "auto" and fmt not in FORMAT_ALIASES and not fmt.startswith("yolo"):
        raise ConfigError(f"{path}: format {fmt!r} is not one organize reads; use auto, roboflow, {', '.join(FORMATS)}")
    return "auto" if fmt == "auto" else FORMAT_ALIASES.get(fmt, "yolo")


def detect(raw_dir: Path, files: list[str]) -> str:
    """Tell the layout from the files: COCO JSON, VOC XML or YOLO names/labels, exactly one of them."""
    evidence = {
        "coco": [f for f in files if _is_coco_json(f)],
        "voc": [f for f in files if f.lower().endswith(".xml")],
        "yolo": [f for f in files if f.rpartition("/")[2] in ("data.yaml", "data.yml", *_NOT_LABELS) or "labels" in _folders(f)],
    }
    found = {fmt: rels for fmt, rels in evidence.items() if rels}
    if len(found) == 1:
        return next(iter(found))
    seen = "; ".join(f"{fmt}: {raw_dir / rels[0]}" for fmt, rels in found.items()) or "no data.yaml, labels/, COCO JSON or VOC XML"
    raise ConfigError(
        f"{raw_dir}: cannot tell the dataset's format ({seen}); name it with the dataset's `format:` option "
        f"({', '.join(FORMATS)}), e.g. `datasets.<name>.local.format: coco`"
    )


def read(raw_dir: Path, fmt: str | None = None) -> Source:
    """Read ``raw_dir`` in format ``fmt`` (default: ``source.json``'s, else detected).

    Args:
        raw_dir: download's output folder for one dataset.
        fmt: ``yolo``, ``coco`` or ``voc``; None reads ``source.json`` and detects ``auto``.

    Returns:
        The items (images with their annotation) and the problems found while locating them.

    Raises:
        ConfigError: no images, an unreadable names or annotation file, or an undetectable layout.
    """
    if not raw_dir.is_dir():
        raise ConfigError(f"{raw_dir}: not found; run the dataset's download stage first (`dvc repro download@<dataset>`)")
    files = walk_files(raw_dir)
    fmt = fmt or declared_format(raw_dir)
    fmt = detect(raw_dir, files) if fmt == "auto" else fmt
    images = [f for f in files if is_image(f)]
    if not images:
        raise ConfigError(f"{raw_dir}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))}, any case)")
    return {"yolo": _read_yolo, "coco": _read_coco, "voc": _read_voc}[fmt](raw_dir, files, images)


def _yolo_names(raw_dir: Path, files: list[str]) -> tuple[Path, dict[int, str]]:
    for rel in sorted(files, key=lambda f: (f.count("/"), f)):  # the shallowest names file
        path, name = raw_dir / rel, rel.rpartition("/")[2]
        if name in ("data.yaml", "data.yml"):
            try:
                names = (yaml.safe_load(path.read_text()) or {}).get("names")
            except (yaml.YAMLError, AttributeError) as err:
                raise ConfigError(f"{path}: not a YAML mapping with `names:` ({err})") from None
            if isinstance(names, list) and names:
                return path, dict(enumerate(map(str, names)))
            if isinstance(names, dict) and names and all(isinstance(k, int) for k in names):
                return path, {k: str(v) for k, v in sorted(names.items())}
            raise ConfigError(f"{path}: `names:` must list the class names (a list, or a mapping id -> name)")
        if name in _NOT_LABELS:
            return path, dict(enumerate(line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()))
    raise ConfigError(f"{raw_dir}: no data.yaml with `names:` (or classes.txt) found; a YOLO dataset needs its class names")


def _yolo_label(rel: str) -> str:
    """Ultralytics' rule: the last ``images`` folder becomes ``labels``; no ``images`` folder: beside the image."""
    parts = rel.split("/")
    if "images" in parts[:-1]:
        parts[len(parts) - 2 - parts[-2::-1].index("images")] = "labels"
    parts[-1] = parts[-1].rsplit(".", 1)[0] + ".txt"
    return "/".join(parts)


def _read_yolo(raw_dir: Path, files: list[str], images: list[str]) -> Source:
    names_from, names = _yolo_names(raw_dir, files)
    present, expected, items = set(files), set(), []
    for rel in images:
        label = _yolo_label(rel)
        expected.add(label)
        items.append(Item(raw_dir / rel, rel, split_of(_folders(rel)), raw_dir / label if label in present else None))
    image_dirs = {rel.rpartition("/")[0] for rel in images}

    def is_label(rel: str) -> bool:
        folder, _, name = rel.rpartition("/")
        beside_images = folder in image_dirs and name not in _NOT_LABELS and not name.startswith("README")
        return name.endswith(".txt") and ("labels" in folder.split("/") or beside_images)

    orphans = [
        f"{raw_dir / rel}: label file without an image (no image of that name beside it or under images/)"
        for rel in files
        if is_label(rel) and rel not in expected
    ]
    return Source("yolo", list(names.values()), names_from, items, names, orphans)


def _is_coco_json(rel: str) -> bool:
    return rel.endswith(".json") and ("annotations" in _folders(rel)[-1:] or rel.endswith(".coco.json"))


def _read_coco(raw_dir: Path, files: list[str], images: list[str]) -> Source:
    jsons = [f for f in files if _is_coco_json(f)]
    if not jsons:
        raise ConfigError(f"{raw_dir}: no COCO annotation file (annotations/*.json or <split>/_annotations.coco.json)")
    by_name: dict[str, list[str]] = {}
    for rel in images:
        by_name.setdefault(rel.rpartition("/")[2], []).append(rel)
    source, items = Source("coco", [], raw_dir / jsons[0], []), {}
    for rel_json in jsons:
        try:
            _read_coco_file(raw_dir, rel_json, set(images), by_name, source, items)
        except (ValueError, KeyError, TypeError, AttributeError) as err:  # JSONDecodeError is a ValueError
            raise ConfigError(f"{raw_dir / rel_json}: not a COCO detection file ({type(err).__name__}: {err}); re-export it") from None
    source.problems += [
        f"{raw_dir / rel}: image not listed in any COCO annotation file ({', '.join(jsons)})" for rel in images if rel not in items
    ]
    source.items = sorted(items.values(), key=lambda i: i.rel)
    return source


def _read_coco_file(raw_dir: Path, rel_json: str, present: set[str], by_name: dict, source: Source, items: dict[str, Item]) -> None:
    """Add one COCO JSON's images and boxes to ``items`` (keyed by relative path) and its problems to ``source``."""
    path = raw_dir / rel_json
    data = json.loads(path.read_bytes())
    if "categories" not in data:
        return  # captions or other non-detection files beside the instances files
    categories = {c["id"]: str(c["name"]) for c in data["categories"]}
    source.names.extend(n for n in categories.values() if n not in source.names)
    split = split_of(_folders(rel_json)) or split_of(re.split(r"[_.\-]", path.stem))
    listed: dict[object, Item] = {}
    for entry in data.get("images", []):
        rel = _coco_image(str(entry.get("file_name", "")), rel_json.rpartition("/")[0], present, by_name, split)
        if rel is None:
            source.problems.append(
                f"{path}: image id {entry.get('id')} {entry.get('file_name')!r} is not found (or is ambiguous) under {raw_dir}"
            )
        elif rel in items:  # listed by two files (e.g. trainval and val): the first listing counts
            source.problems.append(f"{path}: image id {entry.get('id')} {raw_dir / rel} is already listed by another annotation file")
            listed[entry.get("id")] = Item(raw_dir / rel, rel, None)  # absorbs this listing's annotations
        else:
            size = (int(entry.get("width") or 0), int(entry.get("height") or 0))
            items[rel] = listed[entry.get("id")] = Item(raw_dir / rel, rel, split or split_of(_folders(rel)), declared_size=size)
    for ann in data.get("annotations", []):
        where, item = f"{path}: annotation id {ann.get('id')}", listed.get(ann.get("image_id"))
        if item is None:
            source.problems.append(f"{where}: image_id {ann.get('image_id')} is not in `images`")
        elif ann.get("iscrowd"):  # crowd regions are skipped, as Ultralytics' COCO converter does
            source.crowd_skipped += 1
        elif isinstance(box := coco_box(ann, categories, where), Box):
            item.boxes.append(box)
        else:
            item.problems.append(box)


def _coco_image(file_name: str, json_dir: str, present: set[str], by_name: dict[str, list[str]], split: str | None) -> str | None:
    """Find ``file_name`` beside the JSON, in ``../images``, under the raw root or ``images/``, else by a unique name."""
    for base in (json_dir, posixpath.join(posixpath.dirname(json_dir), "images"), "", "images"):
        rel = posixpath.normpath(posixpath.join(base, file_name))
        if rel in present:
            return rel
    candidates = [r for r in by_name.get(posixpath.basename(file_name), []) if f"/{r}".endswith(f"/{file_name}")]
    if len(candidates) > 1 and split:
        candidates = [r for r in candidates if split_of(_folders(r)) == split]
    return candidates[0] if len(candidates) == 1 else None


def _voc_image(xml: str, info: dict[str, str], by_stem: dict[str, str]) -> str | None:
    folder, _, name = xml.rpartition("/")
    folders, parts = [folder], xml.split("/")
    if "Annotations" in parts[:-1]:  # the VOC tree: Annotations/<sub>/x.xml -> JPEGImages/<sub>/x.jpg
        at = len(parts) - 2 - parts[-2::-1].index("Annotations")
        folders.insert(0, "/".join([*parts[:at], "JPEGImages", *parts[at + 1 : -1]]))
    for folder in folders:
        for stem in (posixpath.splitext(info.get("filename", ""))[0], posixpath.splitext(name)[0]):
            if stem and posixpath.join(folder, stem) in by_stem:
                return by_stem[posixpath.join(folder, stem)]
    return None


def _voc_splits(raw_dir: Path, files: list[str]) -> dict[str, str]:
    """Image stem -> split from ``ImageSets/Main/{train,trainval,val,test}.txt`` (empty when absent)."""
    sets = {posixpath.splitext(f.rpartition("/")[2])[0]: raw_dir / f for f in files if _folders(f)[-2:] == ["ImageSets", "Main"]}
    splits: dict[str, str] = {}
    for name, split in (("test", "test"), ("val", "val"), ("train", "train"), ("trainval", "train")):
        for stem in sets[name].read_text().split() if name in sets else ():
            splits.setdefault(stem, split)  # trainval lists val images too: val.txt, read first, wins
    return splits


def _read_voc(raw_dir: Path, files: list[str], images: list[str]) -> Source:
    by_stem = {posixpath.splitext(rel)[0]: rel for rel in images}
    items = {rel: Item(raw_dir / rel, rel, None) for rel in images}  # an image without XML is a background image
    source, names = Source("voc", [], raw_dir, []), set()
    for xml in (f for f in files if f.lower().endswith(".xml")):
        info, boxes, problems = read_voc_xml(raw_dir / xml)
        image = _voc_image(xml, info, by_stem)
        if image is None:
            source.problems += problems or [
                f"{raw_dir / xml}: annotation without an image (looked for {info.get('filename') or xml} beside it and in JPEGImages/)"
            ]
            continue
        item = items[image]
        item.boxes, item.problems = boxes, problems
        if info.get("width", "").isdigit() and info.get("height", "").isdigit() and int(info["width"]) > 0:
            item.declared_size = (int(info["width"]), int(info["height"]))
        names.update(box.name for box in boxes)
    set_splits = _voc_splits(raw_dir, files)
    for item in items.values():
        item.split = set_splits.get(posixpath.splitext(item.rel.rpartition("/")[2])[0]) if set_splits else split_of(_folders(item.rel))
    source.names, source.items = sorted(names), list(items.values())
    return source
