"""`make repro-check`: run the shrunk pipeline twice, in two fresh temp copies, and compare.

Every output hash in the two ``dvc.lock`` files and every value in every metric file must match.
Where an output differs, the check looks inside it (a directory's DVC listing, then the file:
JSON keys, text lines, checkpoint tensors and fields, ONNX graphs) and names the stage, the file
and the first differing value. Left out of the comparison, and printed on every run:

* wall-clock timings (``seconds``, ``*_ms``, ``latency*`` keys in JSON, ``seconds`` columns in
  markdown tables): they measure the machine, not the result;
* known exceptions, each matched narrowly and printed with its reason (``ONNX_KNOWN``): the export
  date Ultralytics writes into ONNX metadata, and onnxslim's shape annotations (``value_info``),
  which depend on Python's per-process hash seed; the rest of the ONNX file (metadata, weights,
  nodes, every other field) is compared, and so is everything that quotes it but its size
  (``bytes`` beside its ``file`` in JSON, a size column in its row of a markdown table).

Both copies come from one snapshot of the source, so edits made while the check runs cannot leak
into one run only. The shrinking (``shrink``) and the repo copy (``copy_repo``) are the ones the
tests use. One module for one concern; most of it is the per-file-type diffing.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
TIMING_KEY = re.compile(r"(^|_)seconds$|_ms$|_ms_|^latency")  # any component of a flattened key, or a table header
SIZE_HEADER = re.compile(r"^(bytes|size|[kmg]i?b)$", re.IGNORECASE)  # a markdown column quoting a file's size
TEXT_SUFFIXES = {".yaml", ".yml", ".txt", ".tsv", ".csv", ".md"}
GIT = ["git", "-c", "user.email=repro@stagetrain", "-c", "user.name=repro-check"]


def repo_params(root: Path = REPO) -> dict:
    return yaml.safe_load((root / "params.yaml").read_text())


def shrink(params: dict, images: int = 40, size: int = 96, imgsz: int = 64, epochs: int = 1) -> dict:
    """The repo's params made test-sized: same keys and DAG, tiny data and one epoch per stage."""
    params = copy.deepcopy(params)
    for dataset in params["datasets"].values():
        dataset["synthetic"].update(images=images, size=size)
    params["model"]["imgsz"] = imgsz
    params["train"].update(batch=8, device="cpu")
    for stage in params["stages"].values():
        stage["epochs"] = epochs
    params["export"]["formats"] = ["onnx", "engine"]
    return params


def copy_repo(target: Path, source: Path = REPO) -> Path:
    """Copy ``source``'s tracked and untracked-but-not-ignored files to ``target`` as a fresh git repo."""
    files = (
        subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=source, check=True, capture_output=True)
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, files):
        src = source / name
        if src.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            (target / name).write_bytes(src.read_bytes())
    subprocess.run(["git", "init", "-q"], cwd=target, check=True)
    subprocess.run([*GIT, "add", "-A"], cwd=target, check=True)
    subprocess.run([*GIT, "commit", "-qm", "copy"], cwd=target, check=True)
    return target


def shrunk_copy(target: Path, source: Path = REPO) -> Path:
    """``copy_repo`` plus shrunk params, committed: what the end-to-end tests and the check run."""
    copy_repo(target, source)
    (target / "params.yaml").write_text(yaml.safe_dump(shrink(repo_params(target)), sort_keys=False))
    subprocess.run([*GIT, "commit", "-qam", "shrink"], cwd=target, check=True)
    return target


def dvc_env() -> dict[str, str]:
    """DVC runs stage commands with ``python`` from PATH: put this interpreter's bin dir first."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # each stage puts its own src/ on the path
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def dvc(repo: Path, *args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """``dvc <args>`` in ``repo`` with this interpreter; raises with DVC's output when it fails and ``check``."""
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env or dvc_env(), capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"`dvc {' '.join(args)}` failed in {repo} (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


# ---- comparing one file ------------------------------------------------------------------------


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
    """``seconds``, ``stage3.inference_ms_per_image``, ``onnx.latency_ms.640``, a ``latency ms`` column."""
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


# ---- comparing two runs ------------------------------------------------------------------------


@dataclass
class Difference:
    stage: str
    path: str
    first: str

    def __str__(self) -> str:
        return f"{self.stage}: {self.path}: {self.first}"


@dataclass
class Comparison:
    differences: list[Difference] = field(default_factory=list)
    excluded: dict[str, list[str]] = field(default_factory=dict)  # file -> timings left out
    known: dict[str, list[str]] = field(default_factory=dict)  # file -> known exceptions left out, with reasons
    outputs: int = 0
    metric_values: int = 0


def lock_outs(root: Path) -> dict[str, dict[str, str]]:
    """``{stage: {out path: md5}}`` from ``dvc.lock``."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    return {stage: {o["path"]: o["md5"] for o in entry.get("outs", [])} for stage, entry in lock["stages"].items()}


def metric_files(root: Path) -> dict[str, str]:
    """``{metric file: stage}`` for every metric the pipeline declares."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {out.def_path: stage.name for stage in repo.index.stages for out in stage.outs if out.metric}


def _dir_listing(root: Path, md5: str) -> dict[str, str]:
    cached = root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    return {entry["relpath"]: entry["md5"] for entry in json.loads(cached.read_text())}


