"""plots: the dashboard's data (every stage on one epoch axis, every evaluated model overlaid) for `dvc plots show`."""

from pathlib import Path

import _cli
from stagetrain import plots


def work(cfg, args):
    summary = plots.run(cfg, args.live, args.eval, args.out)
    for stage, span in summary["stages"].items():
        last = span["first_epoch"] + span["epochs"] - 1
        print(f"plots: {stage} epochs {span['first_epoch']}..{last} (from {cfg.stages[stage].upstream})")
    print(
        f"plots: PR curves of {', '.join(summary['pr_models']) or 'no model'}; confusion of {', '.join(summary['confusion_models']) or 'no model'}"
    )
    if summary["ignored_live_folders"]:
        print(f"plots: ignored {args.live}/{{{','.join(summary['ignored_live_folders'])}}}: no stage of {cfg.source} by that name")
    print(f"plots: wrote {', '.join(f'{n} ({r} rows)' for n, r in summary['rows'].items())} to {args.out}")


if __name__ == "__main__":
    p = _cli.parser(__doc__)
    p.add_argument(
        "--live", type=_cli.existing("folder"), required=True, help="folder holding <stage>/plots/metrics (train@'s dvclive logs)"
    )
    p.add_argument("--eval", type=_cli.existing("folder"), required=True, help="folder holding pr/ and confusion/ (evaluate's plot data)")
    p.add_argument("--out", type=Path, required=True, help="folder for the dashboard's data files")
    _cli.main(p, work)
