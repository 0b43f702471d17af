"""train@<stage>: one training stage, started from its upstream checkpoint only.

The stage's effective Ultralytics arguments are the `train` defaults overlaid by the stage's own
keys (from the typed config), plus what the pipeline owns: data, imgsz, seed, deterministic, the
freeze list derived from ``freeze_level``, and a run dir outside the DVC outputs (see resume.py).
Per-epoch losses, metrics and learning rates go to our own ``dvclive.Live``; its plots land in
``metrics/<stage>/plots`` when the stage completes. The data is the stage's training list
(``data/trainsets/<stage>/data.yaml``, see data/trainset.py): its image counts, replayed ones
included, go into ``metrics/<stage>.json``.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from stagetrain import progress, ultra
from stagetrain.config import Config
from stagetrain.data import trainset
from stagetrain.errors import UserError
from stagetrain.train import checkpoint, distill, resume
from stagetrain.train.freeze import frozen_layers

PATH_ARGS = ("data", "model", "project", "name", "save_dir")  # host paths never written to outputs
KD_LOSSES_IN_VAL = ("val/dis_loss", *(f"val/{name}" for name in distill.LOSS_NAMES))  # distillation runs in training only: always 0 in val


def effective_args(cfg: Config, stage_name: str, data_yaml: Path, freeze: list[int], device: Any) -> dict[str, Any]:
    """The exact Ultralytics train arguments for a stage (before its run dir is added)."""
    stage = cfg.stages[stage_name]
    args = {"plots": False, **stage.train_args}  # plots off by default: curves go to dvclive
    args.update(
        data=str(data_yaml),
        imgsz=cfg.imgsz,
        seed=cfg.seed,
        deterministic=True,
        freeze=freeze,
        device=device,
    )
    return args


class _LiveLogger:
    """One dvclive step per completed epoch (losses, val scores, learning rates), and the final best.pt metrics.

    Each epoch also prints one progress line named after the stage (see :func:`epoch_line`).
    """

    def __init__(self, live_dir: Path, resume: bool, label: str, epochs: int) -> None:
        from dvclive import Live

        self.live = Live(dir=str(live_dir), resume=resume, save_dvc_exp=False, dvcyaml=None, report=None)
        self.final_metrics: dict[str, float] = {}
        self.epochs_run = 0
        self.label, self.epochs = label, epochs
        self.epoch_started = time.perf_counter()

    def epoch_end(self, trainer) -> None:
        self.epochs_run = ultra.epochs_completed(trainer)
        metrics = {ultra.BOX_METRICS.get(k, k): v for k, v in ultra.val_metrics(trainer).items()}
        scores = {name if "/" in name else f"val/{name}": value for name, value in metrics.items() if name not in KD_LOSSES_IN_VAL}
        self.live.step = self.epochs_run - 1  # explicit: a resumed run continues the same curve
        losses = ultra.epoch_losses(trainer)
        for name, value in {**losses, **scores, **ultra.learning_rates(trainer)}.items():
            self.live.log_metric(name, float(value))
        self.live.next_step()
        now = time.perf_counter()
        progress.say(epoch_line(self.label, self.epochs_run, self.epochs, losses, scores, now - self.epoch_started))
        self.epoch_started = now

    def final(self, trainer) -> None:
        self.final_metrics = {ultra.BOX_METRICS.get(k, k): v for k, v in ultra.val_metrics(trainer).items()}


def epoch_line(label: str, epoch: int, epochs: int, losses: dict[str, float], scores: dict[str, float], seconds: float) -> str:
    """``train@stage2 epoch 3/10 box 1.23 cls 0.98 dfl 1.10 val mAP50-95 0.412 mAP50 0.701 (12.3 s)``."""
    trained = " ".join(f"{name.removeprefix('train/').removesuffix('_loss')} {float(v):.3f}" for name, v in losses.items())
    val = " ".join(f"{name} {scores[f'val/{name}']:.3f}" for name in ("mAP50-95", "mAP50") if f"val/{name}" in scores)
    return f"{label} epoch {epoch}/{epochs} {trained}{' val ' + val if val else ''} ({seconds:.1f} s)"


def _portable(args: dict[str, Any], upstream: Path) -> dict[str, Any]:
    out = {k: v for k, v in args.items() if k not in PATH_ARGS}
    out["data"] = os.path.relpath(args["data"])
    out["model"] = os.path.relpath(upstream)
    if args.get("distill_model"):
        out["distill_model"] = os.path.relpath(args["distill_model"])
    return out


def _distillation(cfg: Config, stage_name: str, student: Any, teacher: Path | None, args: dict[str, Any]) -> tuple[type, dict[str, str]]:
    """The trainer class and environment of a stage; for `kind: feature`, Ultralytics' own arguments in ``args``."""
    spec = cfg.stages[stage_name].distill
    if spec is None:
        return resume.AtomicCheckpointTrainer, {}
    if teacher is None or not teacher.exists():
        raise UserError(
            f"{cfg.source}: `stages.{stage_name}` distils, but its teacher checkpoint {teacher} does not exist; run its stage first"
        )
    distill.check_pair(cfg, stage_name, student, teacher)
    if spec.kind == "feature":
        args.update(distill_model=str(teacher), dis=spec.weight)
        return resume.AtomicCheckpointTrainer, {}
    return distill.LogitDistillTrainer, distill.logit_env(teacher, spec)


