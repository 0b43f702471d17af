"""Critical-class oversampling: the same fine-tune with and without ``oversample: {<class>: <factor>}``.

Called by ``bench/data_loop.py --only oversample`` (``measure(args) -> list[str]``), or on its own:

    .venv/bin/python bench/loop_oversample.py --run /tmp/run0 [--epochs 10] [--class large_orange_cone] [--factor 3]

From a finished pipeline run (``--run``: models/<start>/best.pt, data/organized/target; read only, the organized
folder is hard-linked into the work folder since Ultralytics writes label caches beside it):

1. three training lists through trainset (the pipeline's code): stage3's recipe from ``--start`` (default stage3, else stage2),
   ``--epochs`` epochs: ``os_off`` the plain list; ``os_on`` with the class oversampled (default: the class the
   fewest target train images hold); ``os_steps``, the equal-steps control: the plain list with every labelled
   image oversampled by one common factor so that it is exactly as long as ``os_on``'s (same steps an epoch, same
   class balance as ``os_off``);
2. the arms train with the same seed and arguments (train/runner.py, as train@<stage>); ``--seeds K`` repeats
   every arm with seeds seed .. seed+K-1 (training noise: each line then gives every seed's difference);
3. each is scored on the target test split; per-class AP50, AP50-95 and recall (IoU 0.5, conf >= 0.25) of the
   oversampled class, mean AP of the rest, each difference with a paired bootstrap 95% CI over test images
   (with several seeds, of the difference averaged over seeds, on the same resamples). ``os_on - os_steps`` is the
   class balance at equal steps; ``os_steps - os_off`` what the extra steps alone do.

The helpers here (work folder, arm training, per-class and false-positive statistics) serve bench/loop_mining.py too.
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from stagetrain import evaluate
from stagetrain.config import Config, parse
from stagetrain.data import trainset
from stagetrain.data.organized import split_images
from stagetrain.stats import bootstrap
from stagetrain.stats.ap import average_precision
from stagetrain.stats.matching import DetectionRecords
from stagetrain.train import runner

RECALL_CONF = 0.25  # the deployment threshold at which recall is read (Ultralytics' predict default)
ARMS = ("os_off", "os_on", "os_steps")  # plain, oversampled, equal-steps control


# --- shared with loop_mining.py -------------------------------------------------------------------


def workspace(args, name: str) -> tuple[Path, Path, str]:
    """(run dir, a fresh work folder with organized/target hard-linked in, start stage); ``--reuse`` keeps the folder
    an earlier run of the same bench left (its trained arms are not retrained)."""
    run_dir = Path(args.run).resolve()
    start = getattr(args, "start", None) or ("stage3" if (run_dir / "models/stage3/best.pt").is_file() else "stage2")
    if not (run_dir / "models" / start / "best.pt").is_file():
        raise SystemExit(f"{run_dir}/models/{start}/best.pt: not found; pass --run a pipeline checkout that ran train@{start}")
    work = Path(args.work).resolve() / name if getattr(args, "work", None) else run_dir.parent / f"{run_dir.name}_{name}"
    if not (getattr(args, "reuse", False) and (work / "organized/target").is_dir()):
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(run_dir / "data/organized/target", work / "organized/target", copy_function=link_or_copy)
    return run_dir, work, start


def arms_params(run_dir: Path, start: str, epochs: int, arms: dict[str, dict], seed: int | None = None) -> dict:
    """The run's params with one stage per arm: stage3's recipe from ``start``, plus each arm's own keys."""
    raw = yaml.safe_load((run_dir / "params.yaml").read_text())
    if seed is not None:
        raw["seed"] = seed
    recipe = copy.deepcopy(raw["stages"]["stage3"])
    recipe.update({"from": start, "teacher": start, "dataset": "target", "epochs": epochs, "patience": epochs})
    for extra in ("replay", "oversample", "hard_negatives", "distill"):
        recipe.pop(extra, None)
    raw["stages"].update({arm: {**recipe, **keys} for arm, keys in arms.items()})
    raw["evaluate"]["datasets"] = ["target"]
    return raw


