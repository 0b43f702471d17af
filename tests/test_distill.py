"""Distillation: the loss itself on real models, the config contract, and real (tiny) distilled stages."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

from stagetrain import ultra
from stagetrain.config import DistillSpec, parse
from stagetrain.data import organize, sources
from stagetrain.errors import UserError
from stagetrain.train import checkpoint, distill, runner


@pytest.fixture
def base(tmp_path, params) -> Path:
    path = tmp_path / "base.pt"
    checkpoint.build_base(parse(params), path)
    return path


def _student(path: Path) -> torch.nn.Module:
    return checkpoint.model_of(checkpoint.read(path)).float()


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "img": torch.rand(2, 3, 64, 64, generator=g),
        "batch_idx": torch.tensor([0.0, 1.0]),
        "cls": torch.tensor([[1.0], [3.0]]),
        "bboxes": torch.tensor([[0.5, 0.5, 0.3, 0.4], [0.4, 0.6, 0.2, 0.2]]),
    }


def _criterion(student: torch.nn.Module, teacher: torch.nn.Module, weight: float, gains: float) -> distill.LogitDistillLoss:
    student.args = ultra.get_cfg(overrides={"box": gains, "cls": gains, "dfl": gains})
    return distill.LogitDistillLoss(student.init_criterion(), teacher, DistillSpec("logit", weight, 2.0))


def test_student_identical_to_teacher_gives_exactly_zero(base):
    student = _student(base).eval()
    teacher = copy.deepcopy(student)
    img = _batch()["img"]
    cls, box = distill.logit_kd(distill.head_outputs(student(img)), distill.head_outputs(teacher(img)), 2.0)
    assert cls.item() == 0.0 and box.item() == 0.0
    _, items = _criterion(student, teacher, 1.0, 1.0)(student(img), _batch())
    assert items["kd_cls_loss"].item() == 0.0 and items["kd_box_loss"].item() == 0.0
    with torch.no_grad():  # any difference is seen
        student.model[-1].cv3[0][2].bias[0] += 0.5  # one class
        student.model[-1].cv2[0][2].bias[0] += 0.5  # one DFL bin (a shift of every bin would not change the softmax)
    cls, box = distill.logit_kd(distill.head_outputs(student(img)), distill.head_outputs(teacher(img)), 2.0)
    assert cls.item() > 0 and box.item() > 0


def test_distill_only_loss_reaches_the_first_layer(base, params):
    torch.manual_seed(1)
    teacher = distill.load_teacher(base, "cpu")
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))  # a teacher that disagrees with the student
    first = lambda m: m.model[0].conv.weight

    def grad(weight: float) -> torch.Tensor:
        student = _student(base).train()
        criterion = _criterion(student, teacher, weight, gains=0.0)  # every detection term off
        loss, items = criterion(student(_batch()["img"]), _batch())
        loss.sum().backward()
        assert all(items[k].item() == 0.0 for k in ("box_loss", "cls_loss", "dfl_loss"))
        return first(student).grad

    assert grad(1.0).abs().sum().item() > 0
    assert grad(0.0).abs().sum().item() == 0  # the same stage with lambda 0 learns nothing: the gradient is the KD's
    assert all(not p.requires_grad for p in teacher.parameters()) and not teacher.training


def test_criterion_never_travels_into_a_copy_of_the_student(base):
    student = _student(base)
    student.criterion = _criterion(student, copy.deepcopy(student).eval(), 1.0, 1.0)
    ema = copy.deepcopy(student)
    assert ema.criterion is None  # the EMA rebuilds a plain criterion: the teacher is in no copy
    assert set(student.state_dict()) == set(ema.state_dict())
    assert not any("teacher" in k for k in student.state_dict())


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda s: s.update(teacher="stage1"),
            r"`stages.stage3.teacher` is 'stage1' but the stage has no `distill:` block.*names its `from` \('stage2'\)",
        ),
        (lambda s: s.pop("teacher"), r"missing key `stages.stage3.teacher`; every stage names one"),
        (
            lambda s: s.update(distill={"teacher": "stage1"}),
            r"`stages.stage3.distill.teacher`: name the teacher as `stages.stage3.teacher`",
        ),
        (lambda s: s.update(teacher="stage9", distill={}), r"`stages.stage3.teacher` names no stage: 'stage9'"),
        (lambda s: s.update(distill={"kind": "soft"}), r"`stages.stage3.distill.kind` is 'soft'; use one of logit, feature"),
        (lambda s: s.update(distill={"kind": "feature", "temperature": 4}), r"temperature` applies to `kind: logit` only"),
        (lambda s: s.update(distill={"lambda": -1}), r"`stages.stage3.distill.lambda` is -1.0; use a value >= 0"),
        (lambda s: s.update(loss_weights={"box": 1, "clss": 0}), r"unknown key `stages.stage3.loss_weights.clss`; did you mean `cls`"),
        (lambda s: s.update(cls=0.5, loss_weights={"cls": 0}), r"`stages.stage3.cls` and `stages.stage3.loss_weights.cls` both set"),
        (lambda s: s.update(dis=2.0), r"`stages.stage3.dis` is set by the pipeline; use `distill.lambda`"),
    ],
)
def test_distill_params_are_validated(params, change, message):
    change(params["stages"]["stage3"])
    with pytest.raises(UserError, match=message):
        parse(params)


def test_a_teacher_trained_from_its_student_is_refused(params):
    params["stages"]["stage1"].update(teacher="stage3", distill={})
    with pytest.raises(UserError, match=r"`stages.stage1.teacher: stage3` is trained from this stage's own result"):
        parse(params)


def test_loss_weights_become_the_stage_loss_gains(params):
    params["stages"]["stage3"]["loss_weights"] = {"box": 0, "cls": 0, "dfl": 0}
    args = parse(params).stages["stage3"].train_args
    assert (args["box"], args["cls"], args["dfl"]) == (0.0, 0.0, 0.0)


def test_mismatched_teachers_are_refused_before_training(tmp_path, params):
    params["model"]["inits"] = {"p2": "yolov8n-p2.yaml"}
    params["stages"]["stage3"].update(teacher="p2", distill={})
    cfg = parse(params)
    student, p2, other = tmp_path / "student.pt", tmp_path / "p2.pt", tmp_path / "other.pt"
    checkpoint.build_base(cfg, student)
    checkpoint.build_base(cfg, p2, "yolov8n-p2.yaml")
    with pytest.raises(UserError, match=r"has strides \[4.0, 8.0, 16.0, 32.0\], the student \[8.0, 16.0, 32.0\]"):
        distill.check_pair(cfg, "stage3", _student(student), p2)
    params["classes"] = ["a", "b", "c", "d", "e"]
    checkpoint.build_base(parse(params), other)
    with pytest.raises(UserError, match=r"class names \['a', 'b', 'c', 'd', 'e'\] differ"):
        distill.check_pair(cfg, "stage3", _student(student), other)


@pytest.fixture
def target_data(tmp_path, params) -> Path:
    cfg = parse(params)
    sources.run(cfg, "target", tmp_path / "raw")
    organize.run(cfg, "target", tmp_path / "raw", tmp_path / "data")
    return tmp_path / "data/data.yaml"


@pytest.mark.slow  # trains a model
@pytest.mark.parametrize("kind, loss_names", [("logit", distill.LOSS_NAMES), ("feature", ("dis_loss",))])
def test_a_distilled_stage_trains_logs_its_terms_and_ships_a_plain_student(tmp_path, params, base, target_data, kind, loss_names):
    params["stages"]["stage2"].update(epochs=2, teacher="stage1", distill={"kind": kind, "lambda": 1.0})
    cfg = parse(params)
    metrics = runner.run(cfg, "stage2", target_data, base, tmp_path / "out", tmp_path / "live", tmp_path / "work", base)
    assert metrics["distill"] == {"kind": kind, "teacher": "stage1"} and metrics["epochs_run"] == 2
    for name in loss_names:
        rows = (tmp_path / f"live/plots/metrics/train/{name}.tsv").read_text().splitlines()[1:]
        assert len(rows) == 2 and all(float(r.split("\t")[1]) >= 0 for r in rows)
    best = checkpoint.read(tmp_path / "out/best.pt")
    model = best["model"] if best.get("model") is not None else best["ema"]
    assert type(model).__name__ == "DetectionModel"
    assert set(model.state_dict()) == set(_student(base).state_dict())  # no teacher, no projector
    assert all(not hasattr(model, a) or getattr(model, a) is None for a in ("criterion", "teacher_model"))
    args = yaml.safe_load((tmp_path / "out/args.yaml").read_text())
    if kind == "feature":  # Ultralytics' argument, recorded relative (no host paths in outputs)
        assert not Path(args["distill_model"]).is_absolute() and Path(args["distill_model"]).resolve() == base.resolve()
    else:
        assert args.get("distill_model") is None
