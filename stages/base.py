"""base and init@<name>: the initial weights a `from: base` (or `from: <init name>`) stage starts from."""

from pathlib import Path

import _cli
from stagetrain.train import checkpoint


def work(cfg, args):
    arch = cfg.inits[args.init] if args.init else None
    summary = checkpoint.build_base(cfg, args.out, arch)
    print(f"{'init@' + args.init if args.init else 'base'}: {summary}")


if __name__ == "__main__":
    p = _cli.parser(__doc__)
    p.add_argument("out", type=Path, help="checkpoint to write, e.g. models/base/best.pt")
    p.add_argument("--init", help="build `model.inits.<name>` instead of `model.arch`")
    _cli.main(p, work)
