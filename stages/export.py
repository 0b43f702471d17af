"""export: ONNX (and TensorRT on a GPU) of the chosen stage, with size, latency and parity."""

from pathlib import Path

import _cli
from stagetrain import export


def work(cfg, args):
    results = export.run(cfg, args.weights, args.images, args.out, Path(".stagetrain/runs/export"))
    _cli.write_json(args.metrics, results)
    print(f"export: {results}")


if __name__ == "__main__":
    p = _cli.parser(__doc__)
    p.add_argument("--weights", type=Path, required=True, help="checkpoint to export")
    p.add_argument("--images", type=Path, required=True, help="test images for the parity check")
    p.add_argument("--out", type=Path, required=True, help="export folder, e.g. models/export")
    p.add_argument("--metrics", type=Path, required=True, help="export JSON to write")
    _cli.main(p, work)
