"""evaluate: test-split metrics of every evaluated model, its dvc plots data, the forgetting matrix and the report."""

import json
from pathlib import Path

import _cli
from stagetrain import evaluate, report


def work(cfg, args):
    data = evaluate.data_yamls(cfg, args.organized)
    results = evaluate.run(cfg, data, args.models, Path(".stagetrain/runs/evaluate"), args.plots)
    _cli.write_json(args.metrics, results)
    stage_metrics = {s: json.loads((args.stage_metrics / f"{s}.json").read_text()) for s in cfg.stages}
    export = json.loads(args.export_metrics.read_text())
    args.report.write_text(report.render(cfg, stage_metrics, results, export))
    print(report.verdict(cfg, stage_metrics, results))
    print(report.forgetting_reading(results[evaluate.FORGETTING]))


if __name__ == "__main__":
    p = _cli.parser(__doc__)
    p.add_argument("--organized", type=_cli.existing("folder"), required=True, help="folder holding <dataset>/data.yaml")
    p.add_argument("--models", type=_cli.existing("folder"), required=True, help="folder holding <stage>/best.pt")
    p.add_argument("--stage-metrics", type=_cli.existing("folder"), required=True, help="folder holding <stage>.json")
    p.add_argument(
        "--export-metrics", type=_cli.existing("file"), required=True, help="export JSON of the shipped model, quoted in the report"
    )
    p.add_argument("--metrics", type=Path, required=True, help="eval JSON to write")
    p.add_argument("--report", type=Path, required=True, help="markdown report to write")
    p.add_argument("--plots", type=Path, required=True, help="folder for pr/<model>.json and confusion/<model>.json")
    _cli.main(p, work)
