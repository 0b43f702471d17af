"""Paired bootstrap over test images of a difference in mAP, and the verdict it supports.

Images are the unit of resampling (detections within one image are not independent). Each
resample draws n images with replacement; BOTH models are scored on that same draw (paired), so
image difficulty cancels out of the difference and the interval is far narrower than two
independent intervals would suggest.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from statistics import NormalDist

import numpy as np

from stagetrain.errors import UserError
from stagetrain.stats.ap import MeanAP, SortedDetections, mean_ap
from stagetrain.stats.matching import DetectionRecords

DIRECTION = "b - a"
"""Every difference, interval and verdict is candidate (b) minus baseline (a): positive = b is better."""

_POWER = 0.8  # the power quoted by `detectable_80_power`


def bootstrap_weights(n_images: int, resamples: int, seed: int) -> np.ndarray:
    """Image multiplicities of `resamples` bootstrap draws of `n_images` images with replacement.

    Args:
        n_images: images in the test split.
        resamples: number of bootstrap resamples.
        seed: seed of numpy's default generator; the same seed gives the same draws.

    Returns:
        (resamples, n_images) float array of counts; each row sums to n_images.
    """
    drawn = np.random.default_rng(seed).integers(0, n_images, size=(resamples, n_images))
    flat = (drawn + n_images * np.arange(resamples)[:, None]).ravel()
    return np.bincount(flat, minlength=resamples * n_images).reshape(resamples, n_images).astype(np.float64)


def paired_bootstrap(a: DetectionRecords, b: DetectionRecords, resamples: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Observed difference b - a in mAP50-95 and mAP50, with a paired percentile bootstrap interval.

    Args:
        a: the baseline's records.
        b: the candidate's records, on the same images in the same order.
        resamples: bootstrap resamples (1000 is plenty for a 95% percentile interval).
        seed: seed of the resampling; the same inputs and seed give the same result.
        alpha: 1 - confidence level of the interval.

    Returns:
        A JSON-ready dict: `direction` ("b - a"), `images`, `resamples`, `seed`, `alpha`, and for
        each of `map50_95` and `map50` a dict with `a`, `b` and `diff` (observed on the full set),
        `ci_low` / `ci_high` (the alpha/2 and 1 - alpha/2 percentiles of the resampled differences),
        `se` (their standard deviation, the bootstrap standard error), `detectable`
        (z_{1-alpha/2} * se: the smallest difference this split can call significant, i.e. the
        half-width of the normal-approximation interval; a true difference of that size is found
        only about half the time) and `detectable_80_power` ((z_{1-alpha/2} + z_0.8) * se: the true
        difference found 80% of the time).

    Raises:
        UserError: the two models were evaluated on different images, or there is no ground truth.
    """
    if resamples < 2 or not 0 < alpha < 1:
        raise ValueError(f"need resamples >= 2 and 0 < alpha < 1, got resamples={resamples}, alpha={alpha}")
    a, b = _paired(a, b)
    sorted_a, sorted_b = SortedDetections.from_records(a), SortedDetections.from_records(b)
    observed_a, observed_b = mean_ap(sorted_a), mean_ap(sorted_b)
    if np.isnan(observed_a.map50_95):
        raise UserError("paired_bootstrap: the test images hold no ground-truth box; evaluate on a labelled split")
    weights = bootstrap_weights(a.n_images, resamples, seed)
    boot_a, boot_b = mean_ap(sorted_a, weights), mean_ap(sorted_b, weights)
    result: dict = {"direction": DIRECTION, "images": a.n_images, "resamples": resamples, "seed": seed, "alpha": alpha}
    for metric in MeanAP._fields:
        diffs = getattr(boot_b, metric) - getattr(boot_a, metric)
        result[metric] = _summary(getattr(observed_a, metric), getattr(observed_b, metric), diffs, alpha)
    return result


