"""metrics/report.md: every stage and every evaluated model in one table, and the verdict.

The verdict compares each evaluated model with the stage named ``baseline`` on test mAP50-95,
through the 95% paired bootstrap interval of the difference that evaluate stores in eval.json
(``vs_baseline``): adopt the model when the whole interval lies above ``evaluate.margin``; keep the
baseline when it lies below -margin, naming the stage where val mAP50 fell (forgetting); otherwise
there is no detectable difference and the simpler single-stage baseline is preferred.

After the verdict, the forgetting matrix (eval.json's ``forgetting``): each model on every dataset's
test split, with its drop against the stage that trained on that dataset, and one line reading it.

Charts (``stagetrain.charts``, PNG files linked relatively) follow the tables they illustrate: the val
curve along the schedule after the stage table, per-class AP after the test table, the matrix's heatmap
after the matrix.
"""

from __future__ import annotations

import itertools
from statistics import NormalDist
from typing import TYPE_CHECKING

from stagetrain.config import Config, EvaluateSpec
from stagetrain.stats import Decision

if TYPE_CHECKING:  # rendering reads the links only: stages that import this module (calibrate) need no matplotlib
    from stagetrain.charts import Charts

BASELINE = EvaluateSpec.BASELINE
FORGETTING = EvaluateSpec.FORGETTING


def chain(cfg: Config, stage: str) -> list[str]:
    """The stages from the first one trained on ``base`` (or on tracked weights) down to ``stage``."""
    names = [stage]
    while cfg.stages[names[0]].upstream in cfg.stages:
        names.insert(0, cfg.stages[names[0]].upstream)
    return names


def models_of(evaluation: dict[str, dict]) -> dict[str, dict]:
    """eval.json's per-model entries (on ``evaluate.dataset``), without the forgetting matrix beside them."""
    return {name: entry for name, entry in evaluation.items() if name != FORGETTING}


def verdict(cfg: Config, stage_metrics: dict[str, dict], evaluation: dict[str, dict]) -> str:
    """The decision of the report, one paragraph per evaluated model against the baseline."""
    evaluation = models_of(evaluation)
    if BASELINE not in evaluation:
        return f"No verdict: add the single-stage `{BASELINE}` to `evaluate.models` to compare against it."
    candidates = [name for name in evaluation if name != BASELINE]
    if not candidates:
        return "No verdict: `evaluate.models` holds only the baseline."
    return "\n\n".join(_model_verdict(cfg, stage_metrics, name, evaluation[name].get("vs_baseline")) for name in candidates)


def _model_verdict(cfg: Config, stage_metrics: dict[str, dict], name: str, versus: dict | None) -> str:
    """Adopt, keep the baseline (and where ground was lost), or no detectable difference, with the interval."""
    if not versus or "map50_95" not in versus:
        why = (versus or {}).get("skipped", "eval.json holds no comparison with the baseline; rerun evaluate")
        return f"No verdict for `{name}`: {why}."
    m, margin = versus["map50_95"], f"{_pt(versus['margin'], sign=False)} pt"
    interval = f"Δ test mAP50-95 {_pt(m['diff'])} pt, 95% CI [{_pt(m['ci_low'])}, {_pt(m['ci_high'])}] pt"
    decision = Decision(versus["verdict"])
    if decision is Decision.ADOPT:
        return f"**Adopt `{name}`**: better than `{BASELINE}` by more than the {margin} margin ({interval})."
    if decision is Decision.KEEP_BASELINE:
        lost = _lost_ground(cfg, stage_metrics, name)
        return f"**Keep `{BASELINE}`**: `{name}` is worse by more than the {margin} margin ({interval})." + (f" {lost}." if lost else "")
    if -versus["margin"] <= m["ci_low"] and m["ci_high"] <= versus["margin"]:
        why = f"the whole interval lies within ±{margin}"
    else:
        why = f"the interval is too wide to tell whether the difference exceeds {margin}; more test images would narrow it"
    return (
        f"**No detectable difference** between `{name}` and `{BASELINE}`: prefer the simpler model, `{BASELINE}` "
        f"({interval}; {why}). The smallest difference these {versus['images']} {cfg.evaluate.split} images can detect is "
        f"{_pt(m['detectable'], sign=False)} pt ({_pt(m['detectable_80_power'], sign=False)} pt to find it 80% of the time)."
    )


