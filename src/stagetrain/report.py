"""metrics/report.md: every stage and every evaluated model in one table, and the verdict.

The verdict applies the rule users apply today, on test mAP50 against the stage named
``baseline``: more than 1 point better -> adopt the staged model; within 1 point -> prefer the
simpler baseline; worse -> keep the baseline and name the stage where val mAP50 fell (forgetting).
"""

from __future__ import annotations

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
        for a, b in zip(stages, stages[1:])
        if a in stage_metrics and b in stage_metrics and stage_metrics[b]["mAP50"] < stage_metrics[a]["mAP50"]
    ]
    where = (
        "; ".join(f"val mAP50 fell from `{a}` to `{b}` by {d * 100:.1f} points" for a, b, d in drops)
        if drops
        else "no stage lost val mAP50 along the chain; the staged model never caught up"
    )
    return f"**Keep `{BASELINE}`**: `{best}` is worse ({points}). {where}."


def _row(values: list[str]) -> str:
    return "| " + " | ".join(values) + " |"


def render(cfg: Config, stage_metrics: dict[str, dict], evaluation: dict[str, dict]) -> str:
    """The markdown report."""
    lines = ["# stagetrain report", "", "## Stages (val split of each stage's dataset)", ""]
    lines += [_row(["stage", "from", "dataset", "freeze", "mAP50", "mAP50-95", "precision", "recall", "epochs", "seconds"])]
    lines += [_row(["---"] * 10)]
    for name, stage in cfg.stages.items():
        m = stage_metrics.get(name, {})
        cells = [f"{m[k]:.3f}" if k in m else "-" for k in ("mAP50", "mAP50-95", "precision", "recall")]
        lines += [_row([name, stage.upstream, stage.dataset, str(stage.freeze_level), *cells, str(m.get("epochs_run", "-")), str(m.get("seconds", "-"))])]
    base = evaluation.get(BASELINE)
    lines += ["", f"## Test split of `{cfg.evaluate_dataset}`", ""]
    lines += [_row(["model", "mAP50", "mAP50-95", "precision", "recall", f"Δ mAP50 vs {BASELINE}"]), _row(["---"] * 6)]
    for name, m in evaluation.items():
        delta = f"{(m['mAP50'] - base['mAP50']) * 100:+.1f} pt" if base and name != BASELINE else "-"
        lines += [_row([name, *(f"{m[k]:.3f}" for k in ("mAP50", "mAP50-95", "precision", "recall")), delta])]
    lines += ["", "## Verdict", "", verdict(cfg, stage_metrics, evaluation), ""]
    return "\n".join(lines)
