"""Judge raw inputs the way training will read them: every image decoded, every box placed inside it.

Images: read once, content-hashed (for dedupe) and decoded in full from memory. A JPEG is decoded
with libjpeg's 1/8 DCT scaling (``Image.draft``): every byte of entropy-coded data is still
decoded, so truncation and corruption raise as they would at full size, at 0.5-0.65x the cost
(measured in ``bench/organize.py``; the smaller figure for larger images); when near-duplicates are looked
for, at the smallest scale that keeps :data:`~stagetrain.data.near_dup.DRAFT` px a side, and the
perceptual hash is taken from that decode. Sizes are the *displayed*
size, after EXIF orientation, as Ultralytics' ``exif_size`` and OpenCV's reader see them. Files are
never rewritten.

Boxes (each format's reader in :mod:`stagetrain.data.formats` gives them) are normalised and placed
inside the image, by how far they overhang it:

* up to :data:`PIXEL_ROUNDING` (one pixel of the image): rounding, or a VOC exporter's 0-based
  corners read with the devkit's 1-based convention; clamped to the border and not reported
  (in YOLO text an overhang below :data:`ROUNDING` is left as written, so labels round-trip exactly);
* up to :data:`TOLERANCE` of the image (as Ultralytics allows): clipped to the border, counted and
  listed, because Ultralytics rejects a whole label file with a coordinate outside ``[0, 1]``;
* further: a problem (the box does not belong to this image).
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from PIL import Image, UnidentifiedImageError

from stagetrain.data import near_dup
from stagetrain.data.formats.common import Box
from stagetrain.data.formats.yolo import parse_label

__all__ = ["Box", "ImageCheck", "Judged", "check_image", "file_digest", "fingerprint", "judge_item", "place_boxes"]

TOLERANCE = 0.01  # how far (as a fraction of the image) a box may overhang before it is an error
PIXEL_ROUNDING = 1.0  # an overhang of at most this many pixels is rounding: clamped, not reported as clipped
ROUNDING = 1e-6  # overhang from 6-decimal label text: left as written, so labels round-trip exactly
MIN_SIDE = 10  # Ultralytics drops images smaller than this (check_image asserts > 9 px)
EXIF_ORIENTATION = 0x0112
TRAINABLE = {"JPEG", "MPO", "PNG", "BMP", "WEBP", "TIFF"}  # Pillow format names Ultralytics reads
JPEG_END = b"\xff\xd9"
Placed = tuple[str, float, float, float, float, str]  # (name, xc, yc, w, h, where), normalised and inside the image


@dataclass(frozen=True)
class ImageCheck:
    """What :func:`check_image` learnt about one file."""

    digest: str  # sha256 of the file's bytes ("" when unreadable)
    width: int  # displayed size, after EXIF orientation
    height: int
    problem: str | None  # why the image cannot be used, or None
    phash: bytes = b""  # perceptual hash (near_dup.BITS bits) when asked for and the image decodes; else empty


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes: the identity dedupe compares ("" for an unreadable file: it matches nothing)."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return ""


def fingerprint(path: str, phash: bool) -> tuple[str, bytes]:
    """Pool task: ``(sha256, perceptual hash)`` of another dataset's image (empty where unreadable or not asked for)."""
    if not phash:
        return file_digest(path), b""
    check = check_image(path, phash=True)
    return check.digest, check.phash


def check_image(path: str | Path, phash: bool = False) -> ImageCheck:
    """Read, hash and fully decode one image; never raises for a bad file (the problem says why).

    Args:
        path: the image file.
        phash: also compute its perceptual hash (:mod:`~stagetrain.data.near_dup`); a JPEG is then
            decoded at a larger DCT scale where the hash's thumbnail needs it (full size up to 255 px).

    Returns:
        Its digest, displayed size, the problem (None when it is fine to train on) and the hash.
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
            if fmt == "JPEG":  # a scaled IDCT (1/8 at most); the entropy-coded data is still decoded in full
                # (the hash's grey decode skips colour conversion: it costs what the 1/8 colour decode does)
                image.draft("L" if phash and image.mode == "RGB" else image.mode, (near_dup.DRAFT,) * 2 if phash else (1, 1))
            image.load()
            orientation = image.getexif().get(EXIF_ORIENTATION)
            hashed = near_dup.perceptual_hash(image, orientation) if phash else b""
    except (UnidentifiedImageError, ImportError):  # ImportError: an opener Ultralytics registers (HEIF) probing without its module
        return ImageCheck(digest, 0, 0, "not an image (Pillow recognises no image format in it)")
    except Exception as err:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError... on bad input
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
    return ImageCheck(digest, width, height, None, hashed)


def _overhang(x0: float, y0: float, x1: float, y1: float) -> tuple[float, float]:
    """How far (normalised) a box reaches past the image's left/right and top/bottom borders."""
    return max(-x0, x1 - 1, 0.0), max(-y0, y1 - 1, 0.0)