def train_arm(
    cfg: Config, arm: str, work: Path, weights: Path, mined_dir: Path | None = None, reuse: bool = False
) -> tuple[dict, evaluate.ModelEvaluation, float]:
    """trainset -> train (unless ``reuse`` finds the arm trained) -> test-split evaluation of one arm: (its manifest,
    its evaluation, seconds)."""
    started = time.perf_counter()
    folder = f"{arm}/seed{cfg.seed}"
    listing = work / "trainsets" / folder
    manifest = trainset.run(cfg, arm, work / "organized", listing, mined_dir)
    if not (reuse and (work / "models" / folder / "best.pt").is_file()):
        runner.run(cfg, arm, listing / "data.yaml", weights, work / "models" / folder, work / "live" / folder, work / "runs" / folder)
    result = evaluate.evaluate_model(cfg, work / "models" / folder / "best.pt", work / "organized/target/data.yaml", work / "eval" / folder)
    return manifest, result, time.perf_counter() - started


def seeds(args, cfg: Config) -> list[int]:
    """``--seeds K``: the params' seed and the K - 1 after it."""
    return [cfg.seed + i for i in range(max(1, getattr(args, "seeds", None) or 1))]


def equal_steps(cfg: Config, treated: str, organized: Path, mined: dict | None = None) -> dict[str, float]:
    """The equal-steps control of arm ``treated``: an ``oversample`` map (one factor for every class) under which the
    plain list (its own and replayed images) is exactly as long as ``treated``'s list, with its class balance unchanged.
    """
    entries = trainset.build(cfg, treated, organized, mined)
    plain = [e for e in entries if e.reason in (trainset.OWN, trainset.REPLAY)]
    labelled = sum(1 for e in plain if trainset.label_classes(e.image))
    extra = len(entries) - len(plain)
    if not labelled or extra > 19 * labelled:
        raise SystemExit(f"{treated}: {extra} extra entries over {labelled} labelled images; no oversample factor <= 20 matches")
    return dict.fromkeys(cfg.classes, 1 + extra / labelled)


def equal_steps_arms(args, run_dir: Path, work: Path, start: str, epochs: int, arms: tuple[str, str, str], treated: dict, mined_dir=None):
    """For every seed, train ``arms`` = (plain, treated, its equal-steps control): yields ``(seed, arm, manifest,
    evaluation, seconds)``. ``treated`` is the treated arm's stage keys; ``mined_dir`` its mine@ folder (hard negatives)."""
    off, on, steps = arms
    weights = run_dir / "models" / start / "best.pt"
    for seed in seeds(args, parse(arms_params(run_dir, start, epochs, {}))):
        cfg = parse(arms_params(run_dir, start, epochs, {on: treated}, seed))
        control = {"oversample": equal_steps(cfg, on, work / "organized", trainset.read_mined(cfg, on, mined_dir))}
        cfg = parse(arms_params(run_dir, start, epochs, {off: {}, on: treated, steps: control}, seed))
        for arm in arms:
            yield (seed, arm, *train_arm(cfg, arm, work, weights, mined_dir if arm == on else None, getattr(args, "reuse", False)))


def paired_ci(va: np.ndarray, vb: np.ndarray, seed_draws: np.ndarray) -> dict:
    """b - a from two arms' statistics per training seed, ``(seeds, 1 + resamples)``: column 0 on the whole test split,
    the rest on bootstrap draws of its images that both arms share.

    ``ci_low``/``ci_high``: 95% percentile CI of the difference averaged over the seeds, over test images only.
    ``seeds_low``/``seeds_high``: the same with the seeds resampled too (``seed_draws``, ``(resamples, seeds)`` seed
    indices drawn with replacement): training noise included, the interval to trust when there are several seeds.
    ``per_seed``: each seed's observed difference.
    """
    diff = vb - va  # (seeds, 1 + resamples)
    over_images = diff[:, 1:].mean(axis=0)
    over_both = np.take_along_axis(diff[:, 1:].T, seed_draws, axis=1).mean(axis=1)
    out = {"a": float(va[:, 0].mean()), "b": float(vb[:, 0].mean()), "diff": float(diff[:, 0].mean())}
    for key, draws in (("ci", over_images), ("seeds", over_both)):
        draws = draws[np.isfinite(draws)]
        low, high = np.quantile(draws, [0.025, 0.975]) if draws.size > 1 else (np.nan, np.nan)
        out.update({f"{key}_low": float(low), f"{key}_high": float(high)})
    return {**out, "per_seed": [float(d) for d in diff[:, 0]]}


