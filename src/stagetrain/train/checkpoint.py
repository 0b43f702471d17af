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
    return getattr(model, "student_model", model)  # a feature-distillation checkpoint wraps the student


def names_of(model: torch.nn.Module) -> list[str]:
    names = getattr(model, "names", None) or {}
    return [names[k] for k in sorted(names)] if isinstance(names, dict) else list(names)


def class_names(path: Path) -> list[str]:
    return names_of(model_of(read(path)))


def check_class_names(path: Path, classes: tuple[str, ...], model: torch.nn.Module | None = None) -> None:
    """Refuse a checkpoint whose head classes differ from the canonical list.

    Ultralytics copies head rows by index when only the count matches, which silently swaps classes.
    Pass ``model`` when the checkpoint is already loaded, to avoid reading it twice.
    """
    names = names_of(model) if model is not None else class_names(path)
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
            ckpt[key] = getattr(ckpt[key], "student_model", ckpt[key])  # distilled: the student alone ships
            ckpt[key].args = dict(train_args)
            if hasattr(ckpt[key], "pt_path"):
                del ckpt[key].pt_path
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, target)


def _transfer(source: torch.nn.Module, model: torch.nn.Module, same_classes: bool) -> tuple[int, int]:
    """Copy ``source``'s tensors into ``model`` where names and shapes match.

    When the class names differ, the Detect head's class branch (``cv3``, and ``one2one_cv3``) is
    left at its fresh init: copying it by index would silently give classes another's weights.
    """
    detect = f"model.{len(model.model) - 1}."
    theirs, ours = source.float().state_dict(), model.state_dict()
    keep = {
        k: v
        for k, v in theirs.items()
        if k in ours and v.shape == ours[k].shape and (same_classes or not k.startswith((detect + "cv3.", detect + "one2one_cv3.")))
    }
    model.load_state_dict(keep, strict=False)
    return len(keep), len(ours)


def build_base(cfg: Config, target: Path, arch: str | None = None) -> dict[str, Any]:
    """Initial weights for every `from: base` stage, with the canonical classes.

    ``arch`` (default ``model.arch``; an init@<name> stage passes ``model.inits.<name>``) is an
    Ultralytics model yaml (seeded random init) or a pretrained ``.pt``
    (tracked with ``dvc add weights/<file>.pt``): its weights are transferred into a fresh model
    of the same architecture, the class head re-initialised unless its names are already canonical.
    """
    from stagetrain import ultra  # noqa: F401  (hermetic set-up before Ultralytics is imported)
    from ultralytics import __version__
    from ultralytics.nn.tasks import DetectionModel

    arch, pretrained = arch or cfg.model_arch, None
    if arch.endswith(".pt"):
        if not Path(arch).exists():
            raise ConfigError(f"{cfg.source}: `model.arch: {arch}` does not exist; put the file under weights/ and `dvc add` it")
        pretrained = model_of(read(Path(arch)))
        layout = pretrained.yaml
    elif arch.endswith((".yaml", ".yml")):
        layout = arch
    else:
        raise ConfigError(f"{cfg.source}: `model.arch: {arch}` must be an Ultralytics model yaml (yolov8n.yaml) or a .pt checkpoint")
    torch.manual_seed(cfg.seed)
    try:
        model = DetectionModel(layout, nc=len(cfg.classes), verbose=False)
    except FileNotFoundError as err:
        raise ConfigError(f"{cfg.source}: `model.arch: {arch}` is not an Ultralytics model yaml ({err})") from None
    model.names = dict(enumerate(cfg.classes))
    summary: dict[str, Any] = {"arch": arch, "layers": len(model.model), "parameters": sum(p.numel() for p in model.parameters())}
    if pretrained is not None:
        names = pretrained.names if isinstance(pretrained.names, dict) else dict(enumerate(pretrained.names))
        same = list(names.values()) == list(cfg.classes)
        copied, total = _transfer(pretrained, model, same)
        summary |= {"pretrained_classes": len(names), "class_head": "kept" if same else "re-initialised", "tensors_transferred": f"{copied}/{total}"}
    train_args = {"task": "detect", "imgsz": cfg.imgsz, "model": arch}
    write_portable({"epoch": -1, "model": model, "ema": None, "version": __version__}, target, train_args)
    return summary | {"classes": list(cfg.classes)}
