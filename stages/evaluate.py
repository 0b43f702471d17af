"""evaluate: test-split metrics of every evaluated model, its dvc plots data, the forgetting matrix, the report and its charts."""

import json
from pathlib import Path

import _cli
from stagetrain import charts, evaluate, forgetting, report


def work(cfg, args):
    data = evaluate.data_yamls(cfg, args.organized)
    results = evaluate.run(cfg, data, args.models, Path(".stagetrain/runs/evaluate"), args.plots)
    _cli.write_json(args.results, results)
    evaluate.write_model_metrics(results, args.test_metrics)
    rows = forgetting.chart_rows(results[evaluate.FORGETTING])
    args.forgetting.parent.mkdir(parents=True, exist_ok=True)
    args.forgetting.write_text(json.dumps(rows, indent=1) + "\n")
    stage_metrics = {s: json.loads((args.stage_metrics / f"{s}.json").read_text()) for s in cfg.stages}
    export = json.loads(args.export_metrics.read_text())
    drawn = charts.draw_all(cfg, args.stage_metrics, report.models_of(results), rows, args.charts)
    args.report.write_text(report.render(cfg, stage_metrics, results, export, drawn.linked_from(args.report.parent)))
    print(report.verdict(cfg, stage_metrics, results))
    print(report.forgetting_reading(results[evaluate.FORGETTING]))


if __name__ == "__main__":
    p = _cli.parser(__doc__)
    p.add_argument("--organized", type=_cli.existing("folder"), required=True, help="folder holding <dataset>/data.yaml")
    p.add_argument("--models", type=_cli.existing("folder"), required=True, help="folder holding <stage>/best.pt")
    p.add_argument(
        "--stage-metrics", type=_cli.existing("folder"), required=True, help="folder holding <stage>.json and each stage's dvclive <stage>/"
    )
    p.add_argument(
        "--export-metrics", type=_cli.existing("file"), required=True, help="export JSON of the shipped model, quoted in the report"
    )
    p.add_argument("--results", type=Path, required=True, help="eval JSON to write: every figure (per-class AP, intervals, the matrix)")
    p.add_argument("--test-metrics", type=Path, required=True, help="folder for <model>.json: each model's few test figures (DVC metrics)")
    p.add_argument("--forgetting", type=Path, required=True, help="JSON rows {model, dataset, map50_95, drop} of the forgetting matrix")
    p.add_argument("--charts", type=Path, required=True, help="folder for the report's PNG charts")
    p.add_argument("--report", type=Path, required=True, help="markdown report to write")
    p.add_argument("--plots", type=Path, required=True, help="folder for pr/<model>.json and confusion/<model>.json")
    _cli.main(p, work)
