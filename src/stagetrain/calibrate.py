"""calibrate: confidences that mean what they say, and per-class thresholds, for the shipped model (``export.model``).

The model's val-split detections (evaluate's prediction path: Ultralytics' validator at conf 0.001,
``max_det`` 300) are matched to the ground truth at IoU 0.5 (``stats.matching``, pycocotools' greedy
rule); a matched detection is *correct*. Per class, a monotone map from raw to calibrated confidence
is fitted on (confidence, correct) pairs at or above ``calibrate.floor``:

- ``isotonic``: scikit-learn's IsotonicRegression (non-parametric, monotone, piecewise linear);
- ``auto`` (the default): the method below with the lowest 2-fold cross-validated ECE on val
  (``val_cv_ece`` in the detail: the choice never looks at test);
- ``platt``: logistic regression on the confidence's logit, ``sigmoid(a * logit(p) + b)``;
- ``temperature``: one parameter, ``sigmoid(logit(p) / T)``, T by maximum likelihood;
- ``none``: the identity.

A class with fewer than ``calibrate.min_detections`` val detections takes the fit of all classes
pooled (listed in the output). Every method is written as a monotone piecewise-linear table, so a
consumer without scikit-learn (models/export/predict.py) computes ``numpy.interp(conf, x, y)``.
Smooth maps (platt, temperature) are sampled on a 1/200 grid.

Thresholds are chosen on val, on the calibrated confidence: the F1-optimal one per class by default,
or for a class with a recall target the highest threshold whose val recall reaches it (the most
precise operating point that keeps the target); an unreachable target keeps the lowest threshold
and is listed. A class without val ground truth takes the pooled F1-optimal threshold (listed).

The test split only reports. Detection ECE (D-ECE restricted to the confidence dimension, Küppers
et al., "Multivariate Confidence Calibration for Object Detection", CVPR-W 2020, as in netcal):
over the test detections whose raw confidence is at or above ``floor``, split into ``bins``
equal-width confidence bins, ``sum_b n_b / N * |accuracy_b - mean confidence_b|`` with accuracy =
the share matched at IoU 0.5 (precision). The same detections are binned before and after, so the
two figures are comparable. Precision and recall per class at the chosen thresholds complete it.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from stagetrain import evaluate, stats
from stagetrain.config import Config
from stagetrain.errors import UserError

IOU = 0.5  # a detection is correct when it matches a labelled box of its class at this IoU
GRID = np.linspace(0.0, 1.0, 201)  # where smooth maps (platt, temperature) are sampled into the table
EPS = 1e-6  # keeps logits finite at confidences 0 and 1
POOLED = "pooled"
CV_METHODS = ("none", "temperature", "platt", "isotonic")  # compared by val cross-validation in the detail


class Matched(NamedTuple):
    """One split's detections: class id, raw confidence and correct (matched at IoU 0.5), plus ground-truth counts per class."""

    class_id: np.ndarray
    score: np.ndarray
    correct: np.ndarray
    n_gt: np.ndarray  # (n_classes,) labelled boxes per class


def matched(records: stats.DetectionRecords) -> Matched:
    """Per-detection (class, confidence, correct at IoU 0.5) from evaluate's records."""
    column = np.flatnonzero(np.isclose(records.iou_thresholds, IOU))
    if column.size == 0:
        raise ValueError(f"records hold no IoU {IOU} column: {records.iou_thresholds.tolist()}")
    return Matched(records.class_id, records.score, records.tp[:, column[0]], records.n_gt.sum(axis=0))


