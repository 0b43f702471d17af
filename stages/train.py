"""train@<stage>: train one stage from its upstream checkpoint."""

from pathlib import Path

import _cli
from stagetrain.train import runner

# Echoes of params (`freeze_level`) and of models/<stage>/args.yaml (`freeze`, the frozen layers): printed, not
# written to metrics/<stage>.json, where each key is one more column of `dvc metrics show`.
NOT_METRICS = ("freeze_level", "frozen_layers")


def work(cfg, args):
    work_dir = args.work or Path(".stagetrain/runs") / args.stage
    metrics = runner.run(cfg, args.stage, args.data, args.upstream, args.out, args.live, work_dir, args.teacher)
    _cli.write_json(args.metrics, {key: value for key, value in metrics.items() if key not in NOT_METRICS})
    print(f"train@{args.stage}: {metrics}")


if __name__ == "__main__":
    p = _cli.parser(__doc__)
    p.add_argument("stage", help="a key under `stages:` in params.yaml")
    p.add_argument(
        "--data",
        type=_cli.existing("file"),
        required=True,
        help="the stage's training list, data/trainsets/<stage>/data.yaml (trainset@<stage>)",
    )
    p.add_argument("--upstream", type=_cli.existing("file"), required=True, help="checkpoint of the `from:` stage")
    p.add_argument("--out", type=Path, required=True, help="folder for best.pt, last.pt, args.yaml")
    p.add_argument("--teacher", type=Path, default=None, help="checkpoint of the stage's `teacher:` (used with `distill:`)")
    p.add_argument("--metrics", type=Path, required=True, help="final val metrics JSON")
    p.add_argument("--live", type=Path, required=True, help="dvclive folder for per-epoch plots")
    p.add_argument("--work", type=Path, default=None, help="scratch run folder (default: .stagetrain/runs/<stage>)")
    _cli.main(p, work)