def place_boxes(boxes: list[Box], size: tuple[int, int], pixels: bool) -> tuple[list[Placed], list[str], list[dict]]:
    """Normalise (when in pixels), check and clip boxes to the image.

    Args:
        boxes: the source's boxes.
        size: the image's displayed ``(width, height)``.
        pixels: True when the boxes are in pixels (COCO, VOC), False when normalised (YOLO).

    Returns:
        ``(name, xc, yc, w, h, where)`` normalised and inside ``[0, 1]``, the problems, and one entry per
        box clipped by more than rounding (``where``, ``class``, ``box`` as given, ``clipped_to``).
    """
    placed, problems, clipped = [], [], []
    slack_x, slack_y = PIXEL_ROUNDING / size[0], PIXEL_ROUNDING / size[1]
    for box in boxes:
        xc, yc, w, h = box.xc, box.yc, box.w, box.h
        if pixels:
            xc, w, yc, h = xc / size[0], w / size[0], yc / size[1], h / size[1]
        shown = f"(xc yc w h, {'px' if pixels else 'normalised'}) {box.xc:.6g} {box.yc:.6g} {box.w:.6g} {box.h:.6g}"
        if not all(map(math.isfinite, (xc, yc, w, h))):
            problems.append(f"{box.where}: box {shown} holds a value that is not a finite number")
            continue
        if w <= 0 or h <= 0:
            problems.append(f"{box.where}: box {shown} has {'zero' if min(w, h) == 0 else 'negative'} size")
            continue
        x0, y0, x1, y1 = xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2
        over_x, over_y = _overhang(x0, y0, x1, y1)
        if over_x > max(TOLERANCE, slack_x) or over_y > max(TOLERANCE, slack_y):
            problems.append(f"{box.where}: box {shown} lies outside the image (by more than {TOLERANCE:g} of its size)")
            continue
        if max(over_x, over_y) > (0.0 if pixels else ROUNDING):
            x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, 1.0), min(y1, 1.0)
            if x1 <= x0 or y1 <= y0:
                problems.append(f"{box.where}: box {shown} lies in the margin outside the image")
                continue
            xc, yc, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
            if over_x > slack_x + 1e-12 or over_y > slack_y + 1e-12:  # 1e-12: the float error of the division above
                clipped.append({"where": box.where, "class": box.name, "box": shown, "clipped_to": f"{xc:.6f} {yc:.6f} {w:.6f} {h:.6f}"})
        placed.append((box.name, xc, yc, w, h, box.where))
    return placed, problems, clipped


class Judged(NamedTuple):
    """Everything :func:`judge_item` learnt about one image and its annotation."""

    check: ImageCheck
    boxes: list[Placed]  # (name, xc, yc, w, h, where), normalised and inside the image
    problems: list[str]  # as ``file[:line]: reason``; any problem makes the image unusable
    polygons: int  # polygon lines turned into boxes
    clipped: list[dict]  # boxes clipped to the image by more than rounding, each with its file


def judge_item(
    image: str,
    label: str | None,
    boxes: list[Box],
    problems: list[str],
    declared_size: tuple[int, int] | None,
    *,
    names: Mapping[int, str],
    pixels: bool,
    phash: bool = False,
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
        phash: also compute the image's perceptual hash (for the near-duplicate rule).
    """
    check = check_image(image, phash)
    parsed, found, polygons = parse_label(Path(label), names) if label else ([], [], 0)
    boxes, problems = boxes + parsed, problems + found
    if check.problem:
        return Judged(check, [], [f"{image}: {check.problem}", *problems], polygons, [])
    size = (check.width, check.height)
    if declared_size and all(declared_size) and declared_size != size:
        problems.append(
            f"{image}: its annotation is for a {declared_size[0]}x{declared_size[1]} image but it displays as {size[0]}x{size[1]} "
            "(after EXIF orientation); the boxes would miss: re-export the annotations"
        )
    placed, box_problems, clipped = place_boxes(boxes, size, pixels)
    return Judged(check, placed, problems + box_problems, polygons, [{"file": image, **entry} for entry in clipped])
