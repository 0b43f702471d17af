"""Raw dataset (YOLO, Roboflow export, COCO or VOC) -> canonical organized YOLO dataset and a report.

Steps, each deterministic for a given raw folder, params and seed:

1. read the layout (:mod:`~stagetrain.data.formats`, one module per format);
2. decode every image and place every box inside it (:mod:`~stagetrain.data.validate`) in a process pool;
3. map class names to the canonical ``classes`` and collapse duplicate boxes (:mod:`~stagetrain.data.screen`);
4. ``on_bad: error`` raises one error listing every problem as ``file:line: reason``;
   ``skip`` leaves the bad files out and lists each, with its reason, in the report;
5. dedupe identical images and split (:mod:`~stagetrain.data.splits`);
6. write the layout (:mod:`~stagetrain.data.write`): images hard-linked, labels, data.yaml.

The report (``metrics/organize/<dataset>.json``) counts and lists everything left out or changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

from stagetrain.config import Config
from stagetrain.data import formats, screen, splits, validate, write
from stagetrain.data.workers import available_cores, pmap, pool
from stagetrain.errors import UserError

MAX_LISTED_PROBLEMS = 50


def _judge(task: tuple, names: dict[int, str], pixels: bool) -> validate.Judged:
    """Pool task: :func:`validate.judge_item` on one image's fields."""
    return validate.judge_item(*task, names=names, pixels=pixels)


def _shared_digests(workers_pool, other_raw_dirs: Sequence[Path], desc: str) -> dict[str, str]:
    """Digest -> the first (sorted) image file of another dataset with that content."""
    others = [str(Path(d) / f) for d in other_raw_dirs for f in formats.walk_files(Path(d)) if formats.is_image(f)]
    shared: dict[str, str] = {}
    for path, digest in zip(others, pmap(workers_pool, validate.file_digest, others, desc), strict=True):
        if digest:  # "" = unreadable there: nothing to compare
            shared.setdefault(digest, path)
    return shared


def _bad_inputs(raw_dir: Path, problems: list[str]) -> UserError:
    listed = "\n  ".join(problems[:MAX_LISTED_PROBLEMS])
    more = f"\n  ... and {len(problems) - MAX_LISTED_PROBLEMS} more" if len(problems) > MAX_LISTED_PROBLEMS else ""
    return UserError(
        f"{raw_dir}: {len(problems)} problems in the inputs; fix them, or set `organize.on_bad: skip` to leave those "
        f"files out (each is then listed in metrics/organize/<dataset>.json):\n  {listed}{more}"
    )


def _check_splits(raw_dir: Path, members: dict[str, list], origin: dict[str, str], removed: int) -> None:
    for split, samples in members.items():
        if not samples:
            raise UserError(
                f"{raw_dir}: the {split} split is empty after organizing ({origin[split]}; {removed} images removed as "
                f"also held by another dataset); add images to it, or set `organize.dedupe: false`"
            )


def _report(
    dataset: str, source: formats.Source, origin: dict, counts: dict, screened: screen.Screened, removed: list, notes: dict
) -> dict:
    report = {"dataset": dataset, "format": source.format, "split_origin": origin, **counts}
    report["skipped"] = screened.problems + screened.left_out
    report["duplicates_removed"] = removed + notes["removed"]
    report["kept_in_train"] = notes["kept_in_train"]
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
    source = formats.read(raw_dir, dataset=dataset)
    with pool(workers or available_cores()) as workers_pool:
        tasks = [(str(i.image), i.label and str(i.label), i.boxes, i.problems, i.declared_size) for i in source.items]
        judge = partial(_judge, names=source.yolo_names, pixels=source.format != "yolo")
        judged = pmap(workers_pool, judge, tasks, f"organize@{dataset}: check images")
        others = other_raw_dirs if cfg.organize.dedupe else ()
        shared = _shared_digests(workers_pool, others, f"organize@{dataset}: hash other datasets")
        mapping = screen.class_mapping(screen.used_names(source, judged), cfg.datasets[dataset], cfg.classes, str(source.names_from))
        screened = screen.screen(source, judged, mapping, cfg.classes)
        if screened.problems and cfg.organize.on_bad == "error":
            raise _bad_inputs(raw_dir, screened.problems)
        samples, removed = splits.dedupe_images(screened.samples) if cfg.organize.dedupe else (screened.samples, [])
        if len(samples) < 3:
            raise UserError(f"{raw_dir}: only {len(samples)} usable images; need at least 3 for train/val/test")
        members, origin, notes = splits.assign_splits(samples, dict(cfg.organize.split), cfg.seed, shared)
        _check_splits(raw_dir, members, origin, len(notes["removed"]))
        counts = write.write_layout(out_dir, members, cfg.classes, workers_pool, f"organize@{dataset}: write")
    return _report(dataset, source, origin, counts, screened, removed, notes)
