"""plots: the dashboard's data, one small file per chart, every stage on one epoch axis.

Each train@<stage> logs one dvclive step per epoch (``<live>/<stage>/plots/metrics/{train,val,lr}/*.tsv``,
step 0 = epoch 1). Drawn file by file they make ~14 charts per stage and none compares stages, so this
module joins them into long tables with a ``stage`` column on a global epoch axis: a stage continues
where its ``from:`` stage stopped (its epochs run, early stop included), and a stage trained from
``base`` (or an init, or tracked weights) starts at epoch 1. The test PR curves and confusion rows of
every evaluated model (``<eval>/pr/<model>.json``, ``<eval>/confusion/<model>.json``) are joined the same
way with a ``model`` column. dvc.yaml's top-level ``plots:`` draws each file as one chart (templates in
``plots/templates/``: colour = stage or model, dash = revision under ``dvc plots diff``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stagetrain.config import Config
from stagetrain.errors import UserError

LIVE_METRICS = Path("plots/metrics")  # inside <live>/<stage>: where runner.py puts dvclive's TSVs
EPOCHS_FROM = "val/mAP50-95"  # one row per validated epoch: its length is the stage's epochs run
SCHEDULE = {"val_map50_95": "val/mAP50-95", "val_map50": "val/mAP50"}  # column -> dvclive metric
LOSSES = {"box_loss": "train/box_loss", "cls_loss": "train/cls_loss", "dfl_loss": "train/dfl_loss"}
# Ultralytics' optimizer groups: pg0 = weights with decay (the main lr), pg1 = BatchNorm weights (same
# schedule), pg2 = biases (which warm up from warmup_bias_lr down to lr0, so they hide the schedule's shape).
LR = {"lr": "lr/pg0"}
OUTPUTS = ("schedule.json", "losses.json", "lr.json", "pr.json", "confusion.json")


def read_tsv(path: Path) -> dict[int, float]:
    """A dvclive TSV (``step``, then the metric's column) as step -> value."""
    with path.open(newline="") as fh:
        reader = csv.reader(fh, delimiter="\t")
        header = next(reader, None)
        if header is None or len(header) < 2 or "step" not in header:
            raise UserError(f"{path}: not a dvclive TSV (expected a header `step<TAB><metric>`); rerun the stage that wrote it")
        step, value = header.index("step"), len(header) - 1
        return {int(row[step]): float(row[value]) for row in reader if row}


def _metric(live: Path, stage: str, name: str) -> dict[int, float]:
    path = live / stage / LIVE_METRICS / f"{name}.tsv"
    if not path.exists():
        raise UserError(f"{path} does not exist: train@{stage} logs it each epoch; run `dvc repro train@{stage}` first")
    return read_tsv(path)


def epochs_run(live: Path, stage: str) -> int:
    """Epochs the stage ran (validated epochs in its dvclive log)."""
    steps = _metric(live, stage, EPOCHS_FROM)
    return max(steps) + 1 if steps else 0


def epoch_offsets(cfg: Config, live: Path) -> dict[str, int]:
    """Stage -> epochs run before its first epoch along its `from:` chain (0 for a stage trained from base)."""
    offsets: dict[str, int] = {}

    def offset(stage: str) -> int:
        if stage not in offsets:
            upstream = cfg.stages[stage].upstream
            offsets[stage] = offset(upstream) + epochs_run(live, upstream) if upstream in cfg.stages else 0
        return offsets[stage]

    for stage in cfg.stages:
        offset(stage)
    return offsets


def stage_rows(cfg: Config, live: Path, columns: Mapping[str, str]) -> list[dict[str, Any]]:
    """One row per (stage, epoch): ``global_epoch``, ``stage``, ``epoch`` and ``columns`` (column -> dvclive metric)."""
    offsets = epoch_offsets(cfg, live)
    rows = []
    for stage in cfg.stages:
        series = {column: _metric(live, stage, metric) for column, metric in columns.items()}
        for step in sorted(set().union(*series.values())):
            values = {column: values.get(step) for column, values in series.items()}  # a gap stays a gap (null)
            rows.append({"global_epoch": offsets[stage] + step + 1, "stage": stage, "epoch": step + 1, **values})
    return rows


def model_rows(folder: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Every ``<model>.json`` list of rows in ``folder`` with a ``model`` column, and the model names (sorted)."""
    if not folder.is_dir():
        raise UserError(f"{folder} does not exist: evaluate writes it; run `dvc repro evaluate` first")
    rows, models = [], []
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        if not isinstance(data, list):
            raise UserError(f"{path}: expected a JSON list of rows (evaluate writes one); rerun `dvc repro evaluate`")
        models.append(path.stem)
        rows += [{"model": path.stem, **row} for row in data]
    return rows, models


def ignored_stages(cfg: Config, live: Path) -> list[str]:
    """dvclive folders under ``live`` no stage of params.yaml owns (a stage since removed): not drawn, listed."""
    found = (p.parent.parent.name for p in live.glob(f"*/{LIVE_METRICS}") if p.is_dir())
    return sorted(name for name in found if name not in cfg.stages)


def run(cfg: Config, live: Path, evaluation: Path, out: Path) -> dict[str, Any]:
    """Write the dashboard's data files to ``out`` (replacing what was there); returns what went in."""
    tables = {
        "schedule.json": stage_rows(cfg, live, SCHEDULE),
        "losses.json": stage_rows(cfg, live, LOSSES),
        "lr.json": stage_rows(cfg, live, LR),
    }
    tables["pr.json"], pr_models = model_rows(evaluation / "pr")
    tables["confusion.json"], confusion_models = model_rows(evaluation / "confusion")
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.json"):
        if stale.name not in tables:
            stale.unlink()
    for name, rows in tables.items():
        (out / name).write_text(json.dumps(rows) + "\n")
    offsets = epoch_offsets(cfg, live)
    return {
        "stages": {s: {"first_epoch": offsets[s] + 1, "epochs": epochs_run(live, s)} for s in cfg.stages},
        "ignored_live_folders": ignored_stages(cfg, live),
        "pr_models": pr_models,
        "confusion_models": confusion_models,
        "rows": {name: len(rows) for name, rows in tables.items()},
    }


# The dashboard page: DVC fills `{plot_divs}` (and `{refresh_tag}` under `dvc plots show --open` live
# refresh). It has no `{scripts}`: that is where DVC puts its CDN <script src> tags, so the page
# carries vega, vega-lite and vega-embed inline instead (plots/vendor/, see its README) and draws offline.
PAGE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
{refresh_tag}
<title>stagetrain plots</title>
<style>
body { font-family: sans-serif; margin: 16px; background: #fff; }
h1 { font-size: 18px; margin: 0 0 4px; }
p.note { color: #555; font-size: 12px; margin: 0 0 12px; }
body > div[id], .plots > div[id] { display: inline-block; vertical-align: top; margin: 8px 24px 24px 0; }
</style>
VENDOR_SCRIPTS
</head>
<body>
<h1>stagetrain: stages on one epoch axis, evaluated models overlaid</h1>
<p class="note">Rendered offline (vega, vega-lite and vega-embed are inlined in this page). Under
<code>dvc plots diff</code> each revision gets its own dash pattern (lines) or column (matrices).</p>
{plot_divs}
</body>
</html>
"""
VENDOR = ("vega.min.js", "vega-lite.min.js", "vega-embed.min.js")  # load order: vega-embed needs the other two


def page_template(vendor: Path) -> str:
    """The HTML template for ``dvc plots show`` (``.dvc/config`` ``[plots] html_template``): PAGE with the vendored JS inlined."""
    scripts = []
    for name in VENDOR:
        code = (vendor / name).read_text(encoding="utf8")
        if "</script" in code.lower() or any(f"{{{p}}}" in code for p in ("plot_divs", "scripts", "refresh_tag")):
            raise UserError(f"{vendor / name}: cannot be inlined (holds `</script` or a DVC placeholder); vendor another build")
        scripts.append(f"<script>/* {name}: plots/vendor/README.md */\n{code}\n</script>")
    return PAGE.replace("VENDOR_SCRIPTS", "\n".join(scripts))


if __name__ == "__main__":  # rebuild the committed template after updating plots/vendor/: python -m stagetrain.plots
    root = Path(__file__).resolve().parents[2]
    (root / "plots/template.html").write_text(page_template(root / "plots/vendor"), encoding="utf8")
