"""``train:`` and ``stages:``: each stage's own keys, its effective Ultralytics arguments, distillation, loss gains and replay."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from stagetrain.config.checks import at_least, check_keys, name, one_of, require, suggest, typed
from stagetrain.config.schema import (
    DISTILL_KINDS,
    FREEZE_LEVELS,
    LOSS_TERMS,
    REQUIRED_STAGE_KEYS,
    STAGE_KEYS,
    Config,
    DistillSpec,
    HardNegativesSpec,
    StageSpec,
)
from stagetrain.config.ultralytics_args import ultralytics_args, ultralytics_defaults
from stagetrain.errors import UserError

MAX_OVERSAMPLE = 20.0  # beyond it one class's images swamp an epoch: raise the class's loss weight or collect more data


def stage(key: Any, raw: Any, train: Mapping[str, Any], src: str) -> StageSpec:
    """One ``stages.<name>`` block, its Ultralytics arguments merged over the ``train`` defaults."""
    path = f"stages.{key}"
    stage_name = name(key, path, src)
    raw = typed(raw, dict, path, src)
    if "teacher" not in raw:
        raise UserError(
            f"{src}: missing key `{path}.teacher`; every stage names one (DVC needs the key on every stage): "
            f"its `from` ({raw.get('from')!r}) unless it has a `distill:` block"
        )
    for required in REQUIRED_STAGE_KEYS:
        name(require(raw, required, str, path, src), f"{path}.{required}", src)
    freeze_level = typed(raw.get("freeze_level", 0), int, f"{path}.freeze_level", src)
    if freeze_level not in FREEZE_LEVELS:
        levels = ", ".join(f"{k} ({v})" for k, v in FREEZE_LEVELS.items())
        raise UserError(f"{src}: `{path}.freeze_level` is {freeze_level}; use {levels}")
    args = {**train, **ultralytics_args(raw, path, src, own=STAGE_KEYS), **_loss_weights(raw, path, src)}
    _check_mosaic(args, raw, path, src)
    distill = _distill(raw["distill"], f"{path}.distill", src) if raw.get("distill") is not None else None
    replay = MappingProxyType(_replay(raw, f"{path}.replay", src))
    oversample = MappingProxyType(_oversample(raw, f"{path}.oversample", src))
    mining = _hard_negatives(raw["hard_negatives"], f"{path}.hard_negatives", src) if raw.get("hard_negatives") is not None else None
    return StageSpec(
        stage_name, raw["from"], raw["dataset"], freeze_level, MappingProxyType(args), raw["teacher"], distill, replay, oversample, mining
    )


def _replay(raw: Mapping[str, Any], at: str, src: str) -> dict[str, float]:
    """``replay: {<dataset>: <fraction>}`` (absent, null or ``{}``: none), sorted by dataset name."""
    replay = typed(raw.get("replay") if raw.get("replay") is not None else {}, dict, at, src)
    out = {}
    for key, value in replay.items():
        dataset = name(key, f"{at}.{key}", src)
        fraction = typed(value, float, f"{at}.{dataset}", src)
        if not 0 < fraction <= 1:
            raise UserError(
                f"{src}: `{at}.{dataset}` is {fraction!r}; use a fraction in (0, 1] of {dataset}'s train split "
                "(0.2 = a fifth of its images, 1 = all of them); to replay nothing, remove the entry"
            )
        out[dataset] = fraction
    return dict(sorted(out.items()))


def _oversample(raw: Mapping[str, Any], at: str, src: str) -> dict[str, float]:
    """``oversample: {<class>: <factor>}`` (absent, null or ``{}``: none), sorted by class name; names are checked by
    :func:`check_data_loop`, which knows the class list."""
    oversample = typed(raw.get("oversample") if raw.get("oversample") is not None else {}, dict, at, src)
    out = {}
    for key, value in oversample.items():
        cls = typed(key, str, f"{at}.{key}", src)
        factor = typed(value, float, f"{at}.{cls}", src)
        if not 1 <= factor <= MAX_OVERSAMPLE:
            raise UserError(
                f"{src}: `{at}.{cls}` is {factor!r}; use a factor in [1, {MAX_OVERSAMPLE}]: each train image holding a {cls} "
                "is listed that many times (2.5 = twice, and a seeded half of them a third time); 1 = no oversampling"
            )
        out[cls] = factor
    return dict(sorted(out.items()))


def _hard_negatives(raw: Any, at: str, src: str) -> HardNegativesSpec:
    """``hard_negatives: {conf, iou, copies, pool, max_images}`` (``{}``: every default); the pool is checked by
    :func:`check_data_loop`, which knows the datasets."""
    raw = typed(raw, dict, at, src)
    check_keys(raw, HardNegativesSpec.KEYS, at, src)
    default = HardNegativesSpec()
    conf = typed(raw.get("conf", default.conf), float, f"{at}.conf", src)
    iou = typed(raw.get("iou", default.iou), float, f"{at}.iou", src)
    for key, value, why in (("conf", conf, "the confidence a false positive reaches"), ("iou", iou, "the IoU that makes a match")):
        if not 0 < value < 1:
            raise UserError(f"{src}: `{at}.{key}` is {value!r}; use a value in (0, 1) ({why})")
    copies = typed(raw.get("copies", default.copies), int, f"{at}.copies", src)
    at_least(copies, 1, f"{at}.copies", src, "times each mined image joins the training list")
    pool = raw.get("pool")
    pool = None if pool is None else name(pool, f"{at}.pool", src)
    max_images = typed(raw.get("max_images"), (int, type(None)), f"{at}.max_images", src)
    if max_images is not None:
        at_least(max_images, 1, f"{at}.max_images", src, "keeps the images with the most false positives; null = all")
    return HardNegativesSpec(conf, iou, copies, pool, max_images)


def check_data_loop(cfg: Config) -> None:
    """Oversampled classes are canonical classes; a mining pool is a defined dataset other than the stage's own."""
    for stage in cfg.stages.values():
        for cls in stage.oversample:
            if cls not in cfg.classes:
                hint = suggest(cls, cfg.classes)
                raise UserError(
                    f"{cfg.source}: `stages.{stage.name}.oversample.{cls}` names no class; use one of `classes:` "
                    f"({', '.join(cfg.classes)})" + (f"; {hint}" if hint else "")
                )
        pool = stage.hard_negatives.pool if stage.hard_negatives else None
        if pool is not None and (pool not in cfg.datasets or pool == stage.dataset):
            at = f"stages.{stage.name}.hard_negatives.pool"
            if pool == stage.dataset:
                raise UserError(f"{cfg.source}: `{at}` is the stage's own dataset (mined already); name another dataset or null")
            hint = suggest(pool, list(cfg.datasets))
            raise UserError(
                f"{cfg.source}: `{at}` names no dataset: {pool!r}; use one defined under `datasets:` ({', '.join(cfg.datasets)})"
                + (f"; {hint}" if hint else "")
            )


