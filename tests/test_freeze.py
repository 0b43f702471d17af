"""Freeze levels resolve to layer indices from the model's own yaml."""

from __future__ import annotations

import pytest

from stagetrain import ultra
from stagetrain.train.freeze import frozen_layers


@pytest.mark.parametrize("arch, backbone, detect", [("yolov8n.yaml", 10, 22), ("yolo11n.yaml", 11, 23)])
def test_levels(arch, backbone, detect):
    model = ultra.DetectionModel(arch, nc=5, verbose=False)
    assert type(model.model[detect]).__name__ == "Detect"
    assert frozen_layers(model, 0) == []
    assert frozen_layers(model, 1) == list(range(backbone))
    assert frozen_layers(model, 2) == list(range(detect))
    with pytest.raises(ValueError):
        frozen_layers(model, 3)
