"""``datasets:``: where each dataset comes from (synthetic, Roboflow, a local folder or archive) and its class map."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from stagetrain.config.checks import at_least, check_keys, name, one_of, require, suggest, typed
from stagetrain.config.schema import DATASET_KINDS, SYNTHETIC_DOMAINS, SYNTHETIC_KNOBS, SYNTHETIC_SPLITS, DatasetSpec
from stagetrain.errors import UserError

# Formats organize reads. Roboflow's are its export ids (the SDK maps yolov5/yolov7 to yolov5pytorch/
# yolov7pytorch); a local source names its layout, or `auto` lets organize detect it.
ROBOFLOW_FORMATS = ("yolov8", "yolov5", "yolov7", "yolov9", "yolov11", "yolov12", "coco", "voc")
LOCAL_FORMATS = ("auto", "roboflow", "yolo", "coco", "voc")
MAX_SYNTHETIC_IMAGES = 1_000_000  # per split: render index ranges of splits are 2**32 apart, and a million is already hours


def _at_most(value: float, high: float, at: str, src: str, why: str) -> None:
    if value > high:
        raise UserError(f"{src}: `{at}` is {value!r}; use a value <= {high} ({why})")


def _synthetic(options: Mapping[str, Any], where: str, src: str) -> None:
    """Two exclusive forms: ``images: N`` (organize splits it by ratio) or fixed ``train/val/test[/pool]`` counts."""
    check_keys(options, ("images", *SYNTHETIC_SPLITS, "size", "domain", *SYNTHETIC_KNOBS), where, src)
    fixed = [key for key in SYNTHETIC_SPLITS if key in options]
    if "images" in options and fixed:
        raise UserError(
            f"{src}: `{where}` sets both `images` (one pool that organize splits by `organize.split`) and "
            f"{', '.join(f'`{k}`' for k in fixed)} (a fixed split the generator writes); keep one form"
        )
    if "images" not in options and not fixed:
        raise UserError(
            f"{src}: `{where}` needs image counts: `images: N` (organize splits them by `organize.split`) "
            "or `train: N, val: N, test: N` (a fixed split; optional `pool: N` unlabelled images)"
        )
    for key in ("images",) if "images" in options else SYNTHETIC_SPLITS:
        if key == "pool" and key not in options:
            continue
        count = require(options, key, int, where, src)
        at_least(count, 0 if key == "pool" else 1, f"{where}.{key}", src)
        _at_most(count, MAX_SYNTHETIC_IMAGES, f"{where}.{key}", src, "images per split")
    at_least(require(options, "size", int, where, src), 16, f"{where}.size", src, "image side in px")
    one_of(require(options, "domain", str, where, src), SYNTHETIC_DOMAINS, f"{where}.domain", src)
    if "cones" in options:
        cones = typed(options["cones"], int, f"{where}.cones", src)
        at_least(cones, 1, f"{where}.cones", src, "at most this many cones per image")
        _at_most(cones, 100, f"{where}.cones", src, "at most this many cones per image")
    if "distractors" in options:
        distractors = typed(options["distractors"], int, f"{where}.distractors", src)
        at_least(distractors, 0, f"{where}.distractors", src, "at most this many distractors per image")
        _at_most(distractors, 50, f"{where}.distractors", src, "at most this many distractors per image")
    if "min_visible" in options:
        visible = typed(options["min_visible"], float, f"{where}.min_visible", src)
        at_least(visible, 0, f"{where}.min_visible", src, "visible fraction of a cone below which it is left out", strict=True)
        _at_most(visible, 1, f"{where}.min_visible", src, "a fraction of the cone's silhouette")


def _roboflow(options: Mapping[str, Any], where: str, src: str) -> None:
    check_keys(options, ("workspace", "project", "version", "format", "max_gib"), where, src)
    for key in ("workspace", "project"):
        slug = require(options, key, str, where, src)
        if not slug.strip() or "/" in slug:
            raise UserError(
                f"{src}: `{where}.{key}` is {slug!r}; use the slug in the dataset's URL app.roboflow.com/<workspace>/<project>/<version>"
            )
    if require(options, "version", int, where, src) < 1:
        raise UserError(f"{src}: `{where}.version` must be >= 1 (the number at the end of the dataset's Roboflow URL)")


def _local(options: Mapping[str, Any], where: str, src: str) -> None:
    check_keys(options, ("path", "format", "max_gib"), where, src)
    if not require(options, "path", str, where, src).strip():
        raise UserError(f"{src}: `{where}.path` is empty; name a dataset folder or a .zip/.tar.gz/.tgz/.tar file")


def _annotations(options: Mapping[str, Any], where: str, src: str) -> None:
    """A returned annotation package (data/annotation.py): the package select@<round> wrote, and its labels."""
    check_keys(options, ("package", "labels"), where, src)
    if not require(options, "package", str, where, src).strip():
        raise UserError(f"{src}: `{where}.package` is empty; name the package.zip a select@<round> stage wrote")
    if not require(options, "labels", str, where, src).strip():
        raise UserError(
            f"{src}: `{where}.labels` is empty; name the returned COCO JSON, a folder of YOLO .txt labels, "
            "or `oracle` (synthetic pools only: tests and benchmarks)"
        )


def _downloaded(options: Mapping[str, Any], kind: str, where: str, src: str) -> dict[str, Any]:
    """Options of a dataset organize reads from files: its format (defaulted) and unpacked-size cap."""
    formats = ROBOFLOW_FORMATS if kind == "roboflow" else LOCAL_FORMATS
    fmt = typed(options.get("format", formats[0]), str, f"{where}.format", src)
    if fmt not in formats:
        hint = suggest(fmt, formats) or "use one of: " + ", ".join(formats)
        raise UserError(f"{src}: `{where}.format` is {fmt!r}; {hint}")
    if "max_gib" in options:
        at_least(
            typed(options["max_gib"], float, f"{where}.max_gib", src), 0, f"{where}.max_gib", src, "cap on the unpacked size, in GiB", True
        )
    return {**options, "format": fmt}


def class_map(raw: Any, classes: tuple[str, ...], where: str, src: str) -> dict[str, str | None]:
    """``dataset name -> canonical name or None``; every target must be a canonical class (or null to drop)."""
    out = {}
    for key, target in typed(raw if raw is not None else {}, dict, where, src).items():
        if target is not None and (not isinstance(target, str) or target not in classes):
            hint = suggest(target, classes) if isinstance(target, str) else None
            raise UserError(
                f"{src}: `{where}.{key}` maps to {target!r}, which is not a canonical class; "
                f"use one of {', '.join(classes)}, or null to drop the class" + (f"; {hint}" if hint else "")
            )
        out[str(key)] = target
    return out


def dataset(key: Any, raw: Any, classes: tuple[str, ...], src: str) -> DatasetSpec:
    path = f"datasets.{key}"
    dataset_name = name(key, path, src)
    raw = typed(raw, dict, path, src)
    check_keys(raw, ("kind", *DATASET_KINDS, "class_map"), path, src)
    kind = require(raw, "kind", str, path, src)
    one_of(kind, DATASET_KINDS, f"{path}.kind", src)
    options = require(raw, kind, dict, path, src)
    {"synthetic": _synthetic, "roboflow": _roboflow, "local": _local, "annotations": _annotations}[kind](options, f"{path}.{kind}", src)
    if kind in ("roboflow", "local"):
        options = _downloaded(options, kind, f"{path}.{kind}", src)
    mapping = class_map(raw.get("class_map"), classes, f"{path}.class_map", src)
    return DatasetSpec(dataset_name, kind, MappingProxyType(dict(options)), MappingProxyType(mapping))
