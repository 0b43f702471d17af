"""Freeze levels -> Ultralytics ``freeze=`` layer indices, read from the model's own yaml."""

from __future__ import annotations

from torch import nn

from stagetrain import ultra
from stagetrain.config.schema import FREEZE_LEVELS


def frozen_layers(model: nn.Module, level: int) -> list[int]:
    """Indices of the top-level layers to freeze for ``level`` (2 = head only trains, 1 = backbone frozen, 0 = none).

    The backbone is the first ``len(model.yaml["backbone"])`` layers and the Detect head the last
    layer, so this holds for any Ultralytics detect yaml (yolov8n: backbone 0-9, Detect 22).
    """
    if level not in FREEZE_LEVELS:
        raise ValueError(f"freeze_level {level} is not one of {sorted(FREEZE_LEVELS)}")
    backbone, n_layers = ultra.layer_counts(model)
    if level == 2:
        return list(range(n_layers - 1))
    if level == 1:
        return list(range(backbone))
    return []
