"""base: a seeded init from a model yaml, or a user's pretrained .pt with the class head handled safely."""

from __future__ import annotations

import pytest
import torch

from stagetrain import ultra
from stagetrain.config import parse
from stagetrain.errors import UserError
from stagetrain.train import checkpoint


def _pretrained(path, names):
    torch.manual_seed(123)
    model = ultra.DetectionModel("yolov8n.yaml", nc=len(names), verbose=False)
    model.names = dict(enumerate(names))
    checkpoint.write_portable({"model": model, "ema": None, "epoch": -1}, path, {"task": "detect"})
    return model


def _state(path):
    return checkpoint.model_of(checkpoint.read(path)).float().state_dict()


def test_yaml_base_is_seeded(tmp_path, params):
    checkpoint.build_base(parse(params), tmp_path / "a/best.pt")
    checkpoint.build_base(parse(params), tmp_path / "b/best.pt")
    params["seed"] = 1
    checkpoint.build_base(parse(params), tmp_path / "c/best.pt")
    a, b, c = (_state(tmp_path / n / "best.pt") for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.0.conv.weight"], c["model.0.conv.weight"])
    assert (tmp_path / "a/best.pt").read_bytes() == (tmp_path / "b/best.pt").read_bytes()  # same inputs, same bytes


def test_pretrained_with_other_classes_keeps_features_and_resets_class_head(tmp_path, params):
    source = _pretrained(tmp_path / "coco.pt", ["person", "car", "cone"]).state_dict()
    params["model"]["arch"] = str(tmp_path / "coco.pt")
    summary = checkpoint.build_base(parse(params), tmp_path / "base.pt")
    base = _state(tmp_path / "base.pt")
    assert checkpoint.class_names(tmp_path / "base.pt") == params["classes"]
    assert summary["class_head"] == "re-initialised"
    assert torch.equal(base["model.0.conv.weight"], source["model.0.conv.weight"])
    assert torch.equal(base["model.22.cv2.0.0.conv.weight"], source["model.22.cv2.0.0.conv.weight"])  # box branch kept
    assert not torch.equal(base["model.22.cv3.0.0.conv.weight"], source["model.22.cv3.0.0.conv.weight"])  # same shape, not copied


def test_pretrained_with_canonical_classes_is_kept_whole(tmp_path, params):
    source = _pretrained(tmp_path / "mine.pt", params["classes"]).state_dict()
    params["model"]["arch"] = str(tmp_path / "mine.pt")
    assert checkpoint.build_base(parse(params), tmp_path / "base.pt")["class_head"] == "kept"
    base = _state(tmp_path / "base.pt")
    assert all(torch.equal(base[k], source[k].float()) for k in source)


def test_missing_pretrained_file_is_a_clear_error(tmp_path, params):
    params["model"]["arch"] = "weights/nope.pt"
    with pytest.raises(UserError, match=r"`model.arch: weights/nope.pt` does not exist; put the file under weights/"):
        checkpoint.build_base(parse(params), tmp_path / "base.pt")