def _paired(a: DetectionRecords, b: DetectionRecords) -> tuple[DetectionRecords, DetectionRecords]:
    """Both records with the same class count; refuse records of different images or thresholds."""
    if a.n_images != b.n_images or not np.array_equal(a.iou_thresholds, b.iou_thresholds):
        raise UserError(
            f"paired_bootstrap: model a has {a.n_images} images, model b {b.n_images} (or different IoU thresholds); "
            "evaluate both models on the same test split"
        )
    n_classes = max(a.n_classes, b.n_classes)
    a, b = (dataclasses.replace(r, n_gt=np.pad(r.n_gt, ((0, 0), (0, n_classes - r.n_classes)))) for r in (a, b))
    if not np.array_equal(a.n_gt, b.n_gt):
        differing = np.flatnonzero((a.n_gt != b.n_gt).any(axis=1))
        raise UserError(
            f"paired_bootstrap: the ground truth of models a and b differs on {differing.size} images "
            f"(first: image {differing[0]}); evaluate both models on the same test split, images in the same order"
        )
    return a, b


def _summary(observed_a: float, observed_b: float, diffs: np.ndarray, alpha: float) -> dict[str, float]:
    """Observed values and the bootstrap interval, standard error and detectable difference of b - a."""
    diffs = diffs[np.isfinite(diffs)]  # a resample without any ground truth has no mAP
    if diffs.size < 2:
        raise UserError("paired_bootstrap: fewer than two resamples hold ground truth; label more test images")
    low, high = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    se = float(np.std(diffs, ddof=1))
    z = NormalDist().inv_cdf(1 - alpha / 2)
    return {
        "a": observed_a,
        "b": observed_b,
        "diff": observed_b - observed_a,
        "ci_low": float(low),
        "ci_high": float(high),
        "se": se,
        "detectable": z * se,
        "detectable_80_power": (z + NormalDist().inv_cdf(_POWER)) * se,
    }


class Decision(StrEnum):
    """What to do with the candidate (b) against the baseline (a)."""

    ADOPT = "adopt"
    KEEP_BASELINE = "keep baseline"
    NO_DIFFERENCE = "no detectable difference"


@dataclass(frozen=True)
class Verdict:
    """A decision and the sentence that explains it to a human (`str(verdict)` is the sentence)."""

    decision: Decision
    sentence: str

    def __str__(self) -> str:
        return self.sentence


def verdict(ci_low: float, ci_high: float, margin: float = 0.01) -> Verdict:
    """Turn an interval of the difference b - a into a decision.

    Args:
        ci_low: lower bound of the interval of b - a (e.g. `paired_bootstrap(...)["map50_95"]["ci_low"]`).
        ci_high: its upper bound.
        margin: the smallest difference worth acting on, in metric units (0.01 = one mAP point).

    Returns:
        ADOPT when the whole interval lies above +margin, KEEP_BASELINE when it lies below -margin,
        NO_DIFFERENCE otherwise; the sentence says whether the interval is inside +-margin (the
        models are equivalent) or too wide to decide (more test images would help).
    """
    if ci_low > ci_high or margin < 0:
        raise ValueError(f"need ci_low <= ci_high and margin >= 0, got [{ci_low}, {ci_high}], margin={margin}")
    interval = f"interval of b - a: [{ci_low:+.4f}, {ci_high:+.4f}], margin {margin:.4f}"
    if ci_low > margin:
        return Verdict(Decision.ADOPT, f"Adopt the candidate: it beats the baseline by more than the margin ({interval}).")
    if ci_high < -margin:
        return Verdict(Decision.KEEP_BASELINE, f"Keep the baseline: the candidate is worse by more than the margin ({interval}).")
    if -margin <= ci_low and ci_high <= margin:
        why = "any difference is smaller than the margin"
    else:
        why = "the interval is too wide to tell whether the difference exceeds the margin; more test images would narrow it"
    return Verdict(Decision.NO_DIFFERENCE, f"No detectable difference: prefer the simpler model ({why}; {interval}).")
