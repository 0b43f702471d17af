"""trainset@<stage>: write the stage's training list (its dataset's train split, replayed, oversampled and mined images), no image copied."""

from pathlib import Path

import _cli
from stagetrain.data import trainset


def work(cfg, args):
    manifest = trainset.run(cfg, args.stage, args.organized, args.out, args.mined)
    replayed = ", ".join(f"{d} {n}" for d, n in manifest["replayed_images"].items()) or "none"
    print(
        f"trainset@{args.stage}: {manifest['train_images']} train images ({manifest['dataset']} + replayed: {replayed}"
        f"; oversampled: +{manifest['oversampled_images']}; mined: +{manifest['mined_images']})"
    )


if __name__ == "__main__":
    p = _cli.parser(__doc__)
    p.add_argument("stage", help="a key under `stages:` in params.yaml")
    p.add_argument(
        "--organized", type=_cli.existing("folder"), required=True, help="folder holding organized/<dataset>/ (organize's outputs)"
    )
    p.add_argument("--mined", type=Path, help="mine@<stage>'s folder (mined.json); read only when the stage sets hard_negatives")
    p.add_argument("--out", type=Path, required=True, help="folder for data.yaml, train.txt, manifest.json")
    _cli.main(p, work)
