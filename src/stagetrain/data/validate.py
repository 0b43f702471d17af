"""Judge raw inputs the way training will read them: every image decoded, every label line checked.

Images: read once, content-hashed (for dedupe) and decoded in full from memory. A JPEG is decoded
with libjpeg's 1/8 DCT scaling (``Image.draft``): every byte of entropy-coded data is still
decoded, so truncation and corruption raise as they would at full size, at 0.5-0.65x the cost
(measured in ``bench/organize.py``; the smaller figure for larger images). Sizes are the *displayed* size, after EXIF orientation, as
Ultralytics' ``exif_size`` and OpenCV's reader see them. Files are never rewritten.

Labels: ``class xc yc w h`` normalised, or a polygon ``class x1 y1 ... xn yn`` (n >= 3) turned
into its bounding box; CRLF and a UTF-8 BOM are fine. Boxes may overhang the image by
:data:`TOLERANCE` of its size (as Ultralytics allows) and are then clipped, because Ultralytics
rejects a whole label file with any coordinate outside ``[0, 1]`` after its own tolerance.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple
from xml.parsers import expat

from PIL import Image, UnidentifiedImageError

TOLERANCE = 0.01  # how far (as a fraction of the image) a box may overhang before it is an error
ROUNDING = 1e-6  # overhang from 6-decimal label text: left as written, so labels round-trip exactly
MIN_SIDE = 10  # Ultralytics drops images smaller than this (check_image asserts > 9 px)
EXIF_ORIENTATION = 0x0112
TRAINABLE = {"JPEG", "MPO", "PNG", "BMP", "WEBP", "TIFF"}  # Pillow format names Ultralytics reads
JPEG_END = b"\xff\xd9"


@dataclass(frozen=True)
class Box:
    """One box as the source gives it: centre and size, normalised (YOLO) or in pixels (COCO, VOC)."""

    name: str  # the source's class name
    xc: float
    yc: float
    w: float
    h: float
    where: str  # `file:line` (or `file: annotation id N`) for messages


@dataclass(frozen=True)
class ImageCheck:
    """What :func:`check_image` learnt about one file."""

    digest: str  # sha256 of the file's bytes ("" when unreadable)
    width: int  # displayed size, after EXIF orientation
    height: int
    problem: str | None  # why the image cannot be used, or None


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes: the identity dedupe compares ("" for an unreadable file: it matches nothing)."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return ""


def check_image(path: str | Path) -> ImageCheck:
    """Read, hash and fully decode one image; never raises for a bad file (the problem says why).

    Args:
        path: the image file.

    Returns:
        Its digest, displayed size and the problem (None when it is fine to train on).
    """
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        return ImageCheck("", 0, 0, f"cannot be read ({err.strerror})")
    digest = hashlib.sha256(data).hexdigest()
    if not data:
        return ImageCheck(digest, 0, 0, "empty file (0 bytes); replace it or delete it and its label")
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt, (width, height) = image.format, image.size
            if fmt == "JPEG":
                image.draft(image.mode, (1, 1))  # 1/8-scale IDCT; the entropy-coded data is still decoded in full
            image.load()
            orientation = image.getexif().get(EXIF_ORIENTATION)
    except (UnidentifiedImageError, ImportError):  # ImportError: an opener Ultralytics registers (HEIF) probing without its module
        return ImageCheck(digest, 0, 0, "not an image (Pillow recognises no image format in it)")
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError... on bad input
        return ImageCheck(digest, 0, 0, f"cannot be decoded, truncated or corrupt ({err}); re-export or delete it")
    if orientation in (5, 6, 7, 8):  # rotated by 90 or 270 degrees when displayed
        width, height = height, width
    if fmt not in TRAINABLE:
        return ImageCheck(digest, width, height, f"is a {fmt} file; Ultralytics reads {', '.join(sorted(TRAINABLE))}: convert it")
    if min(width, height) < MIN_SIDE:
        return ImageCheck(digest, width, height, f"is {width}x{height} px; Ultralytics drops images under {MIN_SIDE} px a side")
    if fmt == "JPEG" and not data.endswith(JPEG_END):
        # Ultralytics "restores" such a JPEG by re-encoding it in place, inside data/organized: that would
        # change a DVC output behind DVC's back (and the pixels), so it is refused here instead.
        return ImageCheck(
            digest, width, height, "JPEG does not end with its end-of-image marker (truncated, or bytes after the image); re-save it"
        )
    return ImageCheck(digest, width, height, None)


def parse_yolo_label(path: Path, names: Mapping[int, str]) -> tuple[list[Box], list[str], int]:
    """Read a YOLO label file into normalised boxes.

    Args:
        path: the ``.txt`` label file.
        names: the dataset's class id -> name (from its data.yaml).

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
            problems.append(f"{where}: class id {parts[0]} is not one of 0..{max(names)} (the classes in the dataset's data.yaml)")
            continue
        boxes.append(Box(names[int(cls)], xc, yc, w, h, where))
    return boxes, problems, polygons


