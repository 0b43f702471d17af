"""Model families: each supported one trains through a real (tiny) stage at its freeze levels; others are refused up front.

Supported: the YOLO detect yamls (yolov8, yolov10, yolo11, yolo12, yolo26). RT-DETR (``rtdetr-l.yaml``) is refused
before any work, naming ``model.arch`` and the reason: its decoder has no strides or DFL bins, needs
Ultralytics' RTDETR trainer, validator and loss, and one training step costs ~30x yolov8n's on CPU.
"""

from __future__ import annotations

import pytest
import torch

from stagetrain import ultra
from stagetrain.config import parse
from stagetrain.data import organize, sources
from stagetrain.errors import UserError
from stagetrain.tools.repo import repo_params, shrink
from stagetrain.train import checkpoint, runner
from stagetrain.train.freeze import frozen_layers

# (model yaml, backbone layers = len(yaml["backbone"]), index of the Detect head = the last layer)
FAMILIES = [
    ("yolov8n.yaml", 10, 22),
    ("yolov10n.yaml", 11, 23),
    ("yolo11n.yaml", 11, 23),
    ("yolo12n.yaml", 9, 21),
    ("yolo26n.yaml", 11, 23),
]


@pytest.mark.parametrize("arch, backbone, detect", FAMILIES)
def test_freeze_levels_follow_each_family_yaml(arch, backbone, detect):
    model = ultra.DetectionModel(arch, nc=5, verbose=False)
    assert len(ultra.model_yaml(arch)["backbone"]) == backbone and len(model.model) == detect + 1
    assert type(model.model[detect]).__name__ in ultra.SUPPORTED_HEADS  # Detect; v10Detect for yolov10
    assert frozen_layers(model, 0) == []
    assert frozen_layers(model, 1) == list(range(backbone))
    assert frozen_layers(model, 2) == list(range(detect))


@pytest.mark.parametrize(
    "arch, message",
    [
        ("rtdetr-l.yaml", r"`model.arch: rtdetr-l.yaml` has a RTDETRDecoder head, which stagetrain does not support: RT-DETR's"),
        ("yolov8n-seg.yaml", r"`model.arch: yolov8n-seg.yaml` has a Segment head.*stagetrain trains detectors with a Detect"),
        ("yolo99n.yaml", r"`model.arch: yolo99n.yaml` is not an Ultralytics model yaml nor a file"),
    ],
)
def test_unsupported_architectures_are_refused_before_any_work(tmp_path, params, arch, message):
    params["model"]["arch"] = arch
    with pytest.raises(UserError, match=message):
        ultra.check_arch(arch, f"params.yaml: `model.arch: {arch}`")  # what params validation calls
    with pytest.raises(UserError, match=message):
        checkpoint.build_base(parse(params), tmp_path / "base.pt")
    assert not (tmp_path / "base.pt").exists()


def test_an_rtdetr_checkpoint_is_refused_as_base_and_as_upstream(tmp_path, params):
    model = ultra.DetectionModel("rtdetr-l.yaml", nc=5, verbose=False)  # builds: only training fails (no `stride`)
    model.names = dict(enumerate(params["classes"]))
    checkpoint.write_portable({"model": model, "ema": None, "epoch": -1}, tmp_path / "rtdetr.pt", {"task": "detect"})
    params["model"]["arch"] = str(tmp_path / "rtdetr.pt")
    cfg = parse(params)
    with pytest.raises(UserError, match=r"`model.arch: .*rtdetr.pt` has a RTDETRDecoder head"):
        checkpoint.build_base(cfg, tmp_path / "base.pt")
    with pytest.raises(UserError, match=r"`stages.stage2.from: stage1` \(.*rtdetr.pt\) has a RTDETRDecoder head"):
        runner.run(cfg, "stage2", tmp_path / "data.yaml", tmp_path / "rtdetr.pt", tmp_path / "out", tmp_path / "live", tmp_path / "work")
    assert not (tmp_path / "work").exists() and not (tmp_path / "out").exists()


def _tiny(arch: str = "yolov8n.yaml", level: int = 1) -> dict:
    params = shrink(repo_params(), images=24, size=64, imgsz=64)
    params["model"]["arch"] = arch
    params["stages"]["stage2"]["freeze_level"] = level
    return params


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("families")
    cfg = parse(_tiny())
    sources.run(cfg, "target", tmp / "raw")
    organize.run(cfg, "target", tmp / "raw", tmp / "data")
    return tmp / "data/data.yaml"


def _layer(key: str) -> int:
    return int(key.split(".")[1])  # "model.<layer>.<...>"


def _observe(monkeypatch) -> dict:
    """The training model's tensors at the start and end of training, and which parameters train (Ultralytics' callbacks)."""
    seen: dict = {}

    def on_train_start(trainer):
        seen["before"] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        seen["grad"] = {k: p.requires_grad for k, p in trainer.model.named_parameters()}

    def on_train_end(trainer):
        seen["after"] = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    original = ultra.YOLO.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.add_callback("on_train_start", on_train_start)
        self.add_callback("on_train_end", on_train_end)

    monkeypatch.setattr(ultra.YOLO, "__init__", init)
    return seen


@pytest.mark.slow
@pytest.mark.parametrize("level", [1, 2])
@pytest.mark.parametrize("arch, backbone, detect", FAMILIES)
def test_a_tiny_stage_trains_each_family_and_its_frozen_layers_stay_put(tmp_path, target, monkeypatch, arch, backbone, detect, level):
    cfg = parse(_tiny(arch, level))
    checkpoint.build_base(cfg, tmp_path / "base.pt")
    seen = _observe(monkeypatch)
    metrics = runner.run(cfg, "stage2", target, tmp_path / "base.pt", tmp_path / "out", tmp_path / "live", tmp_path / "work")
    frozen = range(backbone) if level == 1 else range(detect)  # 1: the backbone; 2: all but the Detect head
    assert metrics["epochs_run"] == 1 and metrics["frozen_layers"] == len(frozen)

    prefixes = tuple(f"model.{i}." for i in frozen)
    before, after = seen["before"], seen["after"]
    frozen_keys = [k for k in before if k.startswith(prefixes)]
    assert any(k.endswith("running_mean") for k in frozen_keys)
    assert all(torch.equal(before[k], after[k]) for k in frozen_keys), f"{arch} level {level}: a frozen tensor changed"
    assert not any(seen["grad"][k] for k in seen["grad"] if k.startswith(prefixes))
    trainable = [k for k in before if not k.startswith(prefixes) and before[k].is_floating_point() and ".dfl." not in k]  # DFL: fixed
    assert all(seen["grad"][k] for k in trainable if k in seen["grad"]), (
        f"{arch} level {level}: a parameter outside the frozen layers is frozen"
    )
    moved = {_layer(k) for k in trainable if not torch.equal(before[k], after[k])}
    assert moved == {_layer(k) for k in trainable}, (
        f"{arch} level {level}: layers {sorted({_layer(k) for k in trainable} - moved)} did not train"
    )
    assert detect in moved  # the Detect head trains at every level
