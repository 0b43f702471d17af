"""The export gate: one format's detections against PyTorch's on the same images, matched one to one.

A pair is the same class with IoU >= :data:`MATCH_IOU`, found greedily from PyTorch's most confident
detection down (each detection pairs once). Both sides are collected at a floor ``max_conf_delta``
below the counted confidence ``conf``, so a detection just above ``conf`` whose partner sits just
below it still pairs. Counted are the pairs where either side reaches ``conf`` and every unpaired
detection that reaches it: ``matched`` = pairs / (pairs + unpaired), the share of the union of both
models' detections. ``max_conf_delta`` is the worst |confidence difference| over counted pairs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stagetrain.config.schema import ParitySpec
from stagetrain.stats.matching import box_iou

MATCH_IOU = 0.9  # the bar for "the same detection"

Detections = dict[str, np.ndarray]  # class_id (n,), raw_conf (n,), box (n, 4) x1 y1 x2 y2 in image pixels


def collect_floor(conf: float, spec: ParitySpec, int8: bool) -> float:
    """The confidence both sides are collected at: ``conf`` less the tolerated difference (never below 0.001)."""
    return max(conf - (spec.int8_max_conf_delta if int8 else spec.max_conf_delta), 0.001)


def pairs(reference: Detections, exported: Detections) -> list[tuple[int, int]]:
    """(reference index, exported index) pairs: same class, IoU >= MATCH_IOU, greedy from the most confident reference."""
    if not len(reference["raw_conf"]) or not len(exported["raw_conf"]):
        return []
    iou = box_iou(reference["box"], exported["box"])
    iou[reference["class_id"][:, None] != exported["class_id"][None, :]] = 0
    taken = np.zeros(iou.shape[1], dtype=bool)
    found = []
    for i in np.argsort(-reference["raw_conf"], kind="stable"):
        candidates = np.where(taken, -1.0, iou[i])
        j = int(candidates.argmax())
        if candidates[j] >= MATCH_IOU:
            taken[j] = True
            found.append((int(i), j))
    return found


def compare(reference: Sequence[Detections], exported: Sequence[Detections], conf: float) -> dict[str, float | int]:
    """Share matched, worst |Δconf| and the counts, over images given in the same order on both sides."""
    matched = unpaired_ref = unpaired_exp = 0
    worst = 0.0
    for ref, exp in zip(reference, exported, strict=True):
        found = pairs(ref, exp)
        used_ref, used_exp = {i for i, _ in found}, {j for _, j in found}
        for i, j in found:
            a, b = ref["raw_conf"][i], exp["raw_conf"][j]
            if max(a, b) >= conf:
                matched += 1
                worst = max(worst, abs(float(a) - float(b)))
        unpaired_ref += sum(1 for i, c in enumerate(ref["raw_conf"]) if i not in used_ref and c >= conf)
        unpaired_exp += sum(1 for j, c in enumerate(exp["raw_conf"]) if j not in used_exp and c >= conf)
    union = matched + unpaired_ref + unpaired_exp
    return {
        "detections": union,
        "matched": round(matched / union, 4) if union else 1.0,
        "max_conf_delta": round(worst, 5),
        "only_pytorch": unpaired_ref,
        "only_export": unpaired_exp,
    }


def failures(fmt: str, figures: dict, spec: ParitySpec, int8: bool) -> list[str]:
    """What of ``figures`` (compare()'s, plus ``map50_delta``) misses the thresholds, one line per format; [] when it passes."""
    prefix = "int8_" if int8 else ""
    min_matched, max_delta, max_drop = (getattr(spec, prefix + k) for k in ("min_matched", "max_conf_delta", "max_map50_drop"))
    missed = []
    if figures["matched"] < min_matched:
        missed.append(
            f"matched {figures['matched']:.2%} < {min_matched:.0%} of {figures['detections']} detections "
            f"({figures['only_pytorch']} only in PyTorch, {figures['only_export']} only in {fmt})"
        )
    if figures["max_conf_delta"] > max_delta:
        missed.append(f"max |Δconf| {figures['max_conf_delta']:.4f} > {max_delta}")
    if figures.get("map50_delta") is not None and -figures["map50_delta"] > max_drop:
        missed.append(f"test mAP50 {figures['map50_delta'] * 100:+.2f} pt vs PyTorch, more than the {max_drop * 100:.1f} pt allowed")
    if not missed:
        return []
    keys = f"export.parity.{prefix}min_matched / {prefix}max_conf_delta / {prefix}max_map50_drop"
    return [f"{fmt}: " + "; ".join(missed) + f" (thresholds: {keys} in params.yaml)"]
