"""Readers for the raw layouts organize accepts, one module per format, all reduced to one list of :class:`Item`.

* :mod:`~stagetrain.data.formats.yolo`: YOLO and Roboflow's YOLO export, names from any dataset yaml;
* :mod:`~stagetrain.data.formats.coco`: COCO JSON (``bbox`` in pixels);
* :mod:`~stagetrain.data.formats.voc`: Pascal VOC XML (devkit convention: 1-based, inclusive).

Which reader runs: the ``format`` that download wrote into ``source.json`` (the dataset's ``format:``
option), else the one the files show. A declared format whose files are absent while another
format's are present is an error that names the format to declare. A source's own split comes
from folder names (``valid`` -> ``val``, ``train2017`` -> ``train``). A top-level ``pool/`` folder
holds unlabelled images: no reader sees it (nor does format detection); its images come back as
``Source.pool``. Files are located here; :mod:`stagetrain.data.validate` decodes the images and
judges the boxes.
"""

from __future__ import annotations

import json
from pathlib import Path

from stagetrain.data.formats import coco, voc, yolo
from stagetrain.data.formats.common import IMAGE_SUFFIXES, POOL_DIR, Box, Item, Source, in_pool, is_image, split_of, walk_files
from stagetrain.errors import UserError

__all__ = [
    "FORMATS",
    "IMAGE_SUFFIXES",
    "POOL_DIR",
    "SOURCE_FILE",
    "Box",
    "Item",
    "Source",
    "declared_format",
    "detect",
    "evidence",
    "in_pool",
    "is_image",
    "read",
    "split_of",
    "walk_files",
]

FORMATS = ("yolo", "coco", "voc")
FORMAT_ALIASES = {"roboflow": "yolo", **{f: f for f in FORMATS}}  # source.json's `format` -> reader (yolov8... -> yolo)
SOURCE_FILE = "source.json"  # written by download: {"kind": ..., "format": ...}
READERS = {"yolo": yolo.read, "coco": coco.read, "voc": voc.read}
LOOKS_LIKE = {"yolo": "a YOLO dataset", "coco": "a COCO dataset", "voc": "a Pascal VOC dataset"}
READS = {
    "yolo": "a YOLO dataset (a dataset yaml or classes.txt, labels/)",
    "coco": "COCO JSON (annotations/*.json or _annotations.coco.json)",
    "voc": "Pascal VOC XML",
}


def _source_json(raw_dir: Path) -> dict:
    path = raw_dir / SOURCE_FILE
    if not path.exists():
        return {}  # synthetic and hand-made raw folders carry no source.json
    try:
        fields = json.loads(path.read_text())
        return {"kind": str(fields.get("kind", "")), "format": str(fields.get("format", "auto")).lower()}
    except (ValueError, AttributeError) as err:
        raise UserError(f"{path}: not a JSON object ({err}); rerun `dvc repro download@<dataset>`") from None


def declared_format(raw_dir: Path) -> str:
    """The reader ``source.json``'s format names (``auto`` when there is none)."""
    fmt = _source_json(raw_dir).get("format", "auto")
    if fmt != "auto" and fmt not in FORMAT_ALIASES and not fmt.startswith("yolo"):
        raise UserError(f"{raw_dir / SOURCE_FILE}: format {fmt!r} is not one organize reads; use auto, roboflow, {', '.join(FORMATS)}")
    return "auto" if fmt == "auto" else FORMAT_ALIASES.get(fmt, "yolo")


def evidence(raw_dir: Path, files: list[str]) -> dict[str, list[str]]:
    """Per format, the files that make ``raw_dir`` look like it (empty lists for the formats it does not look like)."""
    return {"coco": coco.evidence(files), "voc": voc.evidence(files), "yolo": yolo.evidence(raw_dir, files)}


