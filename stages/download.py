"""download@<dataset>: fetch or generate a dataset's raw files."""

from pathlib import Path

import _cli
from stagetrain.data import sources


def work(cfg, args):
    summary = sources.run(cfg, args.dataset, args.out)
    print(f"download@{args.dataset}: {summary}")


if __name__ == "__main__":
    p = _cli.parser(__doc__)
    p.add_argument("dataset", help="a key under `datasets:` in params.yaml")
    p.add_argument("out", type=Path, help="raw output folder, e.g. data/raw/<dataset>")
    _cli.main(p, work)
