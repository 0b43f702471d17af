"""The forgetting matrix: every evaluated model on the test split of every labelled dataset, and what it lost there.

For model M and dataset D the reference is the last stage of M's chain (``report.chain``: from the
first stage trained on ``base`` down to M) whose ``dataset`` is D, i.e. the stage that learnt D last.
M's drop on D is M - reference in COCO mAP50-95 and mAP50 on D's split, with the paired bootstrap
95% interval the verdict uses (``evaluate.resamples`` draws, seeded by ``seed``). M is its own
reference when it trained on D itself (no drop), and has none when no stage of its chain trained
on D (the baseline on the source): then the cell holds the score alone.

Everything here works on ``stats.DetectionRecords``; scoring the checkpoints is evaluate's job, and
each (model, dataset) pair is scored once, the verdict's pairs included.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from stagetrain import stats
from stagetrain.config import Config
from stagetrain.report import chain

DIRECTION = "model - reference"
NOT_TRAINED = "not trained on it"
TRAINED_HERE = "trained on it: its own reference"
ALPHA = 0.05  # 1 - confidence of the drop's interval, as the verdict's


def rows(cfg: Config) -> tuple[str, ...]:
    """The matrix's models: ``evaluate.models``, then (with ``evaluate.all_stages``) every other stage in params order."""
    extra = [name for name in cfg.stages if name not in cfg.evaluate.models] if cfg.evaluate.all_stages else []
    return (*cfg.evaluate.models, *extra)


def reference(cfg: Config, model: str, dataset: str) -> str | None:
    """The last stage of ``model``'s chain trained on ``dataset`` (``model`` itself when it was), or None."""
    return next((stage for stage in reversed(chain(cfg, model)) if cfg.stages[stage].dataset == dataset), None)


def to_score(cfg: Config, dataset: str) -> tuple[str, ...]:
    """The models scored on ``dataset``: the matrix's rows, then the references of their cells that are not rows."""
    models = rows(cfg)
    references = (reference(cfg, model, dataset) for model in models)
    return (*models, *dict.fromkeys(ref for ref in references if ref is not None and ref not in models))


def matrix(cfg: Config, records: Mapping[str, Mapping[str, stats.DetectionRecords]], skipped: Mapping[str, str]) -> dict[str, Any]:
    """The ``forgetting`` entry of eval.json.

    Args:
        cfg: the config (its ``evaluate.datasets``, ``split``, ``resamples`` and ``seed``).
        records: ``{dataset: {model: records}}`` for every scored dataset and every model of ``to_score``.
        skipped: ``{dataset: why}`` for the datasets of ``evaluate.datasets`` that could not be scored.

    Returns:
        ``split``, ``direction``, ``resamples``, ``seed``, ``confidence``, ``seconds`` and ``datasets``:
        per dataset (in ``evaluate.datasets`` order) ``{"skipped": why}`` or its ``images``,
        ``instances`` and ``models``: per row a cell with ``mAP50-95``, ``mAP50`` (COCO, pycocotools-exact),
        ``reference`` and either ``note`` (no drop) or ``reference_mAP50-95``, ``drop_mAP50-95`` and
        ``drop_mAP50`` (each ``diff``, ``ci_low``, ``ci_high``).
    """
    started = time.perf_counter()
    datasets: dict[str, Any] = {}
    for dataset in cfg.evaluate.datasets:
        if dataset in skipped:
            datasets[dataset] = {"skipped": skipped[dataset]}
            continue
        scored = records[dataset]
        first = scored[next(iter(scored))]
        cells = {model: _cell(cfg, scored, model, dataset) for model in rows(cfg)}
        datasets[dataset] = {"images": first.n_images, "instances": int(first.n_gt.sum()), "models": cells}
    return {
        "split": cfg.evaluate.split,
        "direction": DIRECTION,
        "resamples": cfg.evaluate.resamples,
        "seed": cfg.seed,
        "confidence": 1 - ALPHA,
        "seconds": round(time.perf_counter() - started, 2),
        "datasets": datasets,
    }


def _cell(cfg: Config, scored: Mapping[str, stats.DetectionRecords], model: str, dataset: str) -> dict[str, Any]:
    ref = reference(cfg, model, dataset)
    score = stats.mean_ap(scored[model])
    cell: dict[str, Any] = {"mAP50-95": round(score.map50_95, 6), "mAP50": round(score.map50, 6), "reference": ref}
    if ref is None or ref == model:
        return cell | {"note": NOT_TRAINED if ref is None else TRAINED_HERE}
    boot = stats.paired_bootstrap(scored[ref], scored[model], resamples=cfg.evaluate.resamples, seed=cfg.seed, alpha=ALPHA)
    cell["reference_mAP50-95"] = round(boot["map50_95"]["a"], 6)
    for metric, key in (("map50_95", "drop_mAP50-95"), ("map50", "drop_mAP50")):
        cell[key] = {k: round(boot[metric][k], 6) for k in ("diff", "ci_low", "ci_high")}
    return cell


def chart_rows(matrix: Mapping[str, Any]) -> list[dict[str, Any]]:
    """metrics/eval/forgetting.json: the matrix as rows ``{model, dataset, map50_95, drop}`` for a heatmap.

    ``drop`` is model - reference in test mAP50-95 (negative: forgotten), None where the cell has no
    reference stage other than the model itself; datasets that were skipped have no rows.
    """
    return [
        {
            "model": model,
            "dataset": dataset,
            "map50_95": cell["mAP50-95"],
            "drop": cell["drop_mAP50-95"]["diff"] if "drop_mAP50-95" in cell else None,
        }
        for dataset, entry in matrix.get("datasets", {}).items()
        for model, cell in entry.get("models", {}).items()
    ]