def ci_line(label: str, ci: dict, digits: int = 4) -> str:
    f = f"{{:.{digits}f}}"
    g = f"{{:+.{digits}f}}"
    line = (
        f"  {label}: {f.format(ci['a'])} -> {f.format(ci['b'])}, diff {g.format(ci['diff'])}, "
        f"95% CI [{g.format(ci['ci_low'])}, {g.format(ci['ci_high'])}]"
    )
    if len(ci.get("per_seed", [])) > 1:
        line += f" (images), [{g.format(ci['seeds_low'])}, {g.format(ci['seeds_high'])}] (images and seeds); per seed "
        line += ", ".join(g.format(d) for d in ci["per_seed"])
    return line


def map50_95(records: DetectionRecords, weights: np.ndarray) -> np.ndarray:
    """mAP50-95 over the classes with ground truth, under image weights."""
    return np.nanmean(cached_ap(records, weights).mean(axis=2), axis=1)


def report(
    lines: list[str],
    records: dict[str, list[DetectionRecords]],
    arms: tuple[str, str, str],
    technique: str,
    what: str,
    stats,
    resamples: int,
    seed: int,
    work: Path,
) -> None:
    """The three comparisons of ``arms`` = (plain, treated, equal-steps control), one CI line per ``(label, stat)`` each:
    ``what`` the treated arm changes at equal steps, the extra steps alone, and ``technique`` as a whole."""
    off, on, steps = arms
    pairs = [(f"{what} at equal steps", steps, on), ("extra steps alone", off, steps), (f"{technique} as a user turns it on", off, on)]
    compare(lines, records, pairs, stats, resamples, seed)
    lines.append(f"  ({records[off][0].n_images} test images, {resamples} paired bootstrap resamples; work folder {work})")


def compare(
    lines: list[str], records: dict[str, list[DetectionRecords]], pairs: list[tuple[str, str, str]], stats, resamples: int, seed: int
) -> None:
    """For each ``(title, a, b)``: a heading, then one CI line per ``(label, stat)`` of arm b against arm a. Every arm's
    statistic is computed once per seed, on the whole test split and the same ``resamples`` bootstrap draws of its
    images; with several seeds, each draw also draws the seeds (see :func:`paired_ci`)."""
    n_images = next(iter(records.values()))[0].n_images
    weights = np.vstack([np.ones(n_images), bootstrap.bootstrap_weights(n_images, resamples, seed)])
    n_seeds = len(next(iter(records.values())))
    seed_draws = np.random.default_rng(seed).integers(n_seeds, size=(resamples, n_seeds))
    values: dict[tuple[str, str], np.ndarray] = {}
    for title, a, b in pairs:
        lines.append(f" {title} ({b} - {a}):")
        for label, stat in stats:
            for arm in (a, b):
                if (arm, label) not in values:
                    values[arm, label] = np.array([stat(run, weights) for run in records[arm]])
            lines.append(ci_line(label, paired_ci(values[a, label], values[b, label], seed_draws)))


# --- per-class statistics ---------------------------------------------------------------------------


_AP: dict[tuple[int, int], tuple] = {}  # (id(records), id(weights)) -> (records, weights, AP): the ids stay theirs while held


def cached_ap(records: DetectionRecords, weights: np.ndarray) -> np.ndarray:
    """``average_precision(records, weights)`` (batch, classes, IoU thresholds), computed once per records and weights:
    the AP statistics below all read it (a thousand draws over 300 images take seconds each)."""
    key = (id(records), id(weights))
    if key not in _AP:
        _AP[key] = (records, weights, average_precision(records, weights))
    return _AP[key][2]


def class_ap(class_id: int, iou: str) -> Callable:
    """AP of one class under image weights: ``iou`` = "50" (IoU 0.5) or "50-95" (mean over the ten thresholds)."""

    def stat(records: DetectionRecords, weights: np.ndarray) -> np.ndarray:
        ap = cached_ap(records, weights)[:, class_id]  # (batch, n_iou)
        return ap[:, 0] if iou == "50" else ap.mean(axis=1)

    return stat


def other_classes_map(class_id: int) -> Callable:
    """mAP50-95 over the other classes (what oversampling one class may cost the rest)."""

    def stat(records: DetectionRecords, weights: np.ndarray) -> np.ndarray:
        ap = cached_ap(records, weights).mean(axis=2)
        return np.nanmean(np.delete(ap, class_id, axis=1), axis=1)

    return stat


