"""calibrate: per-class confidence calibration and thresholds of the shipped model, fitted on val, reported on test."""

import json
import shutil
from pathlib import Path

import _cli
from stagetrain import calibrate


def work(cfg, args):
    result = calibrate.run(cfg, args.weights, args.data, Path(".stagetrain/runs/calibrate"))
    _cli.write_json(args.out, result["calibration"])
    _cli.write_json(args.metrics, result["metrics"])
    shutil.rmtree(args.detail, ignore_errors=True)  # nothing of an earlier run's detail survives
    _cli.write_json(args.detail / "detail.json", result["detail"])
    (args.detail / "reliability.json").write_text(json.dumps(result["reliability"]) + "\n")
    m = result["metrics"]
    print(
        f"calibrate ({result['calibration']['method']}): test ECE {m['ece_before']:.4f} -> {m['ece_after']:.4f} over {m['detections']} detections; "
        f"at the val-chosen thresholds test precision {m['precision']:.3f}, recall {m['recall']:.3f}"
    )
    for line in result["calibration"]["fallbacks"]:
        print(f"calibrate: {line}")


if __name__ == "__main__":
    p = _cli.parser(__doc__)
    p.add_argument("--weights", type=_cli.existing("file"), required=True, help="models/<stage>/best.pt of the shipped stage")
    p.add_argument("--data", type=_cli.existing("file"), required=True, help="organized data.yaml: val split fits, test split reports")
    p.add_argument("--out", type=Path, required=True, help="calibration JSON to write (the deploy contract)")
    p.add_argument("--metrics", type=Path, required=True, help="flat metrics JSON to write")
    p.add_argument("--detail", type=Path, required=True, help="folder for detail.json and reliability.json (plot rows)")
    _cli.main(p, work)
