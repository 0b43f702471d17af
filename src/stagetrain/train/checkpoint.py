"""Checkpoints: build the initial weights, read class names, and write outputs without host paths.

Ultralytics checkpoints carry the date, the git state and absolute paths (data, save_dir) inside
``train_args`` and the pickled model's ``args``. Outputs of a DVC stage must not: queued
experiments run in temp copies, and identical inputs should give identical bytes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from stagetrain.config import Config, ConfigError

VOLATILE_KEYS = ("date", "git", "license", "docs")


def read(path: Path) -> dict[str, Any]:
    """Load an Ultralytics checkpoint dict (trusted: produced by this pipeline or tracked by the user)."""
    from stagetrain import ultra  # noqa: F401  (unpickling imports Ultralytics: make it hermetic first)

    return torch.load(path, map_location="cpu", weights_only=False)


def model_of(ckpt: dict[str, Any]) -> torch.nn.Module:
    model = ckpt.get("ema") or ckpt.get("model")
    if not isinstance(model, torch.nn.Module):
        raise ConfigError("checkpoint holds no Ultralytics model (no `ema` or `model` entry)")
    return model


def class_names(path: Path) -> list[str]:
    names = getattr(model_of(read(path)), "names", None) or {}
    return [names[k] for k in sorted(names)] if isinstance(names, dict) else list(names)


def check_class_names(path: Path, classes: tuple[str, ...]) -> None:
    """Refuse a checkpoint whose head classes differ from the canonical list.

    Ultralytics copies head rows by index when only the count matches, which silently swaps classes.
    """
    names = class_names(path)
    if names != list(classes):
        raise ConfigError(
            f"{path}: class names {names} differ from params.yaml `classes` {list(classes)}; "
            "retrain the upstream stage with the canonical classes or fix `classes`"
        )


def write_portable(ckpt: dict[str, Any], target: Path, train_args: dict[str, Any]) -> None:
    """Save ``ckpt`` to ``target`` atomically, with ``train_args`` (relative paths) and no date/git."""
    ckpt = {k: v for k, v in ckpt.items() if k not in VOLATILE_KEYS}
    if isinstance(ckpt.get("train_results"), dict):  # per-epoch wall times differ between identical runs
        ckpt["train_results"] = {k: v for k, v in ckpt["train_results"].items() if k != "time"}
    ckpt["train_args"] = train_args
    for key in ("ema", "model"):
        if isinstance(ckpt.get(key), torch.nn.Module):
            ckpt[key].args = dict(train_args)
            if hasattr(ckpt[key], "pt_path"):
                del ckpt[key].pt_path
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, target)


def build_base(cfg: Config, target: Path) -> dict[str, Any]:
    """Initial weights for every `from: base` stage: a seeded random init of ``model.arch`` with the canonical classes."""
    from stagetrain import ultra  # noqa: F401  (hermetic set-up before Ultralytics is imported)
    from ultralytics import __version__
    from ultralytics.nn.tasks import DetectionModel

    arch = cfg.model_arch
    if not arch.endswith((".yaml", ".yml")):
        raise ConfigError(
            f"{cfg.source}: `model.arch: {arch}` must be an Ultralytics model yaml such as yolov8n.yaml "
            "(pretrained .pt weights as a base are tracked in issue 4)"
        )
    torch.manual_seed(cfg.seed)
    try:
        model = DetectionModel(arch, nc=len(cfg.classes), verbose=False)
    except FileNotFoundError as err:
        raise ConfigError(f"{cfg.source}: `model.arch: {arch}` is not an Ultralytics model yaml ({err})") from None
    model.names = dict(enumerate(cfg.classes))
    train_args = {"task": "detect", "imgsz": cfg.imgsz, "model": arch}
    write_portable({"epoch": -1, "model": model, "ema": None, "version": __version__}, target, train_args)
    params = sum(p.numel() for p in model.parameters())
    return {"arch": arch, "layers": len(model.model), "parameters": params, "classes": list(cfg.classes)}
