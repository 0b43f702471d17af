"""Knowledge distillation for a train stage: a frozen teacher's outputs as extra targets.

Two kinds, chosen per stage by ``distill.kind``:

- ``logit`` (ours): the student's class scores are matched to the teacher's as a per-class sigmoid
  KL with temperature, and its box distributions (the DFL bins of each side) as a softmax KL;
  both are weighted per anchor by the teacher's confidence (its highest class probability) and
  scaled by ``lambda``. It is a criterion that wraps Ultralytics' detection loss on the training
  model only, so the teacher never enters the student's state dict, its EMA or a checkpoint.
- ``feature``: Ultralytics 8.4's built-in feature distillation (``distill_model=``, ``dis=``),
  which the runner passes through; its checkpoints are unwrapped to the student on the way out.

Teacher and student must agree on strides, class names and (for ``logit``) DFL bins: anchors and
classes are matched by position, so a mismatch is refused before training.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from stagetrain import ultra
from stagetrain.config import Config, DistillSpec
from stagetrain.errors import UserError
from stagetrain.train import checkpoint

# The logit spec travels in the environment: Ultralytics rebuilds the trainer from its arguments alone
# in DDP workers and on resume, and refuses arguments it does not know.
SPEC_ENV = "STAGETRAIN_LOGIT_DISTILL"
LOSS_NAMES = ("kd_cls_loss", "kd_box_loss")


head_outputs = ultra.head_outputs  # {boxes, scores, feats} of a head's raw output; end-to-end heads (YOLO26): the dense branch


def _bernoulli_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) of independent per-class sigmoids, elementwise; exactly 0 where the logits are equal."""
    return teacher_logits.sigmoid() * (F.logsigmoid(teacher_logits) - F.logsigmoid(student_logits)) + (
        (-teacher_logits).sigmoid() * (F.logsigmoid(-teacher_logits) - F.logsigmoid(-student_logits))
    )


def logit_kd(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor], temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-score and DFL-box distillation terms, each a teacher-confidence-weighted mean over anchors.

    Args:
        student: the student's head outputs, ``scores`` (B, nc, A) logits and ``boxes`` (B, 4 * reg_max, A).
        teacher: the teacher's, same shapes.
        temperature: softens both distributions; the terms are multiplied by ``temperature ** 2`` so their
            gradient scale does not shrink as it grows (Hinton et al.).

    Returns:
        (cls, box): scalars; both exactly 0 when student and teacher outputs are equal.
    """
    t = temperature
    s_scores, t_scores = student["scores"].float(), teacher["scores"].float()
    weight = t_scores.detach().sigmoid().amax(1)  # (B, A): the teacher's confidence in each anchor
    norm = weight.sum().clamp(min=1e-9)
    cls = (_bernoulli_kl(t_scores / t, s_scores / t).sum(1) * weight).sum() / norm
    b, channels, anchors = student["boxes"].shape
    s_bins = student["boxes"].float().view(b, 4, channels // 4, anchors)
    t_bins = teacher["boxes"].float().view(b, 4, channels // 4, anchors)
    box_kl = F.kl_div(F.log_softmax(s_bins / t, 2), F.log_softmax(t_bins / t, 2), reduction="none", log_target=True)
    box = (box_kl.sum(2).mean(1) * weight).sum() / norm
    return cls * t * t, box * t * t


class LogitDistillLoss:
    """Ultralytics' detection loss plus ``lambda`` x the logit KD terms against a frozen teacher.

    Set as the training model's ``criterion``. Not an ``nn.Module``, so the teacher it holds is not part
    of the student's state dict, and a deep copy (the EMA) gets no criterion: validation and checkpoints
    see the plain student.
    """

    def __init__(self, detection: Any, teacher: torch.nn.Module, spec: DistillSpec) -> None:
        self.detection, self.teacher, self.spec = detection, teacher, spec

    def __deepcopy__(self, memo: dict) -> None:
        return None  # a copy of the student (its EMA) must not carry the teacher: it rebuilds a plain criterion

    def __call__(self, preds: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, items = self.detection(preds, batch)
        with torch.inference_mode():
            teacher = head_outputs(self.teacher(batch["img"]))
        teacher = {k: v.clone() for k, v in teacher.items() if k != "feats"}  # inference tensors cannot enter autograd
        kd = torch.stack(logit_kd(head_outputs(preds), teacher, self.spec.temperature)) * self.spec.weight
        items = {**items, **dict(zip(LOSS_NAMES, kd.detach()))}
        return torch.cat([loss, kd * batch["img"].shape[0]]), items  # Ultralytics sums loss x batch size


def load_teacher(path: Path, device: torch.device | str) -> torch.nn.Module:
    """The teacher in fp32, eval mode, gradients off, on the student's device, BatchNorm folded into its convs.

    Folding (Ultralytics' ``fuse``) is exact up to float rounding for a model in eval mode and saves
    the teacher's BatchNorm passes on every batch.
    """
    teacher = checkpoint.model_of(checkpoint.read(path)).float().to(device).eval().fuse(verbose=False)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def check_pair(cfg: Config, stage_name: str, student: torch.nn.Module, teacher_path: Path) -> None:
    """Refuse a teacher whose strides, class names or DFL bins do not line up with the student's."""
    spec = cfg.stages[stage_name]
    teacher = checkpoint.model_of(checkpoint.read(teacher_path))
    checkpoint.check_class_names(teacher_path, cfg.classes, teacher)
    where = f"{cfg.source}: `stages.{stage_name}.teacher: {spec.teacher}` ({teacher_path})"
    s_stride, t_stride = (ultra.strides(m) for m in (student, teacher))
    if s_stride != t_stride:
        raise UserError(f"{where} has strides {t_stride}, the student {s_stride}; distil between detectors with the same strides")
    if spec.distill.kind == "logit":
        s_bins, t_bins = (ultra.dfl_bins(m) for m in (student, teacher))
        if s_bins != t_bins:
            raise UserError(
                f"{where} predicts {t_bins} DFL bins per box side, the student {s_bins}; use `kind: feature` or a matching teacher"
            )


class LogitDistillTrainer(ultra.AtomicCheckpointTrainer):
    """A DetectionTrainer whose training model's criterion adds the logit KD terms.

    The criterion is installed after Ultralytics' set-up, so the EMA (and, on resume, the restored
    EMA) is copied from a student without a teacher. Module-level so DDP workers can import it.
    """

    def after_setup(self) -> None:
        spec = json.loads(os.environ[SPEC_ENV])
        teacher = load_teacher(Path(spec["teacher"]), self.device)
        distill = DistillSpec(kind="logit", weight=spec["lambda"], temperature=spec["temperature"])
        ultra.wrap_criterion(self, lambda detection: LogitDistillLoss(detection, teacher, distill))


def logit_env(teacher: Path, spec: DistillSpec) -> dict[str, str]:
    return {SPEC_ENV: json.dumps({"teacher": str(teacher), "lambda": spec.weight, "temperature": spec.temperature})}
