"""COCO: ``annotations/*.json`` (COCO itself, CVAT, Label Studio) or one ``_annotations.coco.json`` per split
folder (Roboflow). ``bbox`` is ``[x, y, w, h]`` in pixels, its corner at the pixel grid's edge (``x = 0``
is the image's left border), so it converts without an offset. Crowd regions are skipped and counted,
as Ultralytics' own converter skips them. A JSON without ``categories`` (captions, keypoints meta) is not
an annotation file and is passed over.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Mapping
from pathlib import Path

from stagetrain.data.formats.common import Box, Item, Source, basename, folders, split_of
from stagetrain.errors import UserError


def is_annotation_file(rel: str) -> bool:
    return rel.endswith(".json") and ("annotations" in folders(rel)[-1:] or rel.endswith(".coco.json"))


def evidence(files: list[str]) -> list[str]:
    return [f for f in files if is_annotation_file(f)]


def read(raw_dir: Path, files: list[str], images: list[str]) -> Source:
    """Read every COCO annotation file; an image listed by none of them is a problem, not a background image."""
    jsons = evidence(files)
    if not jsons:
        raise UserError(f"{raw_dir}: no COCO annotation file (annotations/*.json or <split>/_annotations.coco.json)")
    by_name: dict[str, list[str]] = {}
    for rel in images:
        by_name.setdefault(basename(rel), []).append(rel)
    source, items = Source("coco", [], raw_dir / jsons[0], []), {}
    for rel_json in jsons:
        try:
            _read_file(raw_dir, rel_json, set(images), by_name, source, items)
        except (ValueError, KeyError, TypeError, AttributeError) as err:  # JSONDecodeError is a ValueError
            raise UserError(f"{raw_dir / rel_json}: not a COCO detection file ({type(err).__name__}: {err}); re-export it") from None
    source.problems += [
        f"{raw_dir / rel}: image not listed in any COCO annotation file ({', '.join(jsons)})" for rel in images if rel not in items
    ]
    source.items = sorted(items.values(), key=lambda i: i.rel)
    return source


def _read_file(raw_dir: Path, rel_json: str, present: set[str], by_name: dict, source: Source, items: dict[str, Item]) -> None:
    """Add one COCO JSON's images and boxes to ``items`` (keyed by relative path) and its problems to ``source``."""
    path = raw_dir / rel_json
    data = json.loads(path.read_bytes())
    if "categories" not in data:
        return  # captions or other non-detection files beside the instances files
    categories = {c["id"]: str(c["name"]) for c in data["categories"]}
    source.names.extend(n for n in categories.values() if n not in source.names)
    split = split_of(folders(rel_json)) or split_of(re.split(r"[_.\-]", path.stem))
    listed: dict[object, Item] = {}
    for entry in data.get("images", []):
        rel = _image(str(entry.get("file_name", "")), rel_json.rpartition("/")[0], present, by_name, split)
        if rel is None:
            source.problems.append(
                f"{path}: image id {entry.get('id')} {entry.get('file_name')!r} is not found (or is ambiguous) under {raw_dir}"
            )
        elif rel in items:  # listed by two files (e.g. trainval and val): the first listing counts
            source.problems.append(f"{path}: image id {entry.get('id')} {raw_dir / rel} is already listed by another annotation file")
            listed[entry.get("id")] = Item(raw_dir / rel, rel, None)  # absorbs this listing's annotations
        else:
            size = (int(entry.get("width") or 0), int(entry.get("height") or 0))
            items[rel] = listed[entry.get("id")] = Item(raw_dir / rel, rel, split or split_of(folders(rel)), declared_size=size)
    for ann in data.get("annotations", []):
        where, item = f"{path}: annotation id {ann.get('id')}", listed.get(ann.get("image_id"))
        if item is None:
            source.problems.append(f"{where}: image_id {ann.get('image_id')} is not in `images`")
        elif ann.get("iscrowd"):  # crowd regions are skipped, as Ultralytics' COCO converter does
            source.crowd_skipped += 1
        elif isinstance(box := to_box(ann, categories, where), Box):
            item.boxes.append(box)
        else:
            item.problems.append(box)


def _image(file_name: str, json_dir: str, present: set[str], by_name: dict[str, list[str]], split: str | None) -> str | None:
    """Find ``file_name`` beside the JSON, in ``../images``, under the raw root or ``images/``, else by a unique name."""
    for base in (json_dir, posixpath.join(posixpath.dirname(json_dir), "images"), "", "images"):
        rel = posixpath.normpath(posixpath.join(base, file_name))
        if rel in present:
            return rel
    candidates = [r for r in by_name.get(posixpath.basename(file_name), []) if f"/{r}".endswith(f"/{file_name}")]
    if len(candidates) > 1 and split:
        candidates = [r for r in candidates if split_of(folders(r)) == split]
    return candidates[0] if len(candidates) == 1 else None


def to_box(annotation: dict, categories: Mapping[object, str], where: str) -> Box | str:
    """One COCO annotation (``bbox`` = ``[x, y, w, h]`` in pixels) as a :class:`Box`, or the problem with it."""
    bbox, category = annotation.get("bbox"), annotation.get("category_id")
    if category not in categories:
        return f"{where}: category_id {category} is not in `categories`"
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(type(v) in (int, float) for v in bbox)):
        return f"{where}: bbox {bbox!r} is not 4 numbers [x, y, w, h]"
    x, y, w, h = map(float, bbox)
    return Box(categories[category], x + w / 2, y + h / 2, w, h, where)
