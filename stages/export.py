"""export: ONNX (and TensorRT on a GPU) of the chosen stage, with size, parity and latency."""

from pathlib import Path

import _cli
from stagetrain import export


def work(cfg, args):
    results = export.run(cfg, args.weights, args.data, args.out, Path(".stagetrain/runs/export"))
    _cli.write_json(args.metrics, results)
    onnx = results.get("onnx", {})
    print(
        f"export: onnx max |diff| {onnx.get('max_abs_diff')}, mAP50 diff {onnx.get('mAP50_diff')}, latency ratio {onnx.get('latency_ratio')}"
    )
    print(f"export: engine {results.get('engine', {}).get('skipped') or results.get('engine', {}).get('latency_ratio')}")


if __name__ == "__main__":
    p = _cli.parser(__doc__)
    p.add_argument("--weights", type=_cli.existing("file"), required=True, help="checkpoint to export")
    p.add_argument(
        "--data",
        type=_cli.existing("file"),
        required=True,
        help="organized data.yaml: test split for parity/latency, val split for INT8 calibration",
    )
    p.add_argument("--out", type=Path, required=True, help="export folder, e.g. models/export")
    p.add_argument("--metrics", type=Path, required=True, help="export JSON to write")
    _cli.main(p, work)