def class_recall(class_id: int, conf: float = RECALL_CONF) -> Callable:
    """Recall of one class at IoU 0.5 among detections at or above ``conf``, under image weights."""

    def stat(records: DetectionRecords, weights: np.ndarray) -> np.ndarray:
        keep = (records.class_id == class_id) & (records.score >= conf) & records.tp[:, 0]
        hits = weights[:, records.image_index[keep]].sum(axis=1)
        total = weights @ records.n_gt[:, class_id]
        return np.divide(hits, total, out=np.full(hits.shape, np.nan), where=total > 0)

    return stat


# --- oversampling ----------------------------------------------------------------------------------


def rarest_class(cfg: Config, organized: Path) -> str:
    """The class the fewest target train images hold (at least one)."""
    holding = dict.fromkeys(cfg.classes, 0)
    for image in split_images(organized / "target/data.yaml", "train"):
        for class_id in set(trainset.label_classes(image)):
            holding[cfg.classes[class_id]] += 1
    return min((n, name) for name, n in holding.items() if n)[1]


def measure(args) -> list[str]:
    run_dir, work, start = workspace(args, "oversample")
    epochs, resamples = getattr(args, "epochs", 10), getattr(args, "resamples", 1000)
    probe = parse(yaml.safe_load((run_dir / "params.yaml").read_text()))
    cls = getattr(args, "oversample_class", None) or rarest_class(probe, work / "organized")
    factor = getattr(args, "factor", None) or 3.0
    class_id, treated = probe.classes.index(cls), {"oversample": {cls: factor}}
    lines = [f"oversample {{{cls}: {factor}}}: stage3's recipe from {start}, {epochs} epochs per arm, seeds {seeds(args, probe)}"]
    records: dict[str, list[DetectionRecords]] = {arm: [] for arm in ARMS}
    for seed, arm, manifest, result, seconds in equal_steps_arms(args, run_dir, work, start, epochs, ARMS, treated):
        records[arm].append(result.records)
        lines.append(
            f"  seed {seed} {arm}: {manifest['train_images']} list entries (+{manifest['oversampled_images']} oversampled), "
            f"test mAP50-95 {result.metrics['mAP50-95']:.4f}, {cls} AP50-95 {result.metrics['per_class'][cls]['AP50-95']:.4f} ({seconds:.0f} s)"
        )
        section = manifest["oversample"]
        if section and seed == probe.seed:
            held, factors = section["images_holding"], section["factors"]
            scope = f"{held[cls]} images hold {cls} (x{factors[cls]:.4g})"
            if len(held) > 1:
                scope = f"every labelled image x{factors[cls]:.4g} ({held[cls]} hold {cls})"
            lines.append(
                f"    {scope}; {cls} boxes {section['before']['boxes'][cls]} -> {section['after']['boxes'][cls]}, all boxes "
                f"{sum(section['before']['boxes'].values())} -> {sum(section['after']['boxes'].values())}"
            )
    stats = (
        (f"{cls} AP50", class_ap(class_id, "50")),
        (f"{cls} AP50-95", class_ap(class_id, "50-95")),
        (f"{cls} recall (IoU 0.5, conf >= {RECALL_CONF})", class_recall(class_id)),
        ("other classes mAP50-95", other_classes_map(class_id)),
        ("mAP50-95", map50_95),
    )
    report(lines, records, ARMS, "oversampling", "class balance", stats, resamples, probe.seed, work)
    return lines


def link_or_copy(src: str, dst: str) -> None:
    """A hard link where the file system allows one (no image bytes copied), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a pipeline checkout that ran train@<start> (models/, data/organized/)")
    p.add_argument("--start", help="the checkpoint the arms fine-tune (default: stage3 if the run has it, else stage2)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--class", dest="oversample_class", help="the class to oversample (default: the rarest in target train)")
    p.add_argument("--factor", type=float, default=3.0)
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--seeds", type=int, default=1, help="train every arm with this many seeds (seed, seed+1, ...)")
    p.add_argument("--work", help="scratch folder (default: <run>_oversample beside the run)")
    p.add_argument("--reuse", action="store_true", help="keep the arms an earlier run trained in --work (same params)")
    for line in measure(p.parse_args()):
        print(line, flush=True)


if __name__ == "__main__":
    main()