def coco_box(annotation: dict, categories: Mapping[object, str], where: str) -> Box | str:
    """One COCO annotation (``bbox`` = ``[x, y, w, h]`` in pixels) as a :class:`Box`, or the problem with it."""
    bbox, category = annotation.get("bbox"), annotation.get("category_id")
    if category not in categories:
        return f"{where}: category_id {category} is not in `categories`"
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(type(v) in (int, float) for v in bbox)):
        return f"{where}: bbox {bbox!r} is not 4 numbers [x, y, w, h]"
    x, y, w, h = map(float, bbox)
    return Box(categories[category], x + w / 2, y + h / 2, w, h, where)


def read_voc_xml(path: Path) -> tuple[dict[str, str], list[Box], list[str]]:
    """A Pascal VOC annotation: its ``<filename>``/``<size>`` fields, boxes in pixels, and problems as ``file:line``.

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
            x0, y0, x1, y1 = map(float, coords)
        except (TypeError, ValueError):
            problems.append(f"{where}: <object> needs <bndbox> with numbers xmin ymin xmax ymax, got {coords}")
            continue
        if not obj.get("name"):
            problems.append(f"{where}: <object> has no <name>")
            continue
        # as Ultralytics' VOC.yaml converts: VOC pixel indices are 1-based, hence the -1 on the centre
        boxes.append(Box(obj["name"], (x0 + x1) / 2 - 1, (y0 + y1) / 2 - 1, x1 - x0, y1 - y0, where))
    return info, boxes, problems


def place_boxes(
    boxes: list[Box], pixel_size: tuple[int, int] | None
) -> tuple[list[tuple[str, float, float, float, float]], list[str], int]:
    """Normalise (when in pixels), check and clip boxes to the image.

    Args:
        boxes: the source's boxes.
        pixel_size: the image's displayed ``(width, height)`` when the boxes are in pixels, else None.

    Returns:
        ``(name, xc, yc, w, h)`` normalised and inside ``[0, 1]``, the problems, and how many were clipped.
    """
    placed, problems, clipped = [], [], 0
    for box in boxes:
        xc, yc, w, h = box.xc, box.yc, box.w, box.h
        if pixel_size:
            xc, w, yc, h = xc / pixel_size[0], w / pixel_size[0], yc / pixel_size[1], h / pixel_size[1]
        unit = "px" if pixel_size else "normalised"
        shown = f"(xc yc w h, {unit}) {box.xc:.6g} {box.yc:.6g} {box.w:.6g} {box.h:.6g}"
        if not all(map(math.isfinite, (xc, yc, w, h))):
            problems.append(f"{box.where}: box {shown} holds a value that is not a finite number")
            continue
        if w <= 0 or h <= 0:
            problems.append(f"{box.where}: box {shown} has zero size")
            continue
        x0, y0, x1, y1 = xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2
        if min(x0, y0) < -TOLERANCE or max(x1, y1) > 1 + TOLERANCE:
            problems.append(f"{box.where}: box {shown} lies outside the image (by more than {TOLERANCE:g} of its size)")
            continue
        if min(x0, y0) < -ROUNDING or max(x1, y1) > 1 + ROUNDING:
            x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, 1.0), min(y1, 1.0)
            if x1 <= x0 or y1 <= y0:
                problems.append(f"{box.where}: box {shown} lies in the margin outside the image")
                continue
            xc, yc, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
            clipped += 1
        placed.append((box.name, xc, yc, w, h))
    return placed, problems, clipped


class Judged(NamedTuple):
    """Everything :func:`judge_item` learnt about one image and its annotation."""

    check: ImageCheck
    boxes: list[tuple[str, float, float, float, float]]  # (name, xc, yc, w, h), normalised and inside the image
    problems: list[str]  # as ``file[:line]: reason``; any problem makes the image unusable
    polygons: int  # polygon lines turned into boxes
    clipped: int  # boxes clipped to the image


def judge_item(
    image: str,
    label: str | None,
    boxes: list[Box],
    problems: list[str],
    declared_size: tuple[int, int] | None,
    *,
    names: Mapping[int, str],
    pixels: bool,
) -> Judged:
    """Decode-check one image, read its YOLO label (if any) and place its boxes: the per-image work of organize.

    Plain arguments, not a :class:`~stagetrain.data.formats.Item`: this runs in worker processes, and
    pickling ``Path`` objects cost more than a tenth of the work per image.

    Args:
        image: the image file.
        label: its YOLO label file, or None (COCO, VOC, or a background image).
        boxes: the boxes a COCO or VOC reader found for it, in pixels.
        problems: what the reader found wrong with its annotation.
        declared_size: ``(w, h)`` the annotation states, or None.
        names: the YOLO class id -> name (unused for COCO and VOC, whose boxes come named).
        pixels: True when ``boxes`` are in pixels and need the image's displayed size.
    """
    check = check_image(image)
    parsed, found, polygons = parse_yolo_label(Path(label), names) if label else ([], [], 0)
    boxes, problems = boxes + parsed, problems + found
    if check.problem:
        return Judged(check, [], [f"{image}: {check.problem}", *problems], polygons, 0)
    size = (check.width, check.height)
    if declared_size and all(declared_size) and declared_size != size:
        problems.append(
            f"{image}: its annotation is for a {declared_size[0]}x{declared_size[1]} image but it displays as {size[0]}x{size[1]} "
            "(after EXIF orientation); the boxes would miss: re-export the annotations"
        )
    placed, box_problems, clipped = place_boxes(boxes, size if pixels else None)
    return Judged(check, placed, problems + box_problems, polygons, clipped)