def _lost_ground(cfg: Config, stage_metrics: dict[str, dict], name: str) -> str:
    """Where val mAP50 fell along the model's chain of stages: forgetting (or a domain shift, when val sets differ).

    Empty when fewer than two stages of the chain have val metrics: then there is nothing to compare.
    """
    stages = chain(cfg, name) if name in cfg.stages else [name]
    if sum(stage in stage_metrics for stage in stages) < 2:
        return ""
    drops = [
        (a, b, stage_metrics[a]["mAP50"] - stage_metrics[b]["mAP50"])
        for a, b in itertools.pairwise(stages)
        if a in stage_metrics and b in stage_metrics and stage_metrics[b]["mAP50"] < stage_metrics[a]["mAP50"]
    ]
    if not drops:
        return "No stage lost val mAP50 along the chain; the staged model never caught up"
    return "; ".join(f"Val mAP50 fell from `{a}` to `{b}` by {d * 100:.1f} points{_val_sets(cfg, a, b)}" for a, b, d in drops)


def _pt(value: float, sign: bool = True) -> str:
    """An mAP difference in points (0.01 = one point), signed unless ``sign`` is off; no unit."""
    return f"{value * 100:+.1f}" if sign else f"{value * 100:.1f}"


def _val_sets(cfg: Config, a: str, b: str) -> str:
    """A note when two stages were validated on different datasets: the drop is then a domain shift, not forgetting."""
    da, db = cfg.stages[a].dataset, cfg.stages[b].dataset
    return f" (val sets differ: `{da}` -> `{db}`)" if da != db else ""


def _row(values: list[str]) -> str:
    return "| " + " | ".join(values) + " |"


def _delta(m: dict | None, base: dict | None) -> str:
    if not m or not base or "mAP50" not in m or "mAP50" not in base:
        return "-"
    return f"{(m['mAP50'] - base['mAP50']) * 100:+.1f} pt"


def _per_size(entry: dict, key: str) -> str:
    return ", ".join(f"{value} @ {size} px" for size, value in entry.get(key, {}).items()) or "-"


EXPORT_FORMATS = ("onnx", "openvino", "engine")


def export_lines(export: dict) -> list[str]:
    """The shipped model's formats: file, size, parity with PyTorch and latency ratio at each measured size.

    Reads both shapes of metrics/export.json: one entry per format, or flat ``<format>_<figure>`` keys.
    """
    if not any(isinstance(export.get(fmt), dict) for fmt in EXPORT_FORMATS):
        return _flat_export_lines(export)
    lines = ["", f"## Export of `{export.get('model', '?')}` (metrics/export.json)", ""]
    lines += [_row(["format", "file", "MB", "max abs diff", "Δ mAP50 vs PyTorch", "latency ms", "latency vs PyTorch"]), _row(["---"] * 7)]
    for fmt in ("onnx", "engine"):
        entry = export.get(fmt)
        if entry is None:
            continue
        if "skipped" in entry:
            lines += [_row([fmt, f"skipped: {entry['skipped']}", *["-"] * 5])]
            continue
        diff = f"{entry['max_abs_diff']:.2e}" if "max_abs_diff" in entry else "-"
        delta = f"{entry['mAP50_diff'] * 100:+.2f} pt" if "mAP50_diff" in entry else "-"
        lines += [
            _row(
                [
                    fmt,
                    f"`{entry['file']}`",
                    f"{entry['bytes'] / 1e6:.1f}",
                    diff,
                    delta,
                    _per_size(entry, "latency_ms"),
                    _per_size(entry, "latency_ratio"),
                ]
            )
        ]
    return lines


def _flat_export_lines(export: dict) -> list[str]:
    """The flat export.json: per format, the parity gate's figures and the latency ratio at each measured size."""
    lines = ["", f"## Export of `{export.get('model', '?')}` (metrics/export.json; detail in models/export/)", ""]
    lines += [_row(["format", "matched", "max Δconf", "Δ mAP50 vs PyTorch", "latency vs PyTorch"]), _row(["---"] * 5)]
    for fmt in EXPORT_FORMATS:
        if f"{fmt}_skipped" in export:
            lines += [_row([fmt, f"skipped: {export[f'{fmt}_skipped']}", "-", "-", "-"])]
            continue
        if f"{fmt}_matched" not in export:
            continue
        prefix = f"{fmt}_latency_ratio_"
        ratios = ", ".join(f"{v}× @ {k.removeprefix(prefix)} px" for k, v in export.items() if k.startswith(prefix)) or "-"
        conf, delta = export.get(f"{fmt}_max_conf_delta"), export.get(f"{fmt}_map50_delta")
        cells = [
            f"{export[f'{fmt}_matched']:.1%}",
            "-" if conf is None else f"{conf:.4f}",
            "-" if delta is None else f"{delta * 100:+.2f} pt",
        ]
        lines += [_row([fmt, *cells, ratios])]
    return lines


