"""`make repro-check`: run the shrunk pipeline twice, in two fresh temp copies, and compare.

Every output hash in the two ``dvc.lock`` files and every value in every metric file of the stages
that ran must match. Where an output differs, the check looks inside it (a directory's DVC
listing, then the file, see :mod:`stagetrain.tools.diff`) and names the stage, the file and the
first differing value. Wall-clock timings and the known ONNX exceptions are left out, and printed
on every run.

Both copies come from one snapshot of the source, shrunk once (``stagetrain.tools.repo.shrink``,
as in the tests) and without the source's ``dvc.lock``, so each run starts from nothing, its lock
names exactly the stages it ran, and edits made while the check runs cannot leak into one run
only. Only synthetic datasets shrink: a ``local`` one is read at full size where it is, a
``roboflow`` one is downloaded in each run (network access and ``ROBOFLOW_API_KEY`` needed; the
check refuses up front without the key). Usage::

    python -m stagetrain.tools.repro_check [TARGET ...] [--source DIR] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from stagetrain.errors import UserError
from stagetrain.tools.diff import FileDiff, diff_file, flatten, is_timing
from stagetrain.tools.repo import REPO, SHRUNK_BATCH, copy_repo, dvc, dvc_env, full_size_datasets, repo_params, shrunk_copy, upstream_stages


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
    stages: list[str] = field(default_factory=list)  # the stages compared: those in either run's dvc.lock
    outputs: int = 0
    metric_values: int = 0

    def record(self, stage: str, diff: FileDiff) -> None:
        if diff.excluded:
            self.excluded[diff.path] = diff.excluded
        if diff.known:
            self.known[diff.path] = diff.known
        if diff.first is not None:
            self.differences.append(Difference(stage, diff.path, diff.first))


def lock_outs(root: Path) -> dict[str, dict[str, str]]:
    """``{stage: {out path: md5}}`` from ``dvc.lock`` (empty when no stage ran)."""
    path = root / "dvc.lock"
    lock = yaml.safe_load(path.read_text()) if path.is_file() else None
    stages = (lock or {}).get("stages") or {}
    return {stage: {o["path"]: o["md5"] for o in entry.get("outs", [])} for stage, entry in stages.items()}


def metric_files(root: Path) -> dict[str, str]:
    """``{metric file: stage}`` for every metric the pipeline declares: a metrics folder gives each JSON file in it."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        declared = {out.def_path: stage.name for stage in repo.index.stages for out in stage.outs if out.metric}
    files = {}
    for path, stage in declared.items():
        inside = sorted((root / path).rglob("*.json")) if (root / path).is_dir() else []
        files |= {f.relative_to(root).as_posix(): stage for f in inside} if inside else {path: stage}
    return files


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


def _union(a: dict, b: dict) -> list:
    """The keys of ``a`` then those only in ``b``, in order."""
    return list(a) + [key for key in b if key not in a]


def _compare_hashes(run_a: Path, run_b: Path, result: Comparison) -> list[tuple[str, str]]:
    """Every output hash of the two locks; returns the ``(stage, file)`` pairs whose hashes differ."""
    outs_a, outs_b = lock_outs(run_a), lock_outs(run_b)
    result.stages = _union(outs_a, outs_b)
    changed: list[tuple[str, str]] = []
    for stage in result.stages:
        a, b = outs_a.get(stage, {}), outs_b.get(stage, {})
        for path in _union(a, b):
            result.outputs += 1
            if path not in a or path not in b:
                result.record(stage, FileDiff(path, first=f"output in {'run 2' if path not in a else 'run 1'} only"))
            elif a[path] != b[path]:
                files = [(stage, rel) for rel in _changed_files(run_a, run_b, path, a[path], b[path])]
                changed += files
                if not files:
                    result.record(stage, FileDiff(path, first=f"md5 {a[path]} vs {b[path]} with the same files"))
    return changed


