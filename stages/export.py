"""export: the deploy package (ONNX, OpenVINO; TensorRT on a GPU) of the chosen stage, gated on parity with PyTorch."""

from pathlib import Path

import _cli
from stagetrain import export


def work(cfg, args):
    results = export.run(cfg, args.weights, args.data, args.out, Path(".stagetrain/runs/export"), calibration=args.calibration)
    _cli.write_json(args.metrics, results)
    for fmt in ("onnx", "openvino", "engine"):
        if f"{fmt}_skipped" in results:
            print(f"export: {fmt} skipped: {results[f'{fmt}_skipped']}")
        elif f"{fmt}_matched" in results:
            figures = ", ".join(f"{k.removeprefix(fmt + '_')} {v}" for k, v in results.items() if k.startswith(fmt + "_"))
            print(f"export: {fmt} passed the parity gate: {figures}")


if __name__ == "__main__":
    p = _cli.parser(__doc__)
    p.add_argument("--weights", type=_cli.existing("file"), required=True, help="checkpoint to export")
    p.add_argument(
        "--data",
        type=_cli.existing("file"),
        required=True,
        help="organized data.yaml: test split for parity/latency, val split for INT8 calibration",
    )
    p.add_argument("--out", type=Path, required=True, help="deploy package folder, e.g. models/export")
    p.add_argument("--metrics", type=Path, required=True, help="export JSON to write")
    p.add_argument("--calibration", type=_cli.existing("file"), help="calibrate stage's JSON: per-class confidence curves and thresholds")
    _cli.main(p, work)
