"""``select:``: active-learning rounds, each a ``select@<round>`` stage that packages pool images for annotation."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from stagetrain.config.checks import at_least, check_keys, name, one_of, require, section, suggest, typed
from stagetrain.config.schema import BASE, Config, SelectSpec
from stagetrain.errors import UserError

KEYS = ("model", "dataset", "budget", "strategy", "band", "conf", "preannotate", "diversity")
MAX_DIVERSITY = 64  # as organize.near_duplicates: beyond a quarter of the 256 hash bits, different images start to match
STRATEGY_HELP = "least_confidence | margin | band | random (random is the control)"


def _fraction(value: Any, at: str, src: str, why: str, top_open: bool = False) -> float:
    value = typed(value, float, at, src)
    if not 0 <= value <= 1 or (top_open and value == 1):
        raise UserError(f"{src}: `{at}` is {value!r}; use a confidence in [0, {'1)' if top_open else '1]'} ({why})")
    return float(value)


def _band(raw: Any, at: str, src: str) -> tuple[float, float]:
    band = typed(raw, list, at, src)
    if len(band) != 2:
        raise UserError(f"{src}: `{at}` is {band!r}; use [min, max], two confidences, e.g. [0.2, 0.6]")
    low, high = (_fraction(v, f"{at}[{i}]", src, "the uncertain band's bounds") for i, v in enumerate(band))
    if low >= high:
        raise UserError(f"{src}: `{at}` is {band!r}; min must be below max, e.g. [0.2, 0.6]")
    return low, high


def select_round(key: Any, raw: Any, src: str) -> SelectSpec:
    path = f"select.{key}"
    round_name = name(key, path, src)
    raw = typed(raw, dict, path, src)
    check_keys(raw, KEYS, path, src)
    budget = require(raw, "budget", int, path, src)
    at_least(budget, 1, f"{path}.budget", src, "images in the annotation package")
    strategy = require(raw, "strategy", str, path, src)
    one_of(strategy, SelectSpec.STRATEGIES, f"{path}.strategy", src, STRATEGY_HELP)
    diversity = typed(raw.get("diversity", SelectSpec.diversity), int, f"{path}.diversity", src)
    if not 0 <= diversity <= MAX_DIVERSITY:
        raise UserError(
            f"{src}: `{path}.diversity` is {diversity}; use 0 (off) to {MAX_DIVERSITY} bits of the 256-bit pHash "
            "(near-identical images sit within ~24 bits, different ones ~128 apart)"
        )
    return SelectSpec(
        name=round_name,
        model=require(raw, "model", str, path, src),
        dataset=require(raw, "dataset", str, path, src),
        budget=budget,
        strategy=strategy,
        band=_band(raw.get("band", list(SelectSpec.band)), f"{path}.band", src),
        conf=_fraction(raw.get("conf", SelectSpec.conf), f"{path}.conf", src, "detections below it are not looked at", top_open=True),
        preannotate=_fraction(
            raw.get("preannotate", SelectSpec.preannotate), f"{path}.preannotate", src, "detections at or above it become pre-annotations"
        ),
        diversity=diversity,
    )


def rounds(raw: Mapping[str, Any], src: str) -> Mapping[str, SelectSpec]:
    """``select:`` (optional; null or {} = no rounds) -> round name -> :class:`SelectSpec`."""
    block = section(raw, "select", "", src) if raw.get("select") is not None else {}
    return MappingProxyType({str(key): select_round(key, value, src) for key, value in block.items()})


def check_references(cfg: Config) -> None:
    """Each round's model is a stage, ``base`` or an init, and its dataset exists and can have a pool."""
    src = cfg.source
    models = [BASE, *cfg.inits, *cfg.stages]
    for spec in cfg.select.values():
        where = f"select.{spec.name}"
        if spec.model not in models:
            hint = suggest(spec.model, models)
            raise UserError(
                f"{src}: `{where}.model` names no stage: {spec.model!r}; use one of {', '.join(models)}" + (f"; {hint}" if hint else "")
            )
        if spec.dataset not in cfg.datasets:
            hint = suggest(spec.dataset, list(cfg.datasets))
            raise UserError(
                f"{src}: `{where}.dataset` names no dataset: {spec.dataset!r}; use one of {', '.join(cfg.datasets)}"
                + (f"; {hint}" if hint else "")
            )
        data = cfg.datasets[spec.dataset]
        if data.kind == "synthetic" and not data.options.get("pool"):
            raise UserError(
                f"{src}: `{where}.dataset: {spec.dataset}` has no unlabelled pool to select from; "
                f"set `datasets.{spec.dataset}.synthetic.pool: N` (the fixed-split form) or pick a dataset with a pool/ folder"
            )
        if data.kind == "annotations":
            raise UserError(
                f"{src}: `{where}.dataset: {spec.dataset}` is an imported annotation package (every image is labelled); "
                "select from the dataset whose pool the package came from"
            )