def check_replay(cfg: Config) -> None:
    """Every dataset a stage replays exists and is not the stage's own (whose whole train split it trains on already)."""
    for stage in cfg.stages.values():
        for dataset in stage.replay:
            at = f"stages.{stage.name}.replay.{dataset}"
            if dataset not in cfg.datasets:
                hint = suggest(dataset, list(cfg.datasets))
                raise UserError(
                    f"{cfg.source}: `{at}` names no dataset: {dataset!r}; replay one defined under `datasets:` "
                    f"({', '.join(cfg.datasets)})" + (f"; {hint}" if hint else "")
                )
            if dataset == stage.dataset:
                raise UserError(
                    f"{cfg.source}: `{at}`: {dataset!r} is the stage's own dataset, whose whole train split it trains on "
                    "already; replay another dataset (e.g. the one an earlier stage trained on) or remove the entry"
                )


def _check_mosaic(args: Mapping[str, Any], raw: Mapping[str, Any], path: str, src: str) -> None:
    """A mosaic set in `train` or the stage that Ultralytics' close_mosaic would switch off for the whole stage."""
    if not args.get("mosaic"):
        return  # unset: Ultralytics' default, not a choice the user made
    epochs = args.get("epochs", ultralytics_defaults()["epochs"])
    close_mosaic = args.get("close_mosaic", ultralytics_defaults()["close_mosaic"])
    if close_mosaic >= epochs:
        origin = path if "mosaic" in raw else "train"
        raise UserError(
            f"{src}: `{origin}.mosaic: {args['mosaic']}` would never run in `{path}`: Ultralytics turns mosaic off for the last "
            f"close_mosaic ({close_mosaic}) of the stage's {epochs} epochs; set `{path}.close_mosaic` below {epochs} (e.g. 0)"
        )


def _loss_weights(raw: Mapping[str, Any], path: str, src: str) -> dict[str, float]:
    at = f"{path}.loss_weights"
    weights = typed(raw.get("loss_weights") if raw.get("loss_weights") is not None else {}, dict, at, src)
    check_keys(weights, LOSS_TERMS, at, src)
    out = {}
    for term, value in weights.items():
        if term in raw:
            raise UserError(f"{src}: `{path}.{term}` and `{at}.{term}` both set the {term} loss gain; keep one")
        out[term] = typed(value, float, f"{at}.{term}", src)
        at_least(out[term], 0, f"{at}.{term}", src, "a gain; 0 turns the term off")
    return out


def _distill(raw: Any, path: str, src: str) -> DistillSpec:
    raw = typed(raw, dict, path, src)
    if "teacher" in raw:
        stage_path = path.rsplit(".", 1)[0]
        raise UserError(
            f"{src}: `{path}.teacher`: name the teacher as `{stage_path}.teacher` instead (a DVC dependency of the stage, "
            "so every stage carries that key; a stage that does not distil names its `from` there)"
        )
    check_keys(raw, ("kind", "lambda", "temperature"), path, src)
    kind = typed(raw.get("kind", "logit"), str, f"{path}.kind", src)
    one_of(kind, DISTILL_KINDS, f"{path}.kind", src, "logit: output KL; feature: Ultralytics' feature distillation")
    weight = typed(raw.get("lambda", 1.0), float, f"{path}.lambda", src)
    at_least(weight, 0, f"{path}.lambda", src, "the distillation loss weight")
    temperature = typed(raw.get("temperature", 2.0), float, f"{path}.temperature", src)
    at_least(temperature, 0, f"{path}.temperature", src, "softens both distributions", strict=True)
    if kind == "feature" and "temperature" in raw:
        raise UserError(f"{src}: `{path}.temperature` applies to `kind: logit` only; remove it for `kind: feature`")
    return DistillSpec(kind, weight, temperature)


def stages(raw: Mapping[str, Any], train: Mapping[str, Any], src: str) -> dict[str, StageSpec]:
    out = {str(key): stage(key, value, train, src) for key, value in raw.items()}
    if not out:
        raise UserError(f"{src}: `stages` is empty; define at least one training stage (see params.yaml in the repo)")
    return out


def train_defaults(raw: Mapping[str, Any], src: str) -> dict[str, Any]:
    """``train:``: Ultralytics arguments merged under every stage."""
    return ultralytics_args(raw, "train", src)