def _with_ci(entry: dict | None) -> str:
    """``+1.2 [-0.3, +2.8]``: an observed difference in points and its 95% interval."""
    return f"{_pt(entry['diff'])} [{_pt(entry['ci_low'])}, {_pt(entry['ci_high'])}]" if entry else "-"


def evaluation_lines(cfg: Config, evaluation: dict[str, dict]) -> list[str]:
    """The test table: Ultralytics' metrics, the pycocotools cross-check, and each model's difference to the baseline."""
    tta = any(m.get("tta") for m in evaluation.values())
    lines = ["", f"## Test split of `{cfg.evaluate.dataset}`" + (" (test-time augmentation on)" if tta else ""), ""]
    header = ["model", "mAP50", "mAP50-95", "precision", "recall", "pycocotools mAP50-95"]
    header += [f"Δ mAP50-95 vs {BASELINE} (95% CI), pt", f"Δ mAP50 vs {BASELINE} (95% CI), pt", "detectable Δ mAP50-95, pt"]
    lines += [_row(header), _row(["---"] * len(header))]
    for name, m in evaluation.items():
        versus = m.get("vs_baseline") or {}
        coco = f"{m['coco_mAP50-95']:.3f}" if "coco_mAP50-95" in m else "-"
        detectable = f"±{_pt(versus['map50_95']['detectable'], sign=False)}" if "map50_95" in versus else "-"
        cells = [_with_ci(versus.get("map50_95")), _with_ci(versus.get("map50")), detectable]
        lines += [_row([name, *(f"{m[k]:.3f}" for k in ("mAP50", "mAP50-95", "precision", "recall")), coco, *cells])]
    compared = next((m["vs_baseline"] for m in evaluation.values() if "map50_95" in m.get("vs_baseline", {})), None)
    if compared:
        z = NormalDist().inv_cdf(0.5 + compared["confidence"] / 2)
        note = (
            f"Δ: model - `{BASELINE}` in COCO mAP (pycocotools' matching) of the same predictions, with a paired bootstrap "
            f"{compared['confidence']:.0%} interval over the {compared['images']} {cfg.evaluate.split} images ({compared['resamples']} resamples, "
            f"seed {compared['seed']}). Detectable: the smallest difference this split can call significant "
            f"({z:.2f} × the bootstrap standard error)."
        )
        lines += ["", note]
    lines += [ensemble_note(name, m["ensemble"]) for name, m in evaluation.items() if "ensemble" in m]
    return lines


def ensemble_note(name: str, spec: dict) -> str:
    """How an ``evaluate.ensembles`` row was made: its members and weighted boxes fusion settings."""
    members = " + ".join(f"`{m}` (×{w:g})" for m, w in zip(spec["models"], spec["weights"]))
    return (
        f"\n`{name}`: weighted boxes fusion of {members}, IoU {spec['iou']:g}, skip < {spec['skip']:g}, confidence `{spec['conf_type']}`; "
        "scored by pycocotools' matching, precision/recall at the confidence maximising the class-mean F1 (Ultralytics' rule)."
    )


def _chart(charts: Charts | None, name: str, alt: str) -> list[str]:
    """A chart's image line (its link relative to report.md), or nothing when it was not drawn."""
    return ["", f"![{alt}]({charts.files[name]})"] if charts and name in charts.files else []


