"""Hard-negative mining: the same fine-tune with and without ``hard_negatives:``, false positives at a fixed recall.

Called by ``bench/data_loop.py --only mining`` (``measure(args) -> list[str]``), or on its own:

    .venv/bin/python bench/loop_mining.py --run /tmp/run0 [--epochs 10] [--conf 0.4] [--copies 1] [--recall 0.5,0.7]

From a finished pipeline run (``--run``; read only, see bench/loop_oversample.py):

1. mine@ (stagetrain.mine, as the stage) runs ``--start``'s checkpoint (default stage3, else stage2) over the target train
   split: the false positives it makes at ``--conf`` (the synthetic world's distractors: barrels, signs, people,
   tape in cone colours, unlabelled);
2. three arms fine-tune that checkpoint with stage3's recipe, ``--epochs`` epochs, same seed (trainset, as the
   pipeline): ``hn_off`` the plain list; ``hn_on`` with the mined images added ``--copies`` times; ``hn_steps``,
   the equal-steps control: the plain list with as many extra entries spread evenly over all labelled images
   (one common oversample factor), so it trains the same number of steps as ``hn_on`` without favouring the mined
   images; ``--seeds K`` repeats every arm with K seeds (see bench/loop_oversample.py);
3. on the target test split: false positives per image and precision at the score threshold where each
   model reaches each ``--recall`` (IoU 0.5, all classes; each model its own threshold, recomputed on every
   resample), and mAP50-95; each difference with a paired bootstrap 95% CI over test images.
   ``hn_on - hn_steps`` is what the choice of the mined images does; ``hn_steps - hn_off`` the extra steps alone.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loop_oversample import REPO, arms_params, equal_steps_arms, map50_95, report, seeds, workspace

sys.path.insert(0, str(REPO / "src"))

from stagetrain import mine
from stagetrain.config import parse
from stagetrain.stats.matching import DetectionRecords

CHUNK = 50  # resamples per vectorised block (blocks of resamples x detections floats)
ARMS = ("hn_off", "hn_on", "hn_steps")  # plain, mined images added, equal-steps control
RECALLS = "0.5,0.7"  # the fixed recalls at which false positives are counted (a model reaching neither gives NaN)


def at_recall(recall: float, what: str) -> Callable:
    """False positives per image (``what="fp"``) or precision (``"precision"``) at the highest score threshold
    that reaches ``recall`` at IoU 0.5 over all classes, under image weights; NaN where it is never reached."""

    def stat(records: DetectionRecords, weights: np.ndarray) -> np.ndarray:
        order = np.argsort(-records.score, kind="stable")
        images, tp = records.image_index[order], records.tp[order, 0].astype(np.float64)
        out = np.full(weights.shape[0], np.nan)
        for start in range(0, weights.shape[0], CHUNK):
            w = weights[start : start + CHUNK]
            det_w = w[:, images]  # (batch, n_det)
            cum_tp, cum_all = np.cumsum(det_w * tp, axis=1), np.cumsum(det_w, axis=1)
            need = recall * (w @ records.n_gt.sum(axis=1))  # weighted ground-truth boxes
            reached = cum_tp >= need[:, None] - 1e-9
            hit = reached.any(axis=1)
            first = np.argmax(reached, axis=1)
            rows = np.arange(w.shape[0])
            fp = cum_all[rows, first] - cum_tp[rows, first]
            value = fp / w.sum(axis=1) if what == "fp" else cum_tp[rows, first] / np.maximum(cum_all[rows, first], 1e-12)
            out[start : start + CHUNK] = np.where(hit, value, np.nan)
        return out

    return stat


def measure(args) -> list[str]:
    run_dir, work, start = workspace(args, "mining")
    epochs, resamples = getattr(args, "epochs", 10), getattr(args, "resamples", 1000)
    conf, copies = getattr(args, "conf", None) or 0.4, getattr(args, "copies", None) or 1
    recalls = [float(r) for r in str(getattr(args, "recall", None) or RECALLS).split(",")]
    treated = {"hard_negatives": {"conf": conf, "copies": copies}}
    weights = run_dir / "models" / start / "best.pt"
    probe = parse(arms_params(run_dir, start, epochs, {"hn_on": treated}))
    t0 = time.perf_counter()
    mined = mine.run(probe, "hn_on", weights, work / "organized", work / "mined/hn_on")  # seed-free: reused by every seed
    lines = [
        f"hard negatives (conf {conf}, copies {copies}): stage3's recipe from {start}, {epochs} epochs per arm, seeds {seeds(args, probe)}",
        (
            f"  mine@: {mined['false_positives']} false positives {mined['by_kind']} in {mined['images_with_false_positives']} of "
            f"{mined['scanned_images']['target']} target train images ({time.perf_counter() - t0:.0f} s)"
        ),
    ]
    records: dict[str, list[DetectionRecords]] = {arm: [] for arm in ARMS}
    for seed, arm, manifest, result, seconds in equal_steps_arms(args, run_dir, work, start, epochs, ARMS, treated, work / "mined/hn_on"):
        records[arm].append(result.records)
        lines.append(
            f"  seed {seed} {arm}: {manifest['train_images']} list entries (+{manifest['mined_images']} mined, "
            f"+{manifest['oversampled_images']} spread evenly), test mAP50-95 {result.metrics['mAP50-95']:.4f} ({seconds:.0f} s)"
        )
    stats = [(f"false positives per image at recall {r}", at_recall(r, "fp")) for r in recalls]
    stats += [(f"precision at recall {r}", at_recall(r, "precision")) for r in recalls]
    stats.append(("mAP50-95", map50_95))
    report(lines, records, ARMS, "mining", "the mined images", stats, resamples, probe.seed, work)
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a pipeline checkout that ran train@<start> (models/, data/organized/)")
    p.add_argument("--start", help="the checkpoint that mines and that the arms fine-tune (default: stage3, else stage2)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--conf", type=float, default=0.4, help="hard_negatives.conf")
    p.add_argument("--copies", type=int, default=1, help="hard_negatives.copies")
    p.add_argument("--recall", default=RECALLS, help="the fixed recalls (comma-separated) at which false positives are counted")
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--seeds", type=int, default=1, help="train every arm with this many seeds (seed, seed+1, ...)")
    p.add_argument("--work", help="scratch folder (default: <run>_mining beside the run)")
    p.add_argument("--reuse", action="store_true", help="keep the arms an earlier run trained in --work (same params)")
    for line in measure(p.parse_args()):
        print(line, flush=True)


if __name__ == "__main__":
    main()
