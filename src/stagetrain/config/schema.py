"""The typed, frozen shape of ``params.yaml``: one dataclass per section, the names the code reads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

BASE = "base"  # the pseudo-stage that holds the initial weights (models/base/best.pt)
DATASET_KINDS = ("synthetic", "roboflow", "local")
SPLITS = ("train", "val", "test")
SYNTHETIC_DOMAINS = ("source", "target")  # the looks data/synthetic.py renders (a test keeps the two in step)
SYNTHETIC_SPLITS = ("train", "val", "test", "pool")  # a synthetic dataset's fixed-split form (pool: unlabelled images)
SYNTHETIC_KNOBS = ("cones", "distractors", "min_visible")  # data/synthetic.py World's fields (a test keeps the two in step)
EXPORT_FORMATS = ("onnx", "engine")
ON_BAD = ("error", "skip")
# Keys of ours inside a stage block; everything else must be an Ultralytics train argument.
STAGE_KEYS = ("from", "teacher", "dataset", "freeze_level", "distill", "loss_weights", "replay")
# dvc.yaml's template reads these for every stage (DVC templating has no optional keys): `teacher` is a
# DVC dependency of the stage, so a stage that does not distil names its own `from` there.
REQUIRED_STAGE_KEYS = ("from", "teacher", "dataset")
DISTILL_KINDS = ("logit", "feature")
# `freeze_level` -> what it freezes (train/freeze.py turns it into layer indices)
FREEZE_LEVELS = {0: "nothing frozen", 1: "backbone frozen", 2: "everything but the Detect head frozen"}
LOSS_TERMS = ("box", "cls", "dfl")  # Ultralytics' detection loss gains, set per stage by `loss_weights`
TOP_LEVEL_KEYS = ("seed", "classes", "datasets", "organize", "model", "train", "stages", "evaluate", "export")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    kind: str
    options: Mapping[str, Any]  # the block named by `kind` (synthetic / roboflow / local)
    class_map: Mapping[str, str | None]  # dataset class name -> canonical name, or None to drop it


@dataclass(frozen=True)
class DistillSpec:
    kind: str  # logit: class-score and DFL-bin KL against the teacher's outputs; feature: Ultralytics' built-in
    weight: float  # `lambda`: scales the distillation loss (for `feature`, Ultralytics' `dis`)
    temperature: float  # softens both distributions (logit only)


@dataclass(frozen=True)
class StageSpec:
    name: str
    upstream: str  # `from:` in params: another stage's name or `base`
    dataset: str
    freeze_level: int
    train_args: Mapping[str, Any]  # effective Ultralytics arguments: `train` defaults, then stage keys
    teacher: str = ""  # `teacher:`; meaningful only with `distill` (else it equals `from`)
    distill: DistillSpec | None = None
    # `replay:` dataset -> fraction of its train split that joins this stage's training list (trainset@<stage>)
    replay: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class OrganizeSpec:
    split: Mapping[str, float]  # train/val/test fractions, used only when a source has no split of its own
    on_bad: str  # error | skip
    dedupe: bool  # identical images never straddle splits or datasets
    near_duplicates: int = 0  # max Hamming distance (of data/near_dup.py's 256 bits) of two near-duplicates; 0 = off


@dataclass(frozen=True)
class EvaluateSpec:
    BASELINE: ClassVar[str] = "baseline"  # the stage every other evaluated model is compared with (eval.json, report)
    FORGETTING: ClassVar[str] = "forgetting"  # eval.json's key of the forgetting matrix, beside the models: no stage may take it
    ALL: ClassVar[str] = "all"  # `evaluate.datasets: all` = every dataset under `datasets:`
    dataset: str
    split: str
    models: tuple[str, ...]
    tta: bool  # test-time augmentation (Ultralytics `augment=True`) in the test-split evaluation
    margin: float = 0.01  # smallest test mAP50-95 difference worth acting on (0.01 = one point): the verdict's threshold
    resamples: int = 1000  # paired bootstrap resamples over test images behind each 95% interval
    datasets: tuple[str, ...] = ()  # the forgetting matrix's datasets (`all` in params.yaml: every one under `datasets:`)
    all_stages: bool = False  # the matrix scores every stage, not only `models`


@dataclass(frozen=True)
class ExportSpec:
    model: str
    formats: tuple[str, ...]
    half: bool
    int8: bool
    opset: int | None  # None: Ultralytics picks (18 with torch 2.14)
    dynamic: bool  # dynamic batch and image size in the ONNX graph
    simplify: bool  # onnxslim graph simplification


@dataclass(frozen=True)
class Config:
    seed: int
    classes: tuple[str, ...]
    datasets: Mapping[str, DatasetSpec]
    organize: OrganizeSpec
    model_arch: str
    imgsz: int
    inits: Mapping[str, str]  # extra starting points: name -> model yaml or .pt (built by init@<name>)
    stages: Mapping[str, StageSpec]
    evaluate: EvaluateSpec
    export: ExportSpec
    source: str = "params.yaml"
