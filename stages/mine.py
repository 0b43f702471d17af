"""mine@<stage>: the false positives the stage's `from` checkpoint makes on its train images (hard negatives), for trainset@<stage>."""

from pathlib import Path

import _cli
from stagetrain import mine


def work(cfg, args):
    mined = mine.run(cfg, args.stage, args.model, args.organized, args.out)
    if mined["settings"] is None:
        print(f"mine@{args.stage}: no `hard_negatives` on this stage; nothing mined")
        return
    scanned = ", ".join(f"{d} {n}" for d, n in mined["scanned_images"].items())
    print(
        f"mine@{args.stage}: {mined['false_positives']} false positives ({mined['by_kind']}) in "
        f"{mined['images_with_false_positives']} of {scanned} train images; {len(mined['selected'])} mined"
    )


if __name__ == "__main__":
    p = _cli.parser(__doc__)
    p.add_argument("stage", help="a key under `stages:` in params.yaml")
    p.add_argument("--model", type=Path, required=True, help="the stage's `from` checkpoint (read only with hard_negatives)")
    p.add_argument(
        "--organized", type=_cli.existing("folder"), required=True, help="folder holding organized/<dataset>/ (organize's outputs)"
    )
    p.add_argument("--out", type=Path, required=True, help="folder for mined.json")
    _cli.main(p, work)