def _format_key(raw_dir: Path, dataset: str | None, fmt: str) -> str:
    """``datasets.<name>.<kind>.format: <fmt>`` as the user would write it in params.yaml."""
    kind = _source_json(raw_dir).get("kind")
    value = "yolov8" if kind == "roboflow" and fmt == "yolo" else fmt  # the Roboflow SDK names its YOLO exports by version
    return f"datasets.{dataset or '<dataset>'}.{kind if kind in ('local', 'roboflow') else 'local'}.format: {value}"


def detect(raw_dir: Path, files: list[str], dataset: str | None = None) -> str:
    """Tell the layout from the files: COCO JSON, VOC XML or YOLO names/labels, exactly one of them."""
    found = {fmt: rels for fmt, rels in evidence(raw_dir, files).items() if rels}
    if len(found) == 1:
        return next(iter(found))
    seen = "; ".join(f"{fmt}: {raw_dir / rels[0]}" for fmt, rels in found.items()) or "no dataset yaml, labels/, COCO JSON or VOC XML"
    raise UserError(
        f"{raw_dir}: cannot tell the dataset's format ({seen}); name it with the dataset's `format:` option "
        f"({', '.join(FORMATS)}), e.g. `{_format_key(raw_dir, dataset, 'coco')}`"
    )


def _check_declared(raw_dir: Path, files: list[str], fmt: str, dataset: str | None) -> None:
    """A declared format whose files are absent while another format's are present: say which format to declare."""
    found = {other: rels for other, rels in evidence(raw_dir, files).items() if rels}
    if fmt in found or not found:
        return
    other, rels = next(iter(found.items()))
    declared, kind = _source_json(raw_dir).get("format", fmt), _source_json(raw_dir).get("kind")
    reads = "a Roboflow YOLO export (data.yaml, <split>/labels/)" if declared == "roboflow" else READS[fmt]
    raise UserError(
        f"{raw_dir / SOURCE_FILE}: the dataset is declared `format: {declared}`, which reads {reads}, but {raw_dir} holds "
        f"{LOOKS_LIKE[other]} ({raw_dir / rels[0]}) and no {fmt.upper()} files; set `{_format_key(raw_dir, dataset, other)}`"
        f"{'' if kind == 'roboflow' else ' (or `auto`)'} in params.yaml and rerun `dvc repro`"
    )


def read(raw_dir: Path, fmt: str | None = None, dataset: str | None = None) -> Source:
    """Read ``raw_dir`` in format ``fmt`` (default: ``source.json``'s, else detected).

    Args:
        raw_dir: download's output folder for one dataset.
        fmt: ``yolo``, ``coco`` or ``voc``; None reads ``source.json`` and detects ``auto``.
        dataset: the dataset's key under ``datasets:``, for the params key that error messages name.

    Returns:
        The items (images with their annotation), the problems found while locating them, and the
        images of the unlabelled ``pool/`` folder.

    Raises:
        UserError: no images, an unreadable names or annotation file, an undetectable layout, or a
            declared format the files do not match.
    """
    if not raw_dir.is_dir():
        raise UserError(f"{raw_dir}: not found; run the dataset's download stage first (`dvc repro download@{dataset or '<dataset>'}`)")
    everything = walk_files(raw_dir)
    files = [f for f in everything if not in_pool(f)]
    if fmt is None:
        fmt = declared_format(raw_dir)
        if fmt == "auto":
            fmt = detect(raw_dir, files, dataset)
        else:
            _check_declared(raw_dir, files, fmt, dataset)
    images = [f for f in files if is_image(f)]
    if not images:
        where = f" outside {POOL_DIR}/ (its images are unlabelled)" if any(map(in_pool, everything)) else ""
        raise UserError(f"{raw_dir}: no images found{where} (looked for {', '.join(sorted(IMAGE_SUFFIXES))}, any case)")
    source = READERS[fmt](raw_dir, files, images)
    source.pool = [f for f in everything if in_pool(f) and is_image(f)]
    return source
