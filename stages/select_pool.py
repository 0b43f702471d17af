"""select@<round>: rank a dataset's unlabelled pool by a model's uncertainty; package the top images for annotation.

Not `select.py`: the stage folder is first on sys.path, and the standard library imports a module named `select`.
"""

from pathlib import Path

import _cli
from stagetrain import select


def work(cfg, args):
    if args.round not in cfg.select:
        known = ", ".join(cfg.select) or "(none defined)"
        raise _cli.UserError(f"{cfg.source}: `select` has no round {args.round!r} (named on the command line); use one of: {known}")
    summary = select.run(cfg, args.round, args.weights, args.pool, args.out)
    _cli.write_json(args.metrics, summary)
    print(
        f"select@{args.round}: {summary['selected']} of {summary['pool_images']} pool images by {summary['strategy']} "
        f"({summary['passed_over']} passed over as near-duplicates) -> {args.out}"
    )


if __name__ == "__main__":
    p = _cli.parser(__doc__)
    p.add_argument("round", help="a key under `select:` in params.yaml")
    p.add_argument("--weights", type=_cli.existing(), required=True, help="checkpoint that ranks the pool, e.g. models/stage3/best.pt")
    p.add_argument("--pool", type=_cli.existing("folder"), required=True, help="the pool folder, data/organized/<dataset>/images/pool")
    p.add_argument("--out", type=Path, required=True, help="package to write, data/annotation/<round>/package.zip")
    p.add_argument("--metrics", type=Path, required=True, help="summary JSON, metrics/select/<round>.json")
    _cli.main(p, work)
