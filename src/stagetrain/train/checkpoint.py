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

from stagetrain import ultra
from stagetrain.config import Config
from stagetrain.errors import UserError


def read(path: Path) -> dict[str, Any]:
    """Load an Ultralytics checkpoint dict (trusted: produced by this pipeline or tracked by the user)."""
    ultra.load()  # unpickling imports Ultralytics: make it hermetic first
    return torch.load(path, map_location="cpu", weights_only=False)


def model_of(ckpt: dict[str, Any]) -> torch.nn.Module:
    model = ultra.checkpoint_model(ckpt)
    if not isinstance(model, torch.nn.Module):
        raise UserError("checkpoint holds no Ultralytics model (no `ema` or `model` entry)")
    return model


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
        raise UserError(
            f"{path}: class names {names} differ from params.yaml `classes` {list(classes)}; "
            "retrain the upstream stage with the canonical classes or fix `classes`"
        )


def write_portable(ckpt: dict[str, Any], target: Path, train_args: dict[str, Any]) -> None:
    """Save ``ckpt`` to ``target`` atomically, with ``train_args`` (relative paths) and no date/git."""
    ckpt = ultra.portable_checkpoint(ckpt, train_args)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, target)


def _transfer(source: torch.nn.Module, model: torch.nn.Module, same_classes: bool) -> tuple[int, int]:
    """Copy ``source``'s tensors into ``model`` where names and shapes match.

    When the class names differ, the Detect head's class branch (``cv3``, and ``one2one_cv3``) is
    left at its fresh init: copying it by index would silently give classes another's weights.
    """
    class_branches = ultra.class_branches(model)
    theirs, ours = source.float().state_dict(), model.state_dict()
    keep = {
        k: v for k, v in theirs.items() if k in ours and v.shape == ours[k].shape and (same_classes or not k.startswith(class_branches))
    }
    model.load_state_dict(keep, strict=False)
    return len(keep), len(ours)


def _layout(cfg: Config, arch: str, where: str) -> tuple[Any, torch.nn.Module | None]:
    """(model layout, pretrained model or None) of ``arch``; an unsupported architecture is refused before any work."""
    if arch.endswith(".pt"):
        if not Path(arch).exists():
            raise UserError(f"{where} does not exist; put the file under weights/ and `dvc add` it")
        pretrained = model_of(read(Path(arch)))
        ultra.check_arch(pretrained.yaml, where)
        return pretrained.yaml, pretrained
    if not arch.endswith((".yaml", ".yml")):
        raise UserError(f"{where} must be an Ultralytics model yaml (yolov8n.yaml) or a .pt checkpoint")
    ultra.check_arch(arch, where)
    return arch, None


def build_base(cfg: Config, target: Path, arch: str | None = None) -> dict[str, Any]:
    """Initial weights for every `from: base` stage, with the canonical classes.

    ``arch`` (default ``model.arch``; an init@<name> stage passes ``model.inits.<name>``) is an
    Ultralytics model yaml (seeded random init) or a pretrained ``.pt``
    (tracked with ``dvc add weights/<file>.pt``): its weights are transferred into a fresh model
    of the same architecture, the class head re-initialised unless its names are already canonical.
    """
    where = f"{cfg.source}: `{'model.arch' if arch is None else 'model.inits'}: {arch or cfg.model_arch}`"
    arch = arch or cfg.model_arch
    layout, pretrained = _layout(cfg, arch, where)
    torch.manual_seed(cfg.seed)
    try:
        model = ultra.DetectionModel(layout, nc=len(cfg.classes), verbose=False)
    except FileNotFoundError as err:
        raise UserError(f"{where} is not an Ultralytics model yaml ({err})") from None
    model.names = dict(enumerate(cfg.classes))
    summary: dict[str, Any] = {"arch": arch, "layers": len(model.model), "parameters": sum(p.numel() for p in model.parameters())}
    if pretrained is not None:
        names = pretrained.names if isinstance(pretrained.names, dict) else dict(enumerate(pretrained.names))
        same = list(names.values()) == list(cfg.classes)
        copied, total = _transfer(pretrained, model, same)
        summary |= {
            "pretrained_classes": len(names),
            "class_head": "kept" if same else "re-initialised",
            "tensors_transferred": f"{copied}/{total}",
        }
    train_args = {"task": "detect", "imgsz": cfg.imgsz, "model": arch}
    write_portable(ultra.new_checkpoint(model), target, train_args)
    return summary | {"classes": list(cfg.classes)}
