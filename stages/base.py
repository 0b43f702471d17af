"""base: the initial weights every `from: base` stage starts from."""

from pathlib import Path

import _cli
from stagetrain.train import checkpoint


def work(cfg, args):
    summary = checkpoint.build_base(cfg, args.out)
    print(f"base: {summary}")


if __name__ == "__main__":
    p = _cli.parser(__doc__)
    p.add_argument("out", type=Path, help="checkpoint to write, e.g. models/base/best.pt")
    _cli.main(p, work)
