"""organize@<dataset>: read any supported layout, validate, map classes, dedupe and split into the canonical YOLO layout."""

from pathlib import Path

import _cli
from stagetrain.data import organize


def work(cfg, args):
    # Every other dataset's raw folder under --others (dvc.yaml deps on all of it); hidden ones are scratch space.
    siblings = args.others.iterdir() if args.others and args.others.is_dir() else ()
    others = sorted(d for d in siblings if d.is_dir() and not d.name.startswith(".") and d.resolve() != args.raw.resolve())
    report = organize.run(cfg, args.dataset, args.raw, args.out, others)
    _cli.write_json(args.report, report)
    skipped, removed, near = len(report["skipped"]), len(report["duplicates_removed"]), report["near_duplicates"]
    pool = f", pool {report['pool']['images']} of {report['pool']['found']} kept" if "pool" in report else ""
    print(
        f"organize@{args.dataset}: {report['format']}, images {report['images']}{pool}, problems listed {skipped}, duplicates removed "
        f"{removed}, near-duplicates kept together {near['grouped']} / kept in train {near['kept_in_train']}"
    )


if __name__ == "__main__":
    p = _cli.parser(__doc__)
    p.add_argument("dataset", help="a key under `datasets:` in params.yaml")
    p.add_argument("raw", type=_cli.existing("folder"), help="raw input folder (download's output)")
    p.add_argument("out", type=Path, help="organized output folder")
    p.add_argument("report", type=Path, help="JSON report: counts per split and class, skipped files, removed duplicates")
    p.add_argument("--others", type=Path, help="folder holding every dataset's raw folder (for the cross-dataset dedupe)")
    _cli.main(p, work)
