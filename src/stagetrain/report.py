"""metrics/report.md: every stage and every evaluated model in one table, and the verdict.

The verdict applies the rule users apply today, on test mAP50 against the stage named
``baseline``: more than 1 point better -> adopt the staged model; within 1 point -> prefer the
simpler baseline; worse -> keep the baseline and name the stage where val mAP50 fell (forgetting).
"""

from __future__ import annotations

import itertools

from stagetrain.config import Config

BASELINE = "baseline"
MARGIN = 0.01  # one point of mAP50


def chain(cfg: Config, stage: str) -> list[str]:
    """The stages from the first one trained on ``base`` (or on tracked weights) down to ``stage``."""
    names = [stage]
    while cfg.stages[names[0]].upstream in cfg.stages:
        names.insert(0, cfg.stages[names[0]].upstream)
    return names


def verdict(cfg: Config, stage_metrics: dict[str, dict], evaluation: dict[str, dict]) -> str:
    """The decision line of the report: adopt the best staged model, prefer the baseline, or name the lost ground."""
    if BASELINE not in evaluation:
        return f"No verdict: add the single-stage `{BASELINE}` to `evaluate.models` to compare against it."
    candidates = {name: m for name, m in evaluation.items() if name != BASELINE}
    if not candidates:
        return "No verdict: `evaluate.models` holds only the baseline."
    best = max(candidates, key=lambda n: candidates[n]["mAP50"])
    delta = candidates[best]["mAP50"] - evaluation[BASELINE]["mAP50"]
    points = f"{delta * 100:+.1f} points test mAP50"
    if delta > MARGIN:
        return f"**Adopt `{best}`**: {points} over `{BASELINE}`."
    if delta >= -MARGIN:
        return f"**Keep `{BASELINE}`**: `{best}` is within one point ({points}); prefer the simpler single-stage model."
    stages = chain(cfg, best)
    drops = [
        (a, b, stage_metrics[a]["mAP50"] - stage_metrics[b]["mAP50"])
        for a, b in itertools.pairwise(stages)
        if a in stage_metrics and b in stage_metrics and stage_metrics[b]["mAP50"] < stage_metrics[a]["mAP50"]
    ]
    where = (
        "; ".join(f"val mAP50 fell from `{a}` to `{b}` by {d * 100:.1f} points{_val_sets(cfg, a, b)}" for a, b, d in drops)
        if drops
        else "no stage lost val mAP50 along the chain; the staged model never caught up"
    )
    return f"**Keep `{BASELINE}`**: `{best}` is worse ({points}). {where}."


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


def export_lines(export: dict) -> list[str]:
    """The shipped model's formats: file, size, parity with PyTorch and latency ratio at each measured size."""
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


def render(cfg: Config, stage_metrics: dict[str, dict], evaluation: dict[str, dict], export: dict | None = None) -> str:
    """The markdown report: stage table (val), test table with the pycocotools cross-check, export, verdict."""
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
    base = evaluation.get(BASELINE)
    tta = any(m.get("tta") for m in evaluation.values())
    lines += ["", f"## Test split of `{cfg.evaluate.dataset}`" + (" (test-time augmentation on)" if tta else ""), ""]
    lines += [
        _row(["model", "mAP50", "mAP50-95", "precision", "recall", "pycocotools mAP50-95", f"Δ mAP50 vs {BASELINE}"]),
        _row(["---"] * 7),
    ]
    for name, m in evaluation.items():
        coco = f"{m['coco_mAP50-95']:.3f}" if "coco_mAP50-95" in m else "-"
        delta = _delta(m, base) if name != BASELINE else "-"
        lines += [_row([name, *(f"{m[k]:.3f}" for k in ("mAP50", "mAP50-95", "precision", "recall")), coco, delta])]
    gaps = [abs(m["coco_delta_mAP50-95"]) for m in evaluation.values() if "coco_delta_mAP50-95" in m]
    if gaps:
        lines += ["", f"Cross-check: pycocotools scores the same predictions within {max(gaps):.4f} mAP50-95 of Ultralytics."]
    lines += export_lines(export) if export else []
    lines += ["", "## Verdict", "", verdict(cfg, stage_metrics, evaluation), ""]
    return "\n".join(lines)
