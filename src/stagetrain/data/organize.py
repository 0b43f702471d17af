"""Raw dataset (YOLO, Roboflow export, COCO or VOC) -> canonical organized YOLO dataset and a report.

Steps, each deterministic for a given raw folder, params and seed:

1. read the layout (:mod:`~stagetrain.data.formats`, one module per format);
2. decode every image and place every box inside it (:mod:`~stagetrain.data.validate`) in a process pool;
3. map class names to the canonical ``classes`` and collapse duplicate boxes (:mod:`~stagetrain.data.screen`);
4. ``on_bad: error`` raises one error listing every problem as ``file:line: reason``;
   ``skip`` leaves the bad files out and lists each, with its reason, in the report;
5. dedupe identical images, find near-duplicates and copies in other datasets (:mod:`~stagetrain.data.leakage`),
   and split so that none straddles train and val/test (:mod:`~stagetrain.data.splits`);
6. pass the unlabelled ``pool/`` through: validated, and without copies of any labelled image or of itself;
7. write the layout (:mod:`~stagetrain.data.write`): images hard-linked, labels, data.yaml, ``images/pool/``.

The report (``metrics/organize/<dataset>.json``) counts and lists everything left out or changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

from stagetrain import progress
from stagetrain.config import Config
from stagetrain.data import formats, leakage, near_dup, screen, splits, validate, write
from stagetrain.data.workers import available_cores, pmap, pool
from stagetrain.errors import UserError

MAX_LISTED_PROBLEMS = 50


def _judge(task: tuple, names: dict[int, str], pixels: bool, phash: bool) -> validate.Judged:
    """Pool task: :func:`validate.judge_item` on one image's fields."""
    return validate.judge_item(*task, names=names, pixels=pixels, phash=phash)


def _pool_samples(raw_dir: Path, rels: list[str], checks: list[validate.ImageCheck]) -> tuple[list[splits.Sample], list[str]]:
    """The pool's usable images, and a problem per image that is not."""
    usable, problems = [], []
    for rel, check in zip(rels, checks, strict=True):
        if check.problem:
            problems.append(f"{raw_dir / rel}: {check.problem}")
        else:
            usable.append(splits.Sample(raw_dir / rel, rel, "pool", check.digest, [], check.phash))
    return usable, problems


def _bad_inputs(raw_dir: Path, problems: list[str]) -> UserError:
    listed = "\n  ".join(problems[:MAX_LISTED_PROBLEMS])
    more = f"\n  ... and {len(problems) - MAX_LISTED_PROBLEMS} more" if len(problems) > MAX_LISTED_PROBLEMS else ""
    return UserError(
        f"{raw_dir}: {len(problems)} problems in the inputs; fix them, or set `organize.on_bad: skip` to leave those "
        f"files out (each is then listed in metrics/organize/<dataset>.json):\n  {listed}{more}"
    )


def _check_splits(raw_dir: Path, members: dict[str, list], origin: dict[str, str], notes: dict) -> None:
    for split, samples in members.items():
        if not samples:
            raise UserError(
                f"{raw_dir}: the {split} split is empty after organizing ({origin[split]}; {len(notes['removed'])} images removed "
                f"and {len(notes['kept_in_train'])} kept in train as copies of another image, {len(notes['grouped'])} near-duplicates "
                "kept with their group); add images to it, or relax `organize.near_duplicates` (0 = off) or `organize.dedupe`"
            )


