"""Raw dataset (YOLO, Roboflow export, COCO or VOC) -> canonical organized YOLO dataset and a report.

Output layout (``data/organized/<dataset>``)::

    images/{train,val,test}/   labels/{train,val,test}/   data.yaml (no `path:`, canonical names)

Steps, each deterministic for a given raw folder, params and seed:

1. read the layout (:mod:`~stagetrain.data.formats`) and map class names to the canonical ``classes``;
2. decode every image and check every label line (:mod:`~stagetrain.data.validate`) in a process pool;
3. ``on_bad: error`` raises one error listing every problem as ``file:line: reason``;
   ``skip`` leaves the bad files out and lists each, with its reason, in the report;
4. ``dedupe``: identical images (sha256) are kept once, a train copy winning over val/test; an image
   that another dataset's raw folder also holds is never put in (or is removed from) val/test, so no
   dataset is tested on what another trains on;
5. split: the source's own where it has one (a missing val/test is carved out of its train);
   otherwise seeded and stratified with scikit-learn;
6. hard-link the images (never re-encoded; copied where links are impossible), write the labels.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import multiprocessing.pool
import os
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import yaml
from sklearn.model_selection import train_test_split
from tqdm import tqdm

from stagetrain.config import SPLITS, Config, ConfigError, DatasetSpec
from stagetrain.data import formats, validate
from stagetrain.data.formats import IMAGE_SUFFIXES  # noqa: F401  (re-exported: export.py reads it from here)

MAX_LISTED_PROBLEMS = 50
SPLIT_RANK = {"train": 0, "val": 1, "test": 2, None: 3}  # which copy of a duplicate is kept


@dataclass
class Sample:
    """One usable image: its canonical boxes ``(class_id, xc, yc, w, h)`` and where it came from."""

    image: Path
    rel: str  # path inside the raw folder: sort key and output name
    split: str | None  # the source's own split
    digest: str
    boxes: list[tuple[int, float, float, float, float]]


def class_mapping(names: list[str], spec: DatasetSpec, classes: tuple[str, ...], where: str) -> dict[str, int | None]:
    """Map the dataset's class names to canonical ids (``None`` = dropped via ``class_map: null``).

    Raises:
        ConfigError: listing every name that is neither canonical nor in ``class_map``.
    """
    mapping, unmapped = {}, []
    for name in names:
        target = spec.class_map.get(name, name)
        if target is None or target in classes:
            mapping[name] = None if target is None else classes.index(target)
        else:
            unmapped.append(name)
    if unmapped:
        raise ConfigError(
            f"{where}: classes {unmapped} are neither canonical nor mapped; add them to "
            f"`datasets.{spec.name}.class_map` (name -> one of {list(classes)}, or null to drop)"
        )
    return mapping


def available_cores() -> int:
    """CPU cores this process may use (the affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextmanager
def _pool(workers: int) -> Iterator[multiprocessing.pool.Pool | None]:
    if workers <= 1:
        yield None
        return
    # fork: workers start in milliseconds and need nothing pickled but file names
    methods = multiprocessing.get_all_start_methods()
    with multiprocessing.get_context("fork" if "fork" in methods else None).Pool(workers) as pool:
        yield pool


def _map(pool: multiprocessing.pool.Pool | None, fn: Callable, args: list[str], desc: str) -> list:
    """``fn`` over ``args`` in order, on the pool when there is one, with a progress bar on a terminal."""
    chunk = max(1, min(64, len(args) // 32))  # big enough to amortise the IPC, small enough to balance the tail
    results = pool.imap(fn, args, chunksize=chunk) if pool else map(fn, args)
    return list(tqdm(results, total=len(args), desc=desc, unit="img", disable=None, mininterval=0.5, file=sys.stderr))


def _screen(
    source: formats.Source, judged: list[validate.Judged], mapping: dict, stats: Counter
) -> tuple[list[Sample], list[str], list[str]]:
    """The usable samples (boxes mapped to canonical ids), every problem, and what became of each bad image."""
    samples, problems, left_out = [], list(source.problems), []
    for item, result in zip(source.items, judged, strict=True):
        if result.problems:
            problems += result.problems
            if not result.check.problem:  # an image problem already names the image; say what became of it otherwise
                left_out.append(f"{item.image}: left out because its annotation has the problems listed")
            continue
        stats["boxes_clipped"] += result.clipped
        canonical = []
        for name, *xywh in result.boxes:
            if mapping[name] is None:
                stats[f"dropped:{name}"] += 1
            else:
                canonical.append((mapping[name], *xywh))
        samples.append(Sample(item.image, item.rel, item.split, result.check.digest, canonical))
    return samples, problems, left_out


def _dedupe(samples: list[Sample]) -> tuple[list[Sample], list[dict]]:
    first: dict[str, Sample] = {}
    removed = []
    for sample in sorted(samples, key=lambda s: (SPLIT_RANK[s.split], s.rel)):
        kept = first.setdefault(sample.digest, sample)
        if kept is not sample:
            reason = "identical to an image kept in this dataset" + (f" ({kept.split})" if kept.split else "")
            removed.append({"file": str(sample.image), "split": sample.split, "duplicate_of": str(kept.image), "reason": reason})
    keep = {id(s) for s in first.values()}
    return [s for s in samples if id(s) in keep], removed


def _strata(samples: list[Sample]) -> list[int]:
    """Stratum per image: its rarest class (spreads rare classes over the splits); -1 background, -2 pooled rare."""
    frequency = Counter(c for s in samples for c in {b[0] for b in s.boxes})
    strata = [min({b[0] for b in s.boxes}, key=lambda c: (frequency[c], c)) if s.boxes else -1 for s in samples]
    counts = Counter(strata)
    return [k if counts[k] >= 3 else -2 for k in strata]


def _hold_out(samples: list[Sample], n: int, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Seeded split of ``n`` samples off ``samples``, stratified when every stratum can give one to each side."""
    samples = sorted(samples, key=lambda s: s.rel)
    n = min(n, len(samples) - 1)
    if n <= 0:
        return samples, []
    strata = _strata(samples)
    counts = Counter(strata)
    stratify = strata if min(counts.values()) >= 2 and len(counts) <= min(n, len(samples) - n) else None
    rest, held = train_test_split(samples, test_size=n, random_state=seed, stratify=stratify)
    return rest, held


def assign_splits(
    samples: list[Sample], fractions: dict[str, float], seed: int, shared: dict[str, str]
) -> tuple[dict[str, list[Sample]], dict[str, str], dict[str, list]]:
    """Split samples, keeping images that another dataset holds (``shared``: digest -> its file) out of val/test.

    Returns:
        The splits, where each split came from (``source``, ``seeded``, ``carved from train``), and notes:
        ``removed`` (shared images dropped from the source's val/test), ``kept_in_train`` (shared images a
        seeded split kept in train) and ``outside_source_split`` (images in no split folder of a split source).
    """
    notes: dict[str, list] = {"removed": [], "kept_in_train": [], "outside_source_split": []}
    total = len(samples)
    sizes = {split: max(1, round(total * fractions[split])) for split in ("test", "val")}

    def share_note(sample: Sample) -> dict:
        return {
            "file": str(sample.image),
            "split": sample.split,
            "duplicate_of": shared[sample.digest],
            "reason": "identical image in another dataset",
        }

    if not any(s.split for s in samples):
        pinned = [s for s in samples if s.digest in shared]
        notes["kept_in_train"] = [share_note(s) for s in pinned]
        rest, test = _hold_out([s for s in samples if s.digest not in shared], sizes["test"], seed)
        train, val = _hold_out(rest, sizes["val"], seed)
        return {"train": train + pinned, "val": val, "test": test}, dict.fromkeys(SPLITS, "seeded"), notes
    notes["outside_source_split"] = [str(s.image) for s in samples if s.split is None]
    splits = {split: [s for s in samples if s.split == split] for split in SPLITS}
    origin = dict.fromkeys(SPLITS, "source")
    for split in ("test", "val"):
        if not splits[split] and splits["train"]:  # e.g. a Roboflow export with train and valid only
            pinned = [s for s in splits["train"] if s.digest in shared]
            rest, splits[split] = _hold_out([s for s in splits["train"] if s.digest not in shared], sizes[split], seed)
            splits["train"], origin[split] = rest + pinned, "carved from train"
    for split in ("val", "test"):
        notes["removed"] += [share_note(s) for s in splits[split] if s.digest in shared]
        splits[split] = [s for s in splits[split] if s.digest not in shared]
    return splits, origin, notes


def _output_stems(samples: list[Sample]) -> list[str]:
    """File stems unique within a split (case-insensitively, and across suffixes: labels share ``stem.txt``)."""
    stems = [Path(s.rel).stem for s in samples]
    clashes = Counter(stem.lower() for stem in stems)
    return [
        stem if clashes[stem.lower()] == 1 else f"{stem}_{hashlib.sha1(s.rel.encode()).hexdigest()[:8]}"
        for stem, s in zip(stems, samples, strict=True)
    ]


def _judge(task: tuple, names: dict[int, str], pixels: bool) -> validate.Judged:
    """Pool task: :func:`validate.judge_item` on one image's fields."""
    return validate.judge_item(*task, names=names, pixels=pixels)


def _place(task: tuple[str, str, str, str]) -> None:
    """Pool task: hard-link one image into the output (a copy where links are impossible) and write its label."""
    src, image, label, text = task
    try:
        os.link(src, image)
    except OSError:  # another filesystem, or links not supported
        shutil.copy2(src, image)
    with open(label, "w") as f:
        f.write(text)


def _write(out_dir: Path, splits: dict[str, list[Sample]], classes: tuple[str, ...], pool, desc: str) -> dict:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    counts: dict = {"images": {}, "boxes": {}, "background_images": {}}
    tasks = []
    for split in SPLITS:
        (out_dir / "images" / split).mkdir(parents=True)
        (out_dir / "labels" / split).mkdir(parents=True)
        samples = sorted(splits[split], key=lambda s: s.rel)
        for sample, stem in zip(samples, _output_stems(samples), strict=True):
            lines = "".join(f"{c} {xc:.6f} {yc:.6f} {w:.6f} {h:.6f}\n" for c, xc, yc, w, h in sample.boxes)
            tasks.append(
                (str(sample.image), f"{out_dir}/images/{split}/{stem}{sample.image.suffix}", f"{out_dir}/labels/{split}/{stem}.txt", lines)
            )
        boxes = Counter(classes[b[0]] for s in samples for b in s.boxes)
        counts["images"][split] = len(samples)
        counts["boxes"][split] = {name: boxes[name] for name in classes}
        counts["background_images"][split] = sum(1 for s in samples if not s.boxes)
    _map(pool, _place, tasks, desc)
    data = {split: f"images/{split}" for split in SPLITS} | {"names": dict(enumerate(classes))}
    (out_dir / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return counts


def _bad_inputs(raw_dir: Path, problems: list[str]) -> ConfigError:
    listed = "\n  ".join(problems[:MAX_LISTED_PROBLEMS])
    more = f"\n  ... and {len(problems) - MAX_LISTED_PROBLEMS} more" if len(problems) > MAX_LISTED_PROBLEMS else ""
    return ConfigError(
        f"{raw_dir}: {len(problems)} problems in the inputs; fix them, or set `organize.on_bad: skip` to leave those "
        f"files out (each is then listed in metrics/organize/<dataset>.json):\n  {listed}{more}"
    )


def run(cfg: Config, dataset: str, raw_dir: Path, out_dir: Path, other_raw_dirs: Sequence[Path] = (), workers: int | None = None) -> dict:
    """Organize ``raw_dir`` into ``out_dir`` (replaced) and return the report.

    Args:
        cfg: the validated params (``seed``, ``classes``, ``organize``, ``datasets.<dataset>.class_map``).
        dataset: a key under ``datasets:``.
        raw_dir: download's output for ``dataset``.
        out_dir: the organized output folder.
        other_raw_dirs: the other datasets' raw folders, read for the cross-dataset dedupe rule.
        workers: processes that check images and write files (default: every core this process may use).

    Returns:
        The report the stage writes to ``metrics/organize/<dataset>.json``.

    Raises:
        ConfigError: bad inputs with ``on_bad: error``, unmapped class names, an unreadable layout,
            or a split left empty; nothing is written then.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    source = formats.read(raw_dir)
    others = [str(Path(d) / f) for d in other_raw_dirs if cfg.organize_dedupe for f in formats.walk_files(Path(d)) if formats.is_image(f)]
    with _pool(workers or available_cores()) as pool:
        tasks = [(str(i.image), i.label and str(i.label), i.boxes, i.problems, i.declared_size) for i in source.items]
        judge = partial(_judge, names=source.yolo_names, pixels=source.format != "yolo")
        judged = _map(pool, judge, tasks, f"organize@{dataset}: check images")
        shared: dict[str, str] = {}  # digest -> the first (sorted) file of another dataset with that content
        digests = _map(pool, validate.file_digest, others, f"organize@{dataset}: hash other datasets")
        for path, digest in zip(others, digests, strict=True):
            if digest:  # "" = unreadable there: nothing to compare
                shared.setdefault(digest, path)
        used = {box[0] for result in judged for box in result.boxes}
        names = [n for n in source.names if n in used] + sorted(used - set(source.names))
        mapping = class_mapping(names, cfg.datasets[dataset], cfg.classes, str(source.names_from))
        stats = Counter(polygons_converted=sum(result.polygons for result in judged))
        samples, problems, left_out = _screen(source, judged, mapping, stats)
        if problems and cfg.organize_on_bad == "error":
            raise _bad_inputs(raw_dir, problems)
        samples, duplicates = _dedupe(samples) if cfg.organize_dedupe else (samples, [])
        if len(samples) < 3:
            raise ConfigError(f"{raw_dir}: only {len(samples)} usable images; need at least 3 for train/val/test")
        splits, origin, notes = assign_splits(samples, dict(cfg.organize_split), cfg.seed, shared)
        for split, members in splits.items():
            if not members:
                raise ConfigError(
                    f"{raw_dir}: the {split} split is empty after organizing ({origin[split]}; {len(notes['removed'])} images removed as "
                    f"also held by another dataset); add images to it, or set `organize.dedupe: false`"
                )
        report = {"dataset": dataset, "format": source.format, "split_origin": origin}
        report |= _write(out_dir, splits, cfg.classes, pool, f"organize@{dataset}: write")
    report["skipped"] = problems + left_out
    report["duplicates_removed"] = duplicates + notes["removed"]
    report["kept_in_train"] = notes["kept_in_train"]
    report["outside_source_split"] = notes["outside_source_split"]
    report["dropped_boxes"] = {k.split(":", 1)[1]: n for k, n in sorted(stats.items()) if k.startswith("dropped:")}
    report |= {k: stats[k] for k in ("polygons_converted", "boxes_clipped")} | {"crowd_boxes_skipped": source.crowd_skipped}
    return report
