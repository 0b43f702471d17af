"""The first difference between two files of one type, and what was left out of the comparison.

JSON key by key, text line by line (markdown tables less their timing columns), checkpoints field
by field and tensor element by element, ONNX models less two known exceptions; any other file byte
by byte. Left out, and named in the result:

* wall-clock timings (``seconds``, ``*_ms``, ``latency*`` keys in JSON, such columns in markdown
  tables): they measure the machine, not the result;
* known exceptions, each matched narrowly and named with its reason (``ONNX_KNOWN``): the export
  date Ultralytics writes into ONNX metadata, and onnxslim's shape annotations (``value_info``),
  which depend on Python's per-process hash seed; the rest of the ONNX file is compared, and so is
  everything that quotes it but its size (``bytes`` beside its ``file`` in JSON, a size column in
  its row of a markdown table).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# any component of a flattened key (``seconds``, ``onnx_latency_ratio_640``), or a table header
TIMING_KEY = re.compile(r"(^|_)seconds$|_ms$|_ms_|(^|_)latency")
SIZE_HEADER = re.compile(r"^(bytes|size|[kmg]i?b)$", re.IGNORECASE)  # a markdown column quoting a file's size
TEXT_SUFFIXES = {".yaml", ".yml", ".txt", ".tsv", ".csv", ".md"}


@dataclass
class FileDiff:
    """One file compared between the two runs: the first differing value (None: identical once
    the exclusions are left out) and what was left out of the comparison, and why."""

    path: str
    first: str | None = None
    excluded: list[str] = field(default_factory=list)  # wall-clock timings
    known: list[str] = field(default_factory=list)  # known exceptions, each with its reason


def _short(value: Any, limit: int = 100) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists by index)."""
    if isinstance(data, dict):
        items = data.items()
    elif isinstance(data, list):
        items = enumerate(data)
    else:
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def is_timing(key: str) -> bool:
    """``seconds``, ``stage3.inference_ms_per_image``, ``onnx.latency_ms.640``, ``onnx_latency_ratio_640``, a ``latency ms`` column."""
    return any(TIMING_KEY.search(part.strip()) for part in key.split("."))


def diff_json(a: Path, b: Path, rel: str, known_files: frozenset[str] = frozenset()) -> FileDiff:
    """Values key by key, wall-clock timings excluded; so is a ``bytes`` key whose sibling ``file``
    is in ``known_files`` (files that differ only by a known exception, so their size may too)."""
    va, vb = (flatten(json.loads(p.read_text())) for p in (a, b))
    keys = list(va) + [k for k in vb if k not in va]
    result = FileDiff(rel, excluded=[k for k in keys if is_timing(k)])
    for key in keys:
        parent = key.rpartition(".")[0]
        sized = va.get(f"{parent}.file" if parent else "file")
        if key.rpartition(".")[2] == "bytes" and sized in known_files and va.get(key) != vb.get(key):
            result.known.append(f"{key}: the size of {sized}, a known exception")
            continue
        if key in result.excluded or va.get(key, "<missing>") == vb.get(key, "<missing>"):
            continue
        result.first = f"{key}: {_short(va.get(key, '<missing>'))} vs {_short(vb.get(key, '<missing>'))}"
        break
    return result


def _table_lines(text: str, excluded: set[str], known: set[str], known_files: frozenset[str]) -> list[str]:
    """Lines of a markdown file with the timing columns of its tables cut out, and the size columns
    of rows that name a file in ``known_files``."""
    lines: list[str] = []
    header: list[str] | None = None  # None: not inside a table
    for line in text.splitlines():
        if not line.startswith("|"):
            lines.append(line)
            header = None
            continue
        cells = line.strip().strip("|").split("|")
        if header is None:  # a table's first row is its header
            header = [cell.strip() for cell in cells]
            excluded.update(f"column '{name}'" for name in header if is_timing(name))
        drop = {i for i, name in enumerate(header) if is_timing(name)}
        for file in (f for f in known_files if f in line):
            sizes = {i for i, name in enumerate(header) if SIZE_HEADER.match(name)}
            known.update(f"column '{header[i]}' of the row for {file}: the size of a known exception" for i in sizes)
            drop |= sizes
        lines.append("|".join(c for i, c in enumerate(cells) if i not in drop))
    return lines


def diff_text(a: Path, b: Path, rel: str, known_files: frozenset[str] = frozenset()) -> FileDiff:
    excluded: set[str] = set()
    known: set[str] = set()
    la, lb = (
        (_table_lines(p.read_text(), excluded, known, known_files) if p.suffix == ".md" else p.read_text().splitlines()) for p in (a, b)
    )
    result = FileDiff(rel, excluded=sorted(excluded), known=sorted(known))
    for n, (x, y) in enumerate(zip(la, lb), 1):
        if x != y:
            result.first = f"line {n}: {_short(x)} vs {_short(y)}"
            return result
    if len(la) != len(lb):
        result.first = f"{len(la)} lines vs {len(lb)} lines"
    return result


def diff_bytes(a: Path, b: Path, rel: str) -> FileDiff:
    da, db = a.read_bytes(), b.read_bytes()
    at = next((i for i, (x, y) in enumerate(zip(da, db)) if x != y), min(len(da), len(db)))
    return FileDiff(rel, first=None if da == db else f"byte {at} of {len(da)} vs {len(db)} bytes")