def _report(
    dataset: str, source: formats.Source, origin: dict, counts: dict, screened: screen.Screened, removed: list, notes: dict, extra: dict
) -> dict:
    report = {"dataset": dataset, "format": source.format, "split_origin": origin, **counts}
    report["skipped"] = screened.problems + screened.left_out + extra["pool_problems"]
    report["duplicates_removed"] = removed + notes["removed"]
    report["kept_in_train"] = notes["kept_in_train"]
    report["near_duplicates_grouped"] = notes["grouped"]
    report["near_duplicates"] = {
        "max_distance": extra["max_distance"],  # organize.near_duplicates (0: off)
        "hash_bits": near_dup.BITS,
        "pairs": extra["pairs"],  # near-duplicate pairs within this dataset (identical copies not counted)
        "groups": extra["groups"],
        "grouped": len(notes["grouped"]),
        "removed": sum(1 for d in report["duplicates_removed"] if d["distance"] > 0),  # distance 0: identical files
        "kept_in_train": sum(1 for d in notes["kept_in_train"] if d["distance"] > 0),
    }
    if source.pool:
        pool_removed = extra["pool_removed"]
        report["pool"] = {
            "found": len(source.pool),
            "images": extra["pool_images"],
            "skipped": len(extra["pool_problems"]),
            "duplicates_removed": len(pool_removed),
            "removed": pool_removed,
        }
    report["outside_source_split"] = notes["outside_source_split"]
    report["dropped_boxes"] = dict(sorted(screened.dropped.items()))
    report["duplicate_boxes"] = {"count": len(screened.duplicates), "boxes": screened.duplicates}
    report["polygons_converted"] = screened.polygons
    report["boxes_clipped"] = len(screened.clipped)
    report["clipped_boxes"] = screened.clipped
    report["crowd_boxes_skipped"] = source.crowd_skipped
    return report


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
        UserError: bad inputs with ``on_bad: error``, unmapped class names, an unreadable layout,
            or a split left empty; nothing is written then.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    dedupe, near = cfg.organize.dedupe, cfg.organize.near_duplicates if cfg.organize.dedupe else 0
    source = formats.read(raw_dir, dataset=dataset)
    with pool(workers or available_cores()) as workers_pool:
        tasks = [(str(i.image), i.label and str(i.label), i.boxes, i.problems, i.declared_size) for i in source.items]
        judge = partial(_judge, names=source.yolo_names, pixels=source.format != "yolo", phash=near > 0)
        judged = pmap(workers_pool, judge, tasks, f"organize@{dataset}: check images")
        check = partial(validate.check_image, phash=near > 0)
        pool_checks = pmap(workers_pool, check, [str(raw_dir / rel) for rel in source.pool], f"organize@{dataset}: check pool/")
        others = leakage.read_others(workers_pool, other_raw_dirs if dedupe else (), near > 0, f"organize@{dataset}: hash other datasets")
        mapping = screen.class_mapping(screen.used_names(source, judged), cfg.datasets[dataset], cfg.classes, str(source.names_from))
        screened = screen.screen(source, judged, mapping, cfg.classes)
        unlabelled, pool_problems = _pool_samples(raw_dir, source.pool, pool_checks)
        if (screened.problems or pool_problems) and cfg.organize.on_bad == "error":
            raise _bad_inputs(raw_dir, screened.problems + pool_problems)
        samples, removed = splits.dedupe_images(screened.samples) if dedupe else (screened.samples, [])
        if len(samples) < 3:
            raise UserError(f"{raw_dir}: only {len(samples)} usable images; need at least 3 for train/val/test")
        with progress.phase(f"organize@{dataset}: link copies and near-duplicates", len(samples) if dedupe else 0) as linking:
            links, pairs = leakage.link(samples, others, near) if dedupe else (splits.Links(), 0)
            linking.update(len(samples) if dedupe else 0)
        members, origin, notes = splits.assign_splits(samples, dict(cfg.organize.split), cfg.seed, links)
        _check_splits(raw_dir, members, origin, notes)
        pool_removed = []
        if dedupe:
            placed = {id(s): split for split, group in members.items() for s in group}
            order = sorted(screened.samples, key=lambda s: (splits.SPLIT_RANK[placed.get(id(s))], s.rel))
            labelled = [(placed.get(id(s)) or f"left out of {s.split or 'the splits'}", s) for s in order]
            unlabelled, pool_removed = leakage.screen_pool(unlabelled, labelled, others, near)
        kept_pool = unlabelled if source.pool else None
        counts = write.write_layout(out_dir, members, cfg.classes, workers_pool, f"organize@{dataset}: write", kept_pool)
    extra = {
        "max_distance": near,
        "pairs": pairs,
        "groups": len(links.groups),
        "pool_images": len(unlabelled),
        "pool_problems": pool_problems,
        "pool_removed": pool_removed,
    }
    return _report(dataset, source, origin, counts, screened, removed, notes, extra)