# --- fitting --------------------------------------------------------------------------------------


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def fit(score: np.ndarray, correct: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """A monotone table ``(x, y)`` over [0, 1] with ``calibrated = numpy.interp(conf, x, y)``.

    Args:
        score: (n,) raw confidences.
        correct: (n,) bool, matched at IoU 0.5.
        method: isotonic | platt | temperature | none.
    """
    score, correct = np.asarray(score, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    if method == "none" or score.size == 0:
        return np.array([0.0, 1.0]), np.array([0.0, 1.0])
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(score, correct)
        x, y = np.asarray(iso.X_thresholds_, dtype=np.float64), np.asarray(iso.y_thresholds_, dtype=np.float64)
    elif method in ("platt", "temperature"):
        z = _logit(score)
        if method == "platt":
            a, b = _platt(z, correct)
        else:
            a, b = 1.0 / _temperature(z, correct), 0.0
        x, y = GRID, _sigmoid(a * _logit(GRID) + b)
    else:
        raise ValueError(f"unknown calibration method {method!r}")
    return _table(x, np.maximum.accumulate(y))


def _platt(z: np.ndarray, correct: np.ndarray) -> tuple[float, float]:
    """Slope and intercept of a logistic regression of correct on the logit (nearly unregularised)."""
    if correct.min() == correct.max():  # one outcome only: the best monotone map is a constant
        return 0.0, float(_logit(np.array([correct.mean()]))[0])
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=1e6, max_iter=1000).fit(z[:, None], correct.astype(int))
    return max(float(model.coef_[0, 0]), 0.0), float(model.intercept_[0])  # slope >= 0: calibration never reverses the order


def _temperature(z: np.ndarray, correct: np.ndarray) -> float:
    """The T minimising the binary cross-entropy of ``sigmoid(z / T)`` (searched in log T over [1/50, 50])."""
    from scipy.optimize import minimize_scalar

    def nll(log_t: float) -> float:
        p = np.clip(_sigmoid(z / np.exp(log_t)), EPS, 1 - EPS)
        return float(-(correct * np.log(p) + (1 - correct) * np.log1p(-p)).mean())

    return float(np.exp(minimize_scalar(nll, bounds=(-np.log(50), np.log(50)), method="bounded").x))


def _table(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rounded, strictly increasing x spanning [0, 1]: (0, 0) below the data, flat above it."""
    if x[0] > 0:
        x, y = np.r_[0.0, x], np.r_[0.0, y]
    if x[-1] < 1:
        x, y = np.r_[x, 1.0], np.r_[y, y[-1]]
    x, y = np.round(x, 6), np.round(np.clip(y, 0, 1), 6)
    keep = np.r_[True, np.diff(x) > 0]  # rounding may merge two knots; keep the first
    return x[keep], np.maximum.accumulate(y[keep])


def apply(table: dict[str, list[float]], score: np.ndarray) -> np.ndarray:
    """Calibrated confidences: the contract every consumer of calibration.json follows."""
    return np.interp(score, table["x"], table["y"])


# --- thresholds -----------------------------------------------------------------------------------


class Operating(NamedTuple):
    threshold: float
    precision: float
    recall: float
    f1: float


def operating_points(score: np.ndarray, correct: np.ndarray, n_gt: int) -> list[Operating]:
    """Every distinct threshold ``t`` (keep ``score >= t``) from the highest down, with its precision, recall and F1."""
    order = np.argsort(-score, kind="stable")
    s, tp = score[order], np.cumsum(correct[order])
    ends = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1] if s.size else np.array([], dtype=int)
    kept = ends + 1
    precision, recall = tp[ends] / kept, tp[ends] / max(n_gt, 1)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(precision), where=precision + recall > 0)
    return [Operating(float(s[e]), float(p), float(r), float(f)) for e, p, r, f in zip(ends, precision, recall, f1)]


def f1_threshold(score: np.ndarray, correct: np.ndarray, n_gt: int) -> Operating | None:
    """The F1-optimal threshold (the highest one among ties); None without ground truth or detections."""
    points = operating_points(score, correct, n_gt)
    if n_gt == 0 or not points:
        return None
    return max(points, key=lambda p: p.f1)  # max keeps the first, highest-threshold, best


def recall_threshold(score: np.ndarray, correct: np.ndarray, n_gt: int, target: float) -> Operating | None:
    """The highest threshold whose recall reaches ``target``; None when no threshold does (or no ground truth)."""
    if n_gt == 0:
        return None
    return next((p for p in operating_points(score, correct, n_gt) if p.recall >= target - 1e-12), None)


def at_threshold(score: np.ndarray, correct: np.ndarray, n_gt: int, threshold: float) -> dict[str, float]:
    """Precision, recall and F1 when keeping ``score >= threshold``."""
    keep = score >= threshold
    tp, kept = float(correct[keep].sum()), int(keep.sum())
    precision, recall = (tp / kept if kept else 1.0), (tp / n_gt if n_gt else 0.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 6), "recall": round(recall, 6), "f1": round(f1, 6), "kept": kept, "instances": int(n_gt)}


# --- ECE ------------------------------------------------------------------------------------------


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int) -> tuple[float, list[dict[str, float]]]:
    """Detection ECE and the reliability rows ``{bin, confidence, accuracy, count}`` (empty bins left out)."""
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        inside = index == b
        if not inside.any():
            continue
        conf, acc = float(confidence[inside].mean()), float(correct[inside].mean())
        ece += float(inside.sum() / confidence.size * abs(acc - conf))
        rows.append(
            {"bin": round((b + 0.5) / bins, 6), "confidence": round(conf, 6), "accuracy": round(acc, 6), "count": int(inside.sum())}
        )
    return ece, rows


# --- the stage ------------------------------------------------------------------------------------


def fit_classes(cfg: Config, val: Matched, method: str | None = None) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Per-class tables (class fit, or the pooled one below ``min_detections``) and the fallbacks, listed.

    ``method`` defaults to ``calibrate.method``.
    """
    spec = cfg.calibrate
    method = method or spec.method
    above = val.score >= spec.floor
    pooled_x, pooled_y = fit(val.score[above], val.correct[above], method)  # the identity when nothing is above the floor
    pooled = POOLED if above.any() else "identity (no val detection at or above the floor)"
    tables, fallbacks = {}, []
    for c, name in enumerate(cfg.classes):
        mine = above & (val.class_id == c)
        n = int(mine.sum())
        if n >= spec.min_detections:
            x, y = fit(val.score[mine], val.correct[mine], method)
            tables[name] = {"x": x.tolist(), "y": y.tolist(), "fit": "class", "val_detections": n}
        else:
            tables[name] = {"x": pooled_x.tolist(), "y": pooled_y.tolist(), "fit": pooled, "val_detections": n}
            fallbacks.append(
                f"{name}: {n} val detections at conf >= {spec.floor} (< calibrate.min_detections {spec.min_detections}): {pooled} fit"
            )
    return tables, fallbacks


def _subset(m: Matched, keep: np.ndarray) -> Matched:
    return Matched(m.class_id[keep], m.score[keep], m.correct[keep], m.n_gt)


def val_cross_validated_ece(cfg: Config, val: Matched, folds: int = 2) -> dict[str, float]:
    """Each method's detection ECE on val, fitted on the other folds (seeded split of the val detections).

    This is how to choose ``calibrate.method`` without looking at test: the method with the lowest figure
    generalises best from this val split. Detections are split, not images (the records carry no image).
    """
    order = np.random.default_rng(cfg.seed).permutation(val.score.size)
    fold_of = np.empty(val.score.size, dtype=int)
    fold_of[order] = np.arange(val.score.size) % folds
    result = {}
    for method in CV_METHODS:
        eces = []
        for k in range(folds):
            held = _subset(val, fold_of == k)
            tables, _ = fit_classes(cfg, _subset(val, fold_of != k), method)
            calibrated = np.zeros_like(held.score)
            for c, name in enumerate(cfg.classes):
                calibrated[held.class_id == c] = apply(tables[name], held.score[held.class_id == c])
            binned = held.score >= cfg.calibrate.floor
            if binned.any():
                eces.append(reliability(calibrated[binned], held.correct[binned], cfg.calibrate.bins)[0])
        result[method] = round(float(np.mean(eces)), 6) if eces else None
    return result


def choose_thresholds(cfg: Config, val: Matched, tables: dict[str, dict]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Per-class threshold on the calibrated val confidence, its rule and val figures; the fallbacks, listed."""
    calibrated = np.zeros_like(val.score)
    for c, name in enumerate(cfg.classes):
        calibrated[val.class_id == c] = apply(tables[name], val.score[val.class_id == c])
    pooled = f1_threshold(calibrated, val.correct, int(val.n_gt.sum()))
    chosen, notes = {}, []
    for c, name in enumerate(cfg.classes):
        mine, n_gt = val.class_id == c, int(val.n_gt[c])
        target = cfg.calibrate.recall_targets.get(name)
        if target is not None:
            point, rule = recall_threshold(calibrated[mine], val.correct[mine], n_gt, target), f"recall >= {target}"
            if point is None and n_gt:
                points = operating_points(calibrated[mine], val.correct[mine], n_gt)
                best = points[-1].recall if points else 0.0
                notes.append(
                    f"{name}: recall target {target} unreachable on val (at most {best:.3f} at the lowest threshold); kept the lowest"
                )
                point = points[-1] if points else None
        else:
            point, rule = f1_threshold(calibrated[mine], val.correct[mine], n_gt), "f1"
        if point is None:
            point, rule = pooled or Operating(1.0, 0.0, 0.0, 0.0), f"{POOLED} f1"
            notes.append(f"{name}: {n_gt} val instances, {int(mine.sum())} detections: pooled F1-optimal threshold")
        chosen[name] = {
            "threshold": round(point.threshold, 6),
            "rule": rule,
            **{f"val_{k}": round(v, 6) for k, v in point._asdict().items() if k != "threshold"},
        }
    return chosen, notes


def raw_threshold(table: dict[str, list[float]], threshold: float) -> float:
    """The smallest raw confidence whose calibrated value reaches ``threshold`` (a pre-filter for deployment)."""
    x, y = np.asarray(table["x"]), np.asarray(table["y"])
    i = int(np.searchsorted(y, threshold - 1e-12, side="left"))
    if i >= y.size:
        return 1.0
    if i == 0 or y[i] == y[i - 1]:
        return float(x[i])
    return float(x[i - 1] + (threshold - y[i - 1]) / (y[i] - y[i - 1]) * (x[i] - x[i - 1]))


def predictions(cfg: Config, weights: Path, data_yaml: Path, split: str, work_dir: Path) -> Matched:
    """evaluate's prediction path on ``split`` (not only ``evaluate.split``), matched at IoU 0.5."""
    on_split = dataclasses.replace(cfg, evaluate=dataclasses.replace(cfg.evaluate, split=split, tta=False))
    return matched(evaluate.evaluate_model(on_split, weights, data_yaml, work_dir / split).records)


def run(cfg: Config, weights: Path, data_yaml: Path, work_dir: Path) -> dict[str, Any]:
    """Fit on val, report on test; returns ``{"calibration", "metrics", "detail", "reliability"}``.

    ``calibration`` is models/calibration/calibration.json (the deploy contract), ``metrics`` the flat
    metrics/calibration.json, ``detail`` the per-class figures and ``reliability`` the plot rows.
    """
    started = time.perf_counter()
    if weights.parent.name not in cfg.stages:
        raise UserError(f"{cfg.source}: calibrate: {weights} is not models/<stage>/best.pt of a stage under `stages:`")
    val = predictions(cfg, weights, data_yaml, "val", work_dir)
    if not val.n_gt.sum():
        raise UserError(f"{data_yaml}: the val split holds no labelled box; calibration needs matched val detections")
    test = predictions(cfg, weights, data_yaml, "test", work_dir)
    result = fit_and_report(cfg, weights.parent.name, val, test)
    result["detail"]["seconds"] = round(time.perf_counter() - started, 1)
    return result


def chosen_method(cfg: Config, cv: dict[str, float | None]) -> str:
    """``calibrate.method``, or for ``auto`` the method with the lowest cross-validated val ECE (``none`` if none scored)."""
    if cfg.calibrate.method != "auto":
        return cfg.calibrate.method
    scored = {method: ece for method, ece in cv.items() if ece is not None}
    return min(scored, key=lambda method: (scored[method], CV_METHODS.index(method))) if scored else "none"


def fit_and_report(cfg: Config, model: str, val: Matched, test: Matched) -> dict[str, Any]:
    """``run``'s result from the matched val and test detections of ``model``: fit and choose on val, report on test."""
    cv = val_cross_validated_ece(cfg, val)
    method = chosen_method(cfg, cv)
    tables, fallbacks = fit_classes(cfg, val, method)
    chosen, notes = choose_thresholds(cfg, val, tables)
    calibrated = np.zeros_like(test.score)
    for c, name in enumerate(cfg.classes):
        calibrated[test.class_id == c] = apply(tables[name], test.score[test.class_id == c])
    binned = test.score >= cfg.calibrate.floor
    ece_before, rows_before = reliability(test.score[binned], test.correct[binned], cfg.calibrate.bins)
    ece_after, rows_after = reliability(calibrated[binned], test.correct[binned], cfg.calibrate.bins)
    per_class = {}
    for c, name in enumerate(cfg.classes):
        mine = test.class_id == c
        figures = at_threshold(calibrated[mine], test.correct[mine], int(test.n_gt[c]), chosen[name]["threshold"])
        class_binned = binned & mine
        before = after = None
        if class_binned.any():
            before = float(reliability(test.score[class_binned], test.correct[class_binned], cfg.calibrate.bins)[0])
            after = float(reliability(calibrated[class_binned], test.correct[class_binned], cfg.calibrate.bins)[0])
        per_class[name] = {
            **{k: v for k, v in tables[name].items() if k not in ("x", "y")},
            **chosen[name],
            **{f"test_{k}": v for k, v in figures.items()},
            "test_ece_before": None if before is None else round(before, 6),
            "test_ece_after": None if after is None else round(after, 6),
        }
    scored = [name for c, name in enumerate(cfg.classes) if test.n_gt[c]]  # classes with test ground truth
    thresholds = {name: chosen[name]["threshold"] for name in cfg.classes}
    calibration = {
        "model": model,
        "method": method,
        "usage": "calibrated = numpy.interp(conf, classes[c].x, classes[c].y); keep a detection when calibrated >= thresholds[c]",
        "iou": IOU,
        "floor": cfg.calibrate.floor,
        "classes": {name: {"x": tables[name]["x"], "y": tables[name]["y"]} for name in cfg.classes},
        "thresholds": thresholds,
        # the lowest raw confidence each threshold keeps: run NMS with a conf at or below the smallest of these
        "raw_thresholds": {name: round(raw_threshold(tables[name], thresholds[name]), 6) for name in cfg.classes},
        "rules": {name: chosen[name]["rule"] for name in cfg.classes},
        "fallbacks": fallbacks + notes,
    }
    metrics = {
        "ece_before": round(ece_before, 6),
        "ece_after": round(ece_after, 6),
        "precision": round(float(np.mean([per_class[n]["test_precision"] for n in scored])), 6) if scored else 0.0,
        "recall": round(float(np.mean([per_class[n]["test_recall"] for n in scored])), 6) if scored else 0.0,
        "detections": int(binned.sum()),
    }
    detail = {
        "model": model,
        "method": method,
        "ece": f"detection ECE over {int(binned.sum())} test detections at raw conf >= {cfg.calibrate.floor}, {cfg.calibrate.bins} bins, correct = matched at IoU {IOU}",
        "val_detections": int(val.score.size),
        "method_asked": cfg.calibrate.method,
        "val_cv_ece": cv,  # per method, 2-fold on val: what `auto` picks by (test is never looked at)
        "test_detections": int(test.score.size),
        "classes": per_class,
        "fallbacks": fallbacks + notes,
    }
    reliability_rows = [{**row, "which": "before"} for row in rows_before] + [{**row, "which": "after"} for row in rows_after]
    return {"calibration": calibration, "metrics": metrics, "detail": detail, "reliability": reliability_rows}
