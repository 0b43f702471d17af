"""Active learning, one round: +N images picked by uncertainty vs +N random images, same N, same training.

Called by ``bench/data_loop.py --only active`` (``measure(args) -> list[str]``). From a finished pipeline run
(``--run``: models/<start>/best.pt and data/organized/target with its pool):

1. select@ runs twice on the target's unlabelled pool with the start checkpoint: ``--strategy`` (default
   least_confidence) and ``random`` (the control), ``--budget`` images each (stagetrain.select, as the stage);
2. each package comes back with ``labels: oracle`` (the synthetic pool's true labels) as a ``kind: annotations``
   dataset: download, organize (which carves a val/test share out of it, as for any dataset without those
   splits) and a training list with ``replay: {<round>: 1.0}``, exactly the pipeline's path;
3. each arm fine-tunes the start checkpoint on target train + its imported train split, same epochs, lr and
   seed; a third arm with nothing added shows what the extra epochs alone give; ``--seeds K`` retrains every
   arm with K seeds (the picks stay those of the params' seed);
4. every arm is scored on the target test split; a paired bootstrap over test images gives each difference's 95%
   CI (with several seeds, of the difference averaged over seeds; see bench/loop_oversample.py).
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from loop_oversample import compare, link_or_copy, map50_95, seeds

from stagetrain import evaluate, select
from stagetrain.config import parse
from stagetrain.data import organize, sources, trainset
from stagetrain.train import runner


def _params(args, start: str) -> tuple[dict, str]:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    round1 = {**raw.get("select", {}).get("round1", {}), "model": start, "dataset": "target", "budget": args.budget}
    raw["select"] = {}
    for arm, strategy in (("active", args.strategy), ("random", "random")):
        package = str(args.work / arm / "package.zip")
        raw["datasets"][f"round_{arm}"] = {"kind": "annotations", "annotations": {"package": package, "labels": "oracle"}}
        raw["select"][arm] = {**round1, "strategy": strategy}
    # the recipe of the stage that follows `start` in the pipeline (stage1 -> stage2's, stage2 -> stage3's), else stage3's
    recipe = next((name for name, block in raw["stages"].items() if block.get("from") == start), "stage3")
    base = copy.deepcopy(raw["stages"][recipe])
    base.update({"from": start, "teacher": start, "dataset": "target", "epochs": args.epochs, "patience": args.epochs})
    for extra in ("replay", "oversample", "hard_negatives", "distill"):
        base.pop(extra, None)
    raw["stages"]["plus_none"] = dict(base)
    raw["stages"]["plus_active"] = {**base, "replay": {"round_active": 1.0}}
    raw["stages"]["plus_random"] = {**base, "replay": {"round_random": 1.0}}
    raw["evaluate"]["datasets"] = ["target"]
    return raw, recipe


def _select_and_import(cfg, args, run_dir: Path, organized: Path, weights: Path, reuse: bool) -> dict:
    picked = {}
    for arm in ("active", "random"):
        summary_file = args.work / arm / "summary.json"
        if reuse and summary_file.exists():
            picked[arm] = json.loads(summary_file.read_text())
            continue
        summary = select.run(cfg, arm, weights, organized / "target/images/pool", args.work / arm / "package.zip")
        raw = args.work / "raw" / f"round_{arm}"
        sources.run(cfg, f"round_{arm}", raw)
        report = organize.run(cfg, f"round_{arm}", raw, organized / f"round_{arm}", [run_dir / "data/raw/target"])
        summary.update(train_images=report["images"]["train"], boxes=sum(report["boxes"]["train"].values()))
        summary_file.write_text(json.dumps(summary))
        picked[arm] = summary
    return picked


def measure(args) -> list[str]:
    run_dir = Path(args.run)
    start = args.start or ("stage3" if (run_dir / "models/stage3/best.pt").exists() else "stage2")
    args.work = Path(args.work or (run_dir.parent / f"{run_dir.name}_active")).resolve()
    reuse = getattr(args, "reuse", False) and (args.work / "organized/target").is_dir()
    if not reuse:  # --reuse: keep the packages, imports and trained arms an earlier run left in --work
        shutil.rmtree(args.work, ignore_errors=True)
        shutil.copytree(run_dir / "data/organized/target", args.work / "organized/target", copy_function=link_or_copy)
    organized = args.work / "organized"
    raw_params, recipe = _params(args, start)
    cfg = parse(raw_params)
    weights = run_dir / "models" / start / "best.pt"
    arms = [arm.strip() for arm in getattr(args, "arms", "none,active,random").split(",")]
    lines, started = [], time.perf_counter()
    picked = _select_and_import(cfg, args, run_dir, organized, weights, reuse)
    overlap = len(set(picked["active"]["files"]) & set(picked["random"]["files"]))
    lines.append(
        f"select: {args.budget} of {picked['active']['pool_images']} pool images by {args.strategy} (mean score "
        f"{picked['active']['score_selected_mean']:.3f}, pool {picked['active']['score_pool_mean']:.3f}) vs random; {overlap} picked by both"
    )
    for arm in ("active", "random"):
        lines.append(
            f"  {arm}: {picked[arm]['train_images']} images join training ({picked[arm]['boxes']} boxes); organize carved val/test out of the rest"
        )
    records: dict[str, list] = {arm: [] for arm in arms}
    for seed in seeds(args, cfg):  # the picks stay the base seed's; each seed retrains every arm
        seed_cfg = parse({**raw_params, "seed": seed})
        for arm in arms:
            stage, folder = f"plus_{arm}", f"plus_{arm}/seed{seed}"
            listing, best = args.work / "trainsets" / folder, args.work / "models" / folder / "best.pt"
            t0 = time.perf_counter()
            if not (reuse and best.exists()):
                trainset.run(seed_cfg, stage, organized, listing)
                runner.run(
                    seed_cfg, stage, listing / "data.yaml", weights, best.parent, args.work / "live" / folder, args.work / "runs" / folder
                )
            result = evaluate.evaluate_model(seed_cfg, best, organized / "target/data.yaml", args.work / "eval" / folder)
            records[arm].append(result.records)
            lines.append(
                f"  seed {seed} +{arm}: test mAP50-95 {result.metrics['mAP50-95']:.4f} mAP50 {result.metrics['mAP50']:.4f} "
                f"({time.perf_counter() - t0:.0f} s)"
            )
    titles = {
        ("random", "active"): "uncertain vs random picks",
        ("none", "active"): "uncertain picks vs none added",
        ("none", "random"): "random picks vs none added",
    }
    pairs = [(title, a, b) for (a, b), title in titles.items() if a in arms and b in arms]
    compare(lines, records, pairs, [("mAP50-95", map50_95)], args.resamples, cfg.seed)
    lines.append(
        f"active bench: {args.epochs} epochs per arm from {start} with {recipe}'s recipe, seeds {seeds(args, cfg)}, "
        f"{time.perf_counter() - started:.0f} s in all"
    )
    return lines