def compare(run_a: Path, run_b: Path) -> Comparison:
    """Every output hash of the two ``dvc.lock`` files, then every metric file of the stages that ran, value by value."""
    result = Comparison()
    changed = _compare_hashes(run_a, run_b, result)
    known_files: set[str] = set()  # files that differ only by a known exception: their sizes may too
    for stage, rel in sorted(changed, key=lambda item: item[1].endswith((".json", ".md"))):  # last: they may quote sizes
        diff = diff_file(run_a / rel, run_b / rel, rel, frozenset(known_files))
        result.record(stage, diff)
        if diff.first is None and diff.known:
            known_files.add(rel)
    changed_files = {rel for _, rel in changed}
    for path, stage in metric_files(run_a).items():
        if stage not in result.stages:  # not run in this check: nothing to compare
            continue
        values = flatten(json.loads((run_a / path).read_text())) if (run_a / path).is_file() else {}
        result.metric_values += sum(1 for key in values if not is_timing(key))
        if path not in changed_files:  # same hash: identical, but list its timings all the same
            result.record(stage, diff_file(run_a / path, run_b / path, path))
    return result


def report(result: Comparison) -> str:
    lines = [f"compared {result.outputs} DVC outputs of {len(result.stages)} stages and {result.metric_values} metric values"]
    lines.append(f"stages: {', '.join(result.stages) or 'none'}")
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


def preflight(snapshot: Path, targets: list[str]) -> list[str]:
    """Notes on the datasets the check uses at full size; a UserError for one it cannot fetch here.

    Only the datasets whose download stage ``dvc repro <targets>`` reaches count.
    """
    params = repo_params(snapshot)
    full_size = full_size_datasets(params)
    if not full_size:
        return []
    reached = {stage.partition("@")[2] for stage in upstream_stages(snapshot, targets) if stage.startswith("download@")}
    epochs = max((stage.get("epochs", 0) for stage in params["stages"].values()), default=0)
    training = f"training is shrunk all the same ({epochs} epoch(s) per stage, imgsz {params['model']['imgsz']}, batch {SHRUNK_BATCH})"
    notes = []
    for name, kind in full_size.items():
        if name not in reached or kind not in ("roboflow", "local"):  # any other kind: the download stage names the error
            continue
        if kind == "roboflow" and not os.environ.get("ROBOFLOW_API_KEY", "").strip():
            raise UserError(
                f"params.yaml: dataset `{name}` is `kind: roboflow`: each of the two runs downloads it in full, which needs network access "
                f"and ROBOFLOW_API_KEY in the environment. Export the key, or download the dataset once and point "
                f"`datasets.{name}` at that copy (`kind: local`, `local: {{path: ...}}`), or name targets that do not need it"
            )
        where = (
            "downloaded from Roboflow in each run"
            if kind == "roboflow"
            else f"read from {(params['datasets'][name].get('local') or {}).get('path')}"
        )
        notes.append(f"dataset `{name}` (kind: {kind}) is used at full size, {where}: only synthetic datasets shrink; {training}")
    return notes


def reproduce(target: Path, snapshot: Path, targets: list[str]) -> float:
    """A fresh copy of the shrunk ``snapshot`` at ``target`` and ``dvc repro`` in it; returns the seconds it took."""
    copy_repo(target, snapshot)
    env = {k: v for k, v in dvc_env().items() if k != "PYTHONHASHSEED"}  # a fresh hash seed per process, as users get
    started = time.perf_counter()
    dvc(target, "repro", *targets, env=env)
    return time.perf_counter() - started


def check(workdir: Path, source: Path = REPO, targets: list[str] | None = None) -> Comparison:
    """Snapshot ``source`` once (shrunk, without its ``dvc.lock``), reproduce two fresh copies of it, compare.

    The snapshot makes both runs start from the same files even while ``source`` is being edited.
    """
    targets = targets or []
    (workdir / "source").mkdir(parents=True)
    snapshot = shrunk_copy(workdir / "source", source)
    for note in preflight(snapshot, targets):
        print(f"repro-check: {note}", flush=True)
    runs = [workdir / "run1", workdir / "run2"]
    for n, run in enumerate(runs, 1):
        run.mkdir(parents=True)
        print(f"repro-check: run {n} of 2: dvc repro {' '.join(targets)} in {run}", flush=True)
        print(f"repro-check: run {n} took {reproduce(run, snapshot, targets):.0f} s", flush=True)
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
    except UserError as err:  # refused before any run: nothing worth keeping
        print(f"repro-check: {err}", file=sys.stderr)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        return 2
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
