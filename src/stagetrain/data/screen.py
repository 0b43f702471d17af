"""From judged images to usable samples: class names mapped to canonical ids, duplicate boxes collapsed.

Nothing leaves silently: a bad image or annotation becomes a problem (``on_bad`` decides), a box of a
class mapped to ``null`` is counted per class, and a box that repeats another box of its image (same
canonical class and the same label row once written) is collapsed and listed: Ultralytics would drop
the copies at train time without a word, and the report's counts would not match what it trains on.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from stagetrain.config import DatasetSpec
from stagetrain.data import validate
from stagetrain.data.formats import Source
from stagetrain.data.splits import Sample
from stagetrain.data.write import label_line
from stagetrain.errors import UserError


@dataclass
class Screened:
    """What :func:`screen` made of a source's judged images."""

    samples: list[Sample] = field(default_factory=list)  # usable images with canonical boxes
    problems: list[str] = field(default_factory=list)  # every problem, as ``file[:line]: reason``
    left_out: list[str] = field(default_factory=list)  # what became of an image whose annotation has problems
    dropped: Counter = field(default_factory=Counter)  # source class name -> boxes dropped by `class_map: null`
    duplicates: list[dict] = field(default_factory=list)  # collapsed duplicate boxes
    clipped: list[dict] = field(default_factory=list)  # boxes clipped to their image by more than rounding
    polygons: int = 0  # polygon label lines turned into boxes


def used_names(source: Source, judged: list[validate.Judged]) -> list[str]:
    """The class names the boxes use, in the source's order (names the source never declared last, sorted)."""
    used = {box[0] for result in judged for box in result.boxes}
    return [n for n in source.names if n in used] + sorted(used - set(source.names))


def class_mapping(names: list[str], spec: DatasetSpec, classes: tuple[str, ...], where: str) -> dict[str, int | None]:
    """Map the dataset's class names to canonical ids (``None`` = dropped via ``class_map: null``).

    Raises:
        UserError: listing every name that is neither canonical nor in ``class_map``.
    """
    mapping, unmapped = {}, []
    for name in names:
        target = spec.class_map.get(name, name)
        if target is None or target in classes:
            mapping[name] = None if target is None else classes.index(target)
        else:
            unmapped.append(name)
    if unmapped:
        raise UserError(
            f"{where}: classes {unmapped} are neither canonical nor mapped; add them to "
            f"`datasets.{spec.name}.class_map` (name -> one of {list(classes)}, or null to drop)"
        )
    return mapping


def _canonical_boxes(image: str, placed: list[validate.Placed], mapping: dict, classes: tuple[str, ...], out: Screened) -> list:
    """One image's boxes with canonical ids, without the ones dropped by ``class_map`` or repeating an earlier one."""
    boxes, seen = [], {}
    for name, xc, yc, w, h, where in placed:
        class_id = mapping[name]
        if class_id is None:
            out.dropped[name] += 1
            continue
        row = label_line(class_id, xc, yc, w, h)
        if row not in seen:
            seen[row] = (name, where)
            boxes.append((class_id, xc, yc, w, h))
            continue
        kept_name, kept_where = seen[row]
        reason = "same class and coordinates as another box of this image"
        if kept_name != name:
            reason = f"`{name}` and `{kept_name}` both map to {classes[class_id]} (class_map), at the same coordinates"
        entry = {"file": image, "where": where, "class": classes[class_id], "box": row, "duplicate_of": kept_where, "reason": reason}
        out.duplicates.append(entry)
    return boxes


def screen(source: Source, judged: list[validate.Judged], mapping: dict, classes: tuple[str, ...]) -> Screened:
    """The usable samples (boxes mapped to canonical ids, duplicates collapsed), every problem, and what was changed."""
    out = Screened(problems=list(source.problems), polygons=sum(result.polygons for result in judged))
    for item, result in zip(source.items, judged, strict=True):
        if result.problems:
            out.problems += result.problems
            if not result.check.problem:  # an image problem already names the image; say what became of it otherwise
                out.left_out.append(f"{item.image}: left out because its annotation has the problems listed")
            continue
        out.clipped += result.clipped
        boxes = _canonical_boxes(str(item.image), result.boxes, mapping, classes, out)
        out.samples.append(Sample(item.image, item.rel, item.split, result.check.digest, boxes, result.check.phash))
    return out
