"""Pascal VOC: ``Annotations/*.xml`` + ``JPEGImages/``, or each ``.xml`` beside its image; class names from
``<name>``; ``ImageSets/Main/{train,trainval,val,test}.txt`` give the split when present.

Coordinates follow the VOC devkit: pixel indices are 1-based and ``<bndbox>`` is inclusive, so the box
covers the pixel edges ``x0 = xmin - 1`` to ``x1 = xmax`` (and ``y0 = ymin - 1`` to ``y1 = ymax``):
``xmin == xmax`` is a 1-px-wide box, and ``1 1 W H`` is the whole image. Exporters that write 0-based
corners instead (``0 0 W H``) land at most one pixel off at the left/top border; organize clamps such
a sub-pixel or one-pixel overhang without reporting it (see :data:`~stagetrain.data.validate.PIXEL_ROUNDING`).
Ultralytics' own VOC.yaml conversion (centre ``(xmin + xmax) / 2 - 1``, width ``xmax - xmin``) is half a
pixel off in the centre and one pixel short in size, and turns a 1-px box into an empty one.
"""

from __future__ import annotations

import posixpath
from pathlib import Path
from xml.parsers import expat

from stagetrain.data.formats.common import Box, Item, Source, basename, folders, split_of


def evidence(files: list[str]) -> list[str]:
    return [f for f in files if f.lower().endswith(".xml")]


def read(raw_dir: Path, files: list[str], images: list[str]) -> Source:
    """Read every XML and pair it with its image; an image without one is a background image."""
    by_stem = {posixpath.splitext(rel)[0]: rel for rel in images}
    items = {rel: Item(raw_dir / rel, rel, None) for rel in images}
    source, names = Source("voc", [], raw_dir, []), set()
    for xml in evidence(files):
        info, boxes, problems = read_xml(raw_dir / xml)
        image = _image(xml, info, by_stem)
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
    set_splits = _image_sets(raw_dir, files)
    for item in items.values():
        item.split = set_splits.get(posixpath.splitext(basename(item.rel))[0]) if set_splits else split_of(folders(item.rel))
    source.names, source.items = sorted(names), list(items.values())
    return source


def read_xml(path: Path) -> tuple[dict[str, str], list[Box], list[str]]:
    """A VOC annotation: its ``<filename>``/``<size>`` fields, boxes in pixels (devkit convention), and problems as ``file:line``.

    Parsed with expat because ElementTree keeps no line numbers; ``<part>`` boxes inside an object are ignored.
    """
    parser, stack, text = expat.ParserCreate(), [], []
    info: dict[str, str] = {}
    objects: list[dict] = []

    def start(tag: str, _attrs: dict) -> None:
        stack.append(tag)
        text.clear()
        if tag == "object":
            objects.append({"line": parser.CurrentLineNumber})

    def end(tag: str) -> None:
        value, _ = "".join(text).strip(), stack.pop()
        text.clear()
        parent = stack[-2:] if len(stack) > 1 else ["", *stack]
        if parent[-1] == "object" and tag == "name" and objects:
            objects[-1]["name"] = value
        elif parent == ["object", "bndbox"] and objects:
            objects[-1][tag] = value
        elif parent[-1] in ("annotation", "size") and tag in ("filename", "width", "height"):
            info[tag] = value

    parser.StartElementHandler, parser.EndElementHandler, parser.CharacterDataHandler = start, end, text.append
    try:
        parser.Parse(path.read_bytes(), True)
    except expat.ExpatError as err:
        return info, [], [f"{path}:{err.lineno}: not valid XML ({expat.ErrorString(err.code)})"]
    boxes, problems = [], []
    for obj in objects:
        where, coords = f"{path}:{obj['line']}", [obj.get(k) for k in ("xmin", "ymin", "xmax", "ymax")]
        try:
            xmin, ymin, xmax, ymax = map(float, coords)
        except (TypeError, ValueError):
            problems.append(f"{where}: <object> needs <bndbox> with numbers xmin ymin xmax ymax, got {coords}")
            continue
        if not obj.get("name"):
            problems.append(f"{where}: <object> has no <name>")
            continue
        boxes.append(to_box(obj["name"], xmin, ymin, xmax, ymax, where))
    return info, boxes, problems


def to_box(name: str, xmin: float, ymin: float, xmax: float, ymax: float, where: str) -> Box:
    """A devkit ``<bndbox>`` (1-based, inclusive) as a pixel-edge :class:`Box`: edges ``xmin - 1 .. xmax``."""
    x0, y0, x1, y1 = xmin - 1, ymin - 1, xmax, ymax
    return Box(name, (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0, where)


def _image(xml: str, info: dict[str, str], by_stem: dict[str, str]) -> str | None:
    folder, _, name = xml.rpartition("/")
    candidates, parts = [folder], xml.split("/")
    if "Annotations" in parts[:-1]:  # the VOC tree: Annotations/<sub>/x.xml -> JPEGImages/<sub>/x.jpg
        at = len(parts) - 2 - parts[-2::-1].index("Annotations")
        candidates.insert(0, "/".join([*parts[:at], "JPEGImages", *parts[at + 1 : -1]]))
    for folder in candidates:
        for stem in (posixpath.splitext(info.get("filename", ""))[0], posixpath.splitext(name)[0]):
            if stem and posixpath.join(folder, stem) in by_stem:
                return by_stem[posixpath.join(folder, stem)]
    return None


def _image_sets(raw_dir: Path, files: list[str]) -> dict[str, str]:
    """Image stem -> split from ``ImageSets/Main/{train,trainval,val,test}.txt`` (empty when absent)."""
    sets = {posixpath.splitext(basename(f))[0]: raw_dir / f for f in files if folders(f)[-2:] == ["ImageSets", "Main"]}
    splits: dict[str, str] = {}
    for name, split in (("test", "test"), ("val", "val"), ("train", "train"), ("trainval", "train")):
        for stem in sets[name].read_text().split() if name in sets else ():
            splits.setdefault(stem, split)  # trainval lists val images too: val.txt, read first, wins
    return splits
