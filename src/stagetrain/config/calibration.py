"""``calibrate:`` (confidence calibration and per-class thresholds) and ``evaluate.ensembles`` (WBF ensembles)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from stagetrain.config.checks import at_least, check_keys, name, one_of, suggest, typed
from stagetrain.config.schema import (
    CALIBRATION_METHODS,
    THRESHOLD_F1,
    WBF_CONF_TYPES,
    CalibrateSpec,
    EnsembleSpec,
    EvaluateSpec,
)
from stagetrain.errors import UserError

CALIBRATE_KEYS = ("method", "thresholds", "bins", "min_detections", "floor")
ENSEMBLE_KEYS = ("models", "weights", "iou", "skip", "conf_type")


def calibrate(raw: Mapping[str, Any], classes: tuple[str, ...], src: str) -> CalibrateSpec:
    """The ``calibrate:`` section; absent = the defaults of :class:`CalibrateSpec`."""
    block = raw.get("calibrate")
    block = {} if block is None else typed(block, dict, "calibrate", src)
    check_keys(block, CALIBRATE_KEYS, "calibrate", src)
    method = typed(block.get("method", CalibrateSpec.method), str, "calibrate.method", src)
    one_of(method, CALIBRATION_METHODS, "calibrate.method", src, "fitted per class on val detections matched at IoU 0.5")
    bins = typed(block.get("bins", CalibrateSpec.bins), int, "calibrate.bins", src)
    at_least(bins, 2, "calibrate.bins", src, "equal-width confidence bins of the ECE and reliability diagram")
    if bins > 100:
        raise UserError(f"{src}: `calibrate.bins` is {bins}; use 2 to 100 (10 or 15 is usual: more bins leave them nearly empty)")
    least = typed(block.get("min_detections", CalibrateSpec.min_detections), int, "calibrate.min_detections", src)
    at_least(least, 1, "calibrate.min_detections", src, "a class with fewer val detections uses the fit of all classes pooled")
    floor = typed(block.get("floor", CalibrateSpec.floor), float, "calibrate.floor", src)
    if not 0 <= floor < 1:
        raise UserError(f"{src}: `calibrate.floor` is {floor!r}; use a confidence in [0, 1) (detections below it are not fitted or binned)")
    return CalibrateSpec(method, _recall_targets(block.get("thresholds", THRESHOLD_F1), classes, src), bins, least, floor)


def _recall_targets(value: Any, classes: tuple[str, ...], src: str) -> Mapping[str, float]:
    """`f1` (every class F1-optimal) or ``{<class>: {recall: 0.7}}`` (those classes by recall target, the rest F1-optimal)."""
    value = typed(value, (str, dict), "calibrate.thresholds", src)
    if isinstance(value, str):
        if value != THRESHOLD_F1:
            raise UserError(f"{src}: `calibrate.thresholds` is {value!r}; use `{THRESHOLD_F1}` or a mapping {{<class>: {{recall: 0.7}}}}")
        return MappingProxyType({})
    targets = {}
    for cls, rule in value.items():
        at = f"calibrate.thresholds.{cls}"
        if cls not in classes:
            hint = suggest(cls, classes) or f"classes: {', '.join(classes)}"
            raise UserError(f"{src}: `{at}`: {cls!r} is not in `classes`; {hint}")
        rule = typed(rule, dict, at, src)
        check_keys(rule, ("recall",), at, src)
        if "recall" not in rule:
            raise UserError(f"{src}: `{at}` needs `recall: <target>`, e.g. {{recall: 0.7}}")
        recall = typed(rule["recall"], float, f"{at}.recall", src)
        if not 0 < recall <= 1:
            raise UserError(f"{src}: `{at}.recall` is {recall!r}; use a recall target in (0, 1]")
        targets[cls] = recall
    return MappingProxyType(targets)


def ensembles(evaluate: Mapping[str, Any], stage_names: tuple[str, ...], src: str) -> Mapping[str, EnsembleSpec]:
    """``evaluate.ensembles``: ``{name: [stage, ...]}`` or ``{name: {models: [...], weights, iou, skip, conf_type}}``."""
    value = evaluate.get("ensembles")
    value = {} if value is None else typed(value, dict, "evaluate.ensembles", src)
    out = {}
    for key, entry in value.items():
        at = f"evaluate.ensembles.{key}"
        label = name(key, at, src)
        if label in stage_names or label in (EvaluateSpec.FORGETTING, EvaluateSpec.BASELINE):
            raise UserError(f"{src}: `{at}`: the name {label!r} is taken (a stage or an eval.json key); rename the ensemble")
        entry = {"models": entry} if isinstance(entry, list) else typed(entry, (list, dict), at, src)
        check_keys(entry, ENSEMBLE_KEYS, at, src)
        models = tuple(typed(m, str, f"{at}.models[{i}]", src) for i, m in enumerate(typed(entry.get("models"), list, f"{at}.models", src)))
        if len(models) < 2:
            raise UserError(f"{src}: `{at}.models` lists {len(models)} model(s); an ensemble fuses two or more stages")
        for model in models:
            if model not in stage_names:
                hint = suggest(model, stage_names) or f"stages: {', '.join(stage_names)}"
                raise UserError(f"{src}: `{at}.models` names no stage: {model!r}; {hint}")
        weights = entry.get("weights")
        weights = tuple(1.0 for _ in models) if weights is None else typed(weights, list, f"{at}.weights", src)
        weights = tuple(typed(w, float, f"{at}.weights[{i}]", src) for i, w in enumerate(weights))
        if len(weights) != len(models) or min(weights) <= 0:
            raise UserError(f"{src}: `{at}.weights` needs one weight > 0 per model ({len(models)}), got {list(weights)}")
        iou = typed(entry.get("iou", EnsembleSpec.iou), float, f"{at}.iou", src)
        if not 0 < iou < 1:
            raise UserError(f"{src}: `{at}.iou` is {iou!r}; use an IoU in (0, 1) above which boxes of one class are fused")
        skip = typed(entry.get("skip", EnsembleSpec.skip), float, f"{at}.skip", src)
        if not 0 <= skip < 1:
            raise UserError(f"{src}: `{at}.skip` is {skip!r}; use a confidence in [0, 1) below which member boxes are dropped")
        conf_type = typed(entry.get("conf_type", EnsembleSpec.conf_type), str, f"{at}.conf_type", src)
        one_of(conf_type, WBF_CONF_TYPES, f"{at}.conf_type", src, "how a fused box's confidence is formed")
        out[label] = EnsembleSpec(label, models, weights, iou, skip, conf_type)
    return MappingProxyType(out)