def _walk(a: Any, b: Any, where: str, seen: set[tuple[int, int]]) -> str | None:
    """The first difference between two unpickled objects: tensors element-wise, objects by ``vars``."""
    import numpy as np
    import torch

    if type(a) is not type(b):
        return f"{where}: {type(a).__name__} vs {type(b).__name__}"
    if torch.is_tensor(a) or isinstance(a, np.ndarray):
        x, y = (torch.from_numpy(v.copy()) if isinstance(v, np.ndarray) else v for v in (a, b))
        if x.shape != y.shape or x.dtype != y.dtype:
            return f"{where}: {x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}"
        differ = x != y
        if x.is_floating_point():
            differ &= ~(x.isnan() & y.isnan())
        if differ.any():
            index = tuple(int(i) for i in differ.nonzero()[0])
            return f"{where}{list(index)}: {x[index].item()!r} vs {y[index].item()!r}"
        return None
    if isinstance(a, (dict, list, tuple)) or (hasattr(a, "__dict__") and not isinstance(a, type)):
        if (id(a), id(b)) in seen:  # shared and cyclic references: compare once
            return None
        seen.add((id(a), id(b)))
    if isinstance(a, dict):
        for key in list(a) + [k for k in b if k not in a]:
            if key not in a or key not in b:
                return f"{where}.{key}: {'<missing>' if key not in a else '...'} vs {'<missing>' if key not in b else '...'}"
            inner = where if key in ("_modules", "_parameters", "_buffers") else f"{where}.{key}" if where else str(key)
            if found := _walk(a[key], b[key], inner, seen):
                return found
        return None
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return f"{where}: {len(a)} items vs {len(b)}"
        return next((f for i, (x, y) in enumerate(zip(a, b)) if (f := _walk(x, y, f"{where}[{i}]", seen))), None)
    if hasattr(a, "__dict__") and not isinstance(a, type):
        return _walk(vars(a), vars(b), where, seen)
    if a != b and not (isinstance(a, float) and math.isnan(a) and math.isnan(b)):
        return f"{where}: {_short(a)} vs {_short(b)}"
    return None


def diff_checkpoint(a: Path, b: Path, rel: str) -> FileDiff:
    """Every field and tensor of two checkpoints; the bytes only when those are all equal."""
    if a.read_bytes() == b.read_bytes():
        return FileDiff(rel)
    from stagetrain.train.checkpoint import read

    first = _walk(read(a), read(b), "", set())
    return FileDiff(rel, first=first or f"same fields and tensors, but {diff_bytes(a, b, rel).first} (serialisation)")


ONNX_KNOWN = {
    "date": "metadata_props 'date': the export time, written by Ultralytics' exporter",
    "value_info": "graph.value_info: shape annotations of onnxslim's shape inference, whose order and extent depend on "
    "Python's hash seed (PYTHONHASHSEED differs per process)",
}


def diff_onnx(a: Path, b: Path, rel: str) -> FileDiff:
    """ONNX models less the known exceptions: metadata, initializers, nodes, then every other field."""
    import onnx
    from onnx import numpy_helper

    ma, mb = onnx.load(str(a)), onnx.load(str(b))
    result = FileDiff(rel)
    dates = [[p for p in model.metadata_props if p.key == "date"] for model in (ma, mb)]
    if [p.value for p in dates[0]] != [p.value for p in dates[1]]:
        result.known.append(ONNX_KNOWN["date"])
    for model, props in zip((ma, mb), dates):
        for prop in props:
            model.metadata_props.remove(prop)
    if ma.graph.value_info != mb.graph.value_info:
        result.known.append(ONNX_KNOWN["value_info"])
        for model in (ma, mb):
            del model.graph.value_info[:]
    if ma.SerializeToString() == mb.SerializeToString():
        return result
    props_a, props_b = ({p.key: p.value for p in m.metadata_props} for m in (ma, mb))
    for key in list(props_a) + [k for k in props_b if k not in props_a]:
        if props_a.get(key) != props_b.get(key):
            result.first = f"metadata_props '{key}': {_short(props_a.get(key))} vs {_short(props_b.get(key))}"
            return result
    inits_a, inits_b = ({t.name: t for t in m.graph.initializer} for m in (ma, mb))
    for name in list(inits_a) + [n for n in inits_b if n not in inits_a]:
        if name not in inits_a or name not in inits_b:
            result.first = f"initializer {name}: only in run {1 if name in inits_a else 2}"
            return result
        x, y = numpy_helper.to_array(inits_a[name]).copy(), numpy_helper.to_array(inits_b[name]).copy()
        if found := _walk(x, y, f"initializer {name}", set()):
            result.first = found
            return result
    for i, (x, y) in enumerate(zip(ma.graph.node, mb.graph.node)):
        if x != y:
            result.first = f"node {i}: {x.op_type} {x.name!r} vs {y.op_type} {y.name!r}"
            return result
    fields = [f"graph.{f.name}" for f in ma.graph.DESCRIPTOR.fields if getattr(ma.graph, f.name) != getattr(mb.graph, f.name)]
    fields += [f.name for f in ma.DESCRIPTOR.fields if f.name != "graph" and getattr(ma, f.name) != getattr(mb, f.name)]
    result.first = f"{', '.join(fields) or 'serialisation'} differs (initializers and nodes are identical)"
    return result


def diff_file(a: Path, b: Path, rel: str, known_files: frozenset[str] = frozenset()) -> FileDiff:
    """Dispatch on the file type; a file present in one run only is a difference."""
    if not (a.is_file() and b.is_file()):
        return FileDiff(
            rel, first=f"{'present' if a.is_file() else 'missing'} in run 1, {'present' if b.is_file() else 'missing'} in run 2"
        )
    if a.suffix == ".json":
        return diff_json(a, b, rel, known_files)
    if a.suffix in TEXT_SUFFIXES:
        return diff_text(a, b, rel, known_files)
    return {".pt": diff_checkpoint, ".onnx": diff_onnx}.get(a.suffix, diff_bytes)(a, b, rel)