def _train(
    model: Any, state: resume.RunState, trainer_class: type, args: dict[str, Any], resumed_from: int | None, label: str
) -> tuple[Any, _LiveLogger]:
    """Train (or resume) in ``state``'s run dir with our logger attached; returns the trainer and the logger."""
    if resumed_from is not None:
        model = ultra.YOLO(str(state.last))
    logger = _LiveLogger(state.live_dir, resumed_from is not None, label, int(args.get("epochs", 100)))
    ultra.on_epochs(model, logger.epoch_end, logger.final)
    run_args = {"project": str(state.run_dir.parent.resolve()), "name": state.run_dir.name, "exist_ok": True, "verbose": False}
    if resumed_from is None:
        model.train(trainer=trainer_class, **args, **run_args)
    else:
        model.train(trainer=trainer_class, resume=True, **run_args)
    logger.live.end()
    return model.trainer, logger


def _write_outputs(trainer: Any, effective: dict[str, Any], out_dir: Path, live_dir: Path, state: resume.RunState) -> None:
    """best.pt, last.pt and args.yaml without host paths, and the dvclive plots; the run folder is removed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("best.pt", "last.pt"):
        checkpoint.write_portable(checkpoint.read(ultra.weights_dir(trainer) / name), out_dir / name, effective)
    (out_dir / "args.yaml").write_text(yaml.safe_dump(effective, sort_keys=True))
    if live_dir.exists():
        shutil.rmtree(live_dir)
    shutil.copytree(state.live_dir / "plots", live_dir / "plots")  # metrics.json: metrics/<stage>.json is the summary
    shutil.rmtree(state.work_dir, ignore_errors=True)


def run(
    cfg: Config,
    stage_name: str,
    data_yaml: Path,
    upstream: Path,
    out_dir: Path,
    live_dir: Path,
    work_dir: Path,
    teacher: Path | None = None,
) -> dict:
    """Train ``stage_name`` from ``upstream`` on ``data_yaml`` and write best.pt, last.pt, args.yaml to ``out_dir``.

    An interrupted run of the same stage with the same fingerprint (params, upstream, teacher, data,
    code) in ``work_dir`` is resumed from its last completed epoch instead of starting from zero.
    ``teacher`` is the checkpoint a stage with a ``distill:`` block learns from (ignored otherwise).
    Returns the stage's final val metrics (of best.pt) plus epochs and wall time.
    """
    stage = cfg.stages[stage_name]
    model = ultra.YOLO(str(upstream))
    ultra.check_arch(model.model.yaml, f"{cfg.source}: `stages.{stage_name}.from: {stage.upstream}` ({upstream})")
    checkpoint.check_class_names(upstream, cfg.classes, model.model)
    data_counts = trainset.summary(cfg, stage_name, data_yaml)  # a list stale against params fails here, before any training
    freeze = frozen_layers(model.model, stage.freeze_level)
    args = effective_args(cfg, stage_name, data_yaml, freeze, ultra.resolve_device(stage.train_args.get("device")))
    trainer_class, env = _distillation(cfg, stage_name, model.model, teacher, args)
    os.environ.update(env)

    teacher_dep = teacher if stage.distill else None
    state = resume.RunState(work_dir, resume.fingerprint(args, upstream, data_yaml, teacher_dep, stage.distill))
    with state.exclusive():  # an orphaned trainer of this stage must not share its run folder
        resumed_from = state.resumable_epoch(int(args.get("epochs", 100)))
        if resumed_from is None:
            state.start_fresh()
        started = time.perf_counter()
        trainer, logger = _train(model, state, trainer_class, args, resumed_from, f"train@{stage_name}")
        seconds = time.perf_counter() - started
        _write_outputs(trainer, _portable({**ultra.trainer_args(trainer), "freeze": freeze}, upstream), out_dir, live_dir, state)
    return {
        **{key: round(logger.final_metrics.get(key, 0.0), 6) for key in ultra.BOX_METRICS.values()},
        "epochs_run": logger.epochs_run,
        "resumed_from_epoch": resumed_from,
        "best_epoch": ultra.best_epoch(trainer),
        "seconds": round(seconds, 1),
        **data_counts,
        "freeze_level": stage.freeze_level,
        "frozen_layers": len(freeze),
        "distill": None if stage.distill is None else {"kind": stage.distill.kind, "teacher": stage.teacher},
    }