def _changed_files(run_a: Path, run_b: Path, path: str, md5_a: str, md5_b: str) -> Iterator[str]:
    """The files inside an output whose hashes differ (the output itself when it is a file)."""
    if not md5_a.endswith(".dir"):
        yield path
        return
    listing_a, listing_b = _dir_listing(run_a, md5_a), _dir_listing(run_b, md5_b)
    for rel in sorted(set(listing_a) | set(listing_b)):
        if listing_a.get(rel) != listing_b.get(rel):
            yield f"{path}/{rel}"


def compare(run_a: Path, run_b: Path) -> Comparison:
    """Every output hash of the two ``dvc.lock`` files, then every metric file, value by value."""
    result = Comparison()
    outs_a, outs_b = lock_outs(run_a), lock_outs(run_b)
    metrics = {path: stage for path, stage in metric_files(run_a).items() if stage in outs_a or stage in outs_b}  # stages that ran
    changed: list[tuple[str, str]] = []  # (stage, file) whose hashes differ
    known_files: set[str] = set()

    def record(stage: str, diff: FileDiff) -> None:
        if diff.excluded:
            result.excluded[diff.path] = diff.excluded
        if diff.known:
            result.known[diff.path] = diff.known
        if diff.first is not None:
            result.differences.append(Difference(stage, diff.path, diff.first))

    for stage in list(outs_a) + [s for s in outs_b if s not in outs_a]:
        a, b = outs_a.get(stage, {}), outs_b.get(stage, {})
        for path in list(a) + [p for p in b if p not in a]:
            result.outputs += 1
            if path not in a or path not in b:
                record(stage, FileDiff(path, first=f"output in {'run 2' if path not in a else 'run 1'} only"))
            elif a[path] != b[path]:
                files = [(stage, rel) for rel in _changed_files(run_a, run_b, path, a[path], b[path])]
                changed += files
                if not files:
                    record(stage, FileDiff(path, first=f"md5 {a[path]} vs {b[path]} with the same files"))
    for stage, rel in sorted(changed, key=lambda item: item[1].endswith((".json", ".md"))):  # last: they may quote sizes
        diff = diff_file(run_a / rel, run_b / rel, rel, frozenset(known_files))
        record(stage, diff)
        if diff.first is None and diff.known:
            known_files.add(rel)
    for path, stage in metrics.items():
        values = flatten(json.loads((run_a / path).read_text())) if (run_a / path).is_file() else {}
        result.metric_values += sum(1 for key in values if not is_timing(key))
        if path not in {rel for _, rel in changed}:  # same hash: identical, but list its timings all the same
            record(stage, diff_file(run_a / path, run_b / path, path))
    return result


def report(result: Comparison) -> str:
    lines = [f"compared {result.outputs} DVC outputs and {result.metric_values} metric values"]
    if result.excluded:
        lines.append("left out: wall-clock timings (they measure the machine, not the result)")
        lines += [f"  {path}: {', '.join(items)}" for path, items in sorted(result.excluded.items())]
    if result.known:
        lines.append("left out: known exceptions (each named with its reason; the rest of the file is compared)")
        lines += [f"  {path}: {item}" for path, items in sorted(result.known.items()) for item in items]
    if result.differences:
        lines.append(f"NOT REPRODUCIBLE: {len(result.differences)} difference(s) (stage: file: first differing value, run 1 vs run 2)")
        lines += [f"  {d}" for d in result.differences]
    else:
        left_out = " (apart from what is left out above)" if result.excluded or result.known else ""
        lines.append(f"reproducible: every output hash and every metric value is identical{left_out}")
    return "\n".join(lines)


def reproduce(target: Path, source: Path, targets: list[str]) -> float:
    """A fresh shrunk copy of ``source`` at ``target`` and ``dvc repro`` in it; returns the seconds it took."""
    shrunk_copy(target, source)
    env = {k: v for k, v in dvc_env().items() if k != "PYTHONHASHSEED"}  # a fresh hash seed per process, as users get
    started = time.perf_counter()
    dvc(target, "repro", *targets, env=env)
    return time.perf_counter() - started


def check(workdir: Path, source: Path = REPO, targets: list[str] | None = None) -> Comparison:
    """Snapshot ``source`` once, reproduce two fresh copies of the snapshot, compare them.

    The snapshot makes both runs start from the same files even while ``source`` is being edited.
    """
    (workdir / "source").mkdir(parents=True)
    snapshot = copy_repo(workdir / "source", source)
    runs = [workdir / "run1", workdir / "run2"]
    for n, run in enumerate(runs, 1):
        run.mkdir(parents=True)
        print(f"repro-check: run {n} of 2: dvc repro {' '.join(targets or [])} in {run}", flush=True)
        print(f"repro-check: run {n} took {reproduce(run, snapshot, targets or []):.0f} s", flush=True)
    return compare(*runs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("targets", nargs="*", help="stages to reproduce (default: the whole pipeline)")
    p.add_argument("--source", type=Path, default=REPO, help="the repo to copy (default: this checkout)")
    p.add_argument("--workdir", type=Path, default=None, help="where the two copies go (default: a new temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the two copies (they are kept anyway when the check fails)")
    args = p.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="stagetrain-repro-"))
    try:
        result = check(workdir, args.source.resolve(), args.targets)
    except RuntimeError as err:
        print(f"repro-check: {err}", file=sys.stderr)
        print(f"repro-check: copies kept in {workdir}", file=sys.stderr)
        return 2
    print(report(result))
    if result.differences or args.keep:
        print(f"repro-check: copies kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if result.differences else 0


if __name__ == "__main__":
    sys.exit(main())
