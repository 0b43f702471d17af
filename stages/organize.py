"""organize@<dataset>: validate, map classes, dedupe and split into the canonical YOLO layout."""

from pathlib import Path

import _cli
from stagetrain.data import organize


def work(cfg, args):
    report = organize.run(cfg, args.dataset, args.raw, args.out)
    _cli.write_json(args.report, report)
    print(f"organize@{args.dataset}: images {report['images']}, skipped {len(report['skipped'])}, duplicates {len(report['duplicates_removed'])}")


if __name__ == "__main__":
    p = _cli.parser(__doc__)
    p.add_argument("dataset", help="a key under `datasets:` in params.yaml")
    p.add_argument("raw", type=Path, help="raw input folder (download's output)")
    p.add_argument("out", type=Path, help="organized output folder")
    p.add_argument("report", type=Path, help="JSON report: counts per split and class, skipped files")
    _cli.main(p, work)