def render(
    cfg: Config, stage_metrics: dict[str, dict], evaluation: dict[str, dict], export: dict | None = None, charts: Charts | None = None
) -> str:
    """The markdown report: stage table (val), test table with the pycocotools cross-check, export, verdict, forgetting.

    ``charts`` holds the PNG links (relative to report.md) placed under their tables.
    """
    matrix, evaluation = evaluation.get(FORGETTING), models_of(evaluation)
    # Val deltas only compare stages validated on the baseline's dataset: other val splits are other questions.
    base_dataset = cfg.stages[BASELINE].dataset if BASELINE in cfg.stages else None
    lines = ["# stagetrain report", "", "## Stages (val split of each stage's dataset)", ""]
    lines += [
        _row(
            [
                "stage",
                "from",
                "dataset",
                "freeze",
                "mAP50",
                "mAP50-95",
                "precision",
                "recall",
                "epochs",
                "seconds",
                f"Δ mAP50 vs {BASELINE}",
            ]
        )
    ]
    lines += [_row(["---"] * 11)]
    for name, stage in cfg.stages.items():
        m = stage_metrics.get(name, {})
        cells = [f"{m[k]:.3f}" if k in m else "-" for k in ("mAP50", "mAP50-95", "precision", "recall")]
        comparable = name != BASELINE and stage.dataset == base_dataset
        delta = _delta(m, stage_metrics.get(BASELINE)) if comparable else "-"
        start = stage.upstream + (f" + {stage.distill.kind} KD from {stage.teacher}" if stage.distill else "")
        lines += [
            _row(
                [
                    name,
                    start,
                    stage.dataset,
                    str(stage.freeze_level),
                    *cells,
                    str(m.get("epochs_run", "-")),
                    str(m.get("seconds", "-")),
                    delta,
                ]
            )
        ]
    lines += _chart(charts, "schedule", "Val mAP50-95 per epoch along the schedule, stage boundaries marked, the baseline beside it")
    lines += evaluation_lines(cfg, evaluation)
    lines += _chart(charts, "per_class", "Per-class test AP50-95 of the evaluated models")
    gaps = [abs(m["coco_delta_mAP50-95"]) for m in evaluation.values() if "coco_delta_mAP50-95" in m]
    if gaps:
        lines += ["", f"Cross-check: pycocotools scores the same predictions within {max(gaps):.4f} mAP50-95 of Ultralytics."]
    lines += export_lines(export) if export else []
    lines += ["", "## Verdict", "", verdict(cfg, stage_metrics, evaluation), ""]
    lines += (
        [*forgetting_lines(matrix), *_chart(charts, "forgetting", "Forgetting matrix: test mAP50-95 per model and dataset"), ""]
        if matrix
        else []
    )
    return "\n".join(lines)


def forgetting_lines(matrix: dict) -> list[str]:
    """The model x dataset table of eval.json's ``forgetting``, the datasets it skipped, and one line reading it."""
    scored = {name: entry for name, entry in matrix["datasets"].items() if "models" in entry}
    lines = ["## Forgetting matrix", ""]
    if scored:
        header = ["model", *(f"{name} ({entry['images']} {matrix['split']} images)" for name, entry in scored.items())]
        lines += [_row(header), _row(["---"] * len(header))]
        for model in dict.fromkeys(m for entry in scored.values() for m in entry["models"]):
            lines += [_row([model, *(_matrix_cell(entry["models"].get(model)) for entry in scored.values())])]
        note = (
            f"Test mAP50-95 (COCO, pycocotools-exact); in brackets the drop: model − the last stage of its chain trained on that "
            f"dataset, in points, with its {matrix['confidence']:.0%} paired-bootstrap interval ({matrix['resamples']} resamples, "
            f"seed {matrix['seed']})."
        )
        lines += ["", note]
    lines += [f"Not scored: `{name}`: {entry['skipped']}." for name, entry in matrix["datasets"].items() if "skipped" in entry]
    return [*lines, "", forgetting_reading(matrix)]


def _matrix_cell(cell: dict | None) -> str:
    if cell is None:
        return "-"
    if "drop_mAP50-95" not in cell:
        return f"{cell['mAP50-95']:.3f} ({'trained on it' if cell['reference'] else 'not trained on it'})"
    return f"{cell['mAP50-95']:.3f} ({_with_ci(cell['drop_mAP50-95'])} vs {cell['reference']})"


def forgetting_reading(matrix: dict) -> str:
    """One line: what each model lost (or gained) on a dataset an earlier stage of its chain trained on."""
    readings = []
    for dataset, entry in matrix["datasets"].items():
        for model, cell in entry.get("models", {}).items():
            if "drop_mAP50-95" not in cell:
                continue
            drop, ref = cell["drop_mAP50-95"], cell["reference"]
            change = f"{cell['reference_mAP50-95']:.3f} → {cell['mAP50-95']:.3f}, 95% CI [{_pt(drop['ci_low'])}, {_pt(drop['ci_high'])}] pt"
            if drop["ci_high"] < 0:
                readings.append(f"`{model}` lost {_pt(-drop['diff'], sign=False)} pt mAP50-95 on `{dataset}` vs `{ref}` ({change})")
            elif drop["ci_low"] > 0:
                readings.append(f"`{model}` gained {_pt(drop['diff'], sign=False)} pt mAP50-95 on `{dataset}` vs `{ref}` ({change})")
            else:
                readings.append(f"`{model}` kept its mAP50-95 on `{dataset}` vs `{ref}` within noise ({_pt(drop['diff'])} pt; {change})")
    if not readings:
        return "Reading: no evaluated model was trained on a dataset before moving on to another: nothing to forget here."
    return "Reading: " + "; ".join(readings) + "."
