"""The typed, frozen shape of ``params.yaml``: one dataclass per section, the names the code reads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

BASE = "base"  # the pseudo-stage that holds the initial weights (models/base/best.pt)
DATASET_KINDS = ("synthetic", "roboflow", "local", "annotations")  # annotations: a returned annotation package (data/annotation.py)
SPLITS = ("train", "val", "test")
SYNTHETIC_DOMAINS = ("source", "target")  # the looks data/synthetic.py renders (a test keeps the two in step)
SYNTHETIC_SPLITS = ("train", "val", "test", "pool")  # a synthetic dataset's fixed-split form (pool: unlabelled images)
SYNTHETIC_KNOBS = ("cones", "distractors", "min_visible")  # data/synthetic.py World's fields (a test keeps the two in step)
EXPORT_FORMATS = ("onnx", "openvino", "engine")
ON_BAD = ("error", "skip")
# Keys of ours inside a stage block; everything else must be an Ultralytics train argument.
STAGE_KEYS = ("from", "teacher", "dataset", "freeze_level", "distill", "loss_weights", "replay", "oversample", "hard_negatives")
# dvc.yaml's template reads these for every stage (DVC templating has no optional keys): `teacher` is a
# DVC dependency of the stage, so a stage that does not distil names its own `from` there.
REQUIRED_STAGE_KEYS = ("from", "teacher", "dataset")
DISTILL_KINDS = ("logit", "feature")
# `freeze_level` -> what it freezes (train/freeze.py turns it into layer indices)
FREEZE_LEVELS = {0: "nothing frozen", 1: "backbone frozen", 2: "everything but the Detect head frozen"}
LOSS_TERMS = ("box", "cls", "dfl")  # Ultralytics' detection loss gains, set per stage by `loss_weights`
TOP_LEVEL_KEYS = ("seed", "classes", "datasets", "organize", "model", "train", "stages", "evaluate", "export", "select", "calibrate")
CALIBRATION_METHODS = ("auto", "isotonic", "platt", "temperature", "none")  # calibrate.method (calibrate.py); auto: lowest val CV ECE
THRESHOLD_F1 = "f1"  # calibrate.thresholds: every class at its F1-optimal val threshold
WBF_CONF_TYPES = ("avg", "max", "box_and_model_avg", "absent_model_aware_avg")  # ensemble_boxes' weighted_boxes_fusion conf_type


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
class HardNegativesSpec:
    """``hard_negatives:`` of a stage: mine@<stage> runs its ``from`` checkpoint over these images (mine.py)."""

    KEYS: ClassVar[tuple[str, ...]] = ("conf", "iou", "copies", "pool", "max_images")
    conf: float = 0.4  # a detection at or above this confidence that matches no labelled box is a false positive
    iou: float = 0.5  # IoU with a labelled box of its class at or above which a detection is a true positive
    copies: int = 1  # times each mined image joins the training list
    pool: str | None = None  # another dataset whose train split is mined too (e.g. background-only images)
    max_images: int | None = None  # keep the images with the most false positives (None: all)


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
    # `oversample:` class name -> factor >= 1: images holding that class repeat in the training list (trainset@<stage>)
    oversample: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    hard_negatives: HardNegativesSpec | None = None  # mine@<stage>'s false positives join the training list


@dataclass(frozen=True)
class OrganizeSpec:
    split: Mapping[str, float]  # train/val/test fractions, used only when a source has no split of its own
    on_bad: str  # error | skip
    dedupe: bool  # identical images never straddle splits or datasets
    near_duplicates: int = 0  # max Hamming distance (of data/near_dup.py's 256 bits) of two near-duplicates; 0 = off


@dataclass(frozen=True)
class EnsembleSpec:
    """One ``evaluate.ensembles`` entry: stages whose test predictions weighted boxes fusion merges (ensemble.py)."""

    name: str
    models: tuple[str, ...]  # stages (>= 2) fused
    weights: tuple[float, ...]  # one per model: its say in a fused box's coordinates and confidence
    iou: float = 0.55  # WBF iou_thr: boxes of one class overlapping more than this are fused
    skip: float = 0.0  # WBF skip_box_thr: member boxes below this confidence are dropped first
    conf_type: str = "avg"  # WBF conf_type (WBF_CONF_TYPES)


@dataclass(frozen=True)
class CalibrateSpec:
    """``calibrate:``: confidence calibration and per-class thresholds of the shipped model (calibrate.py)."""

    method: str = "auto"  # CALIBRATION_METHODS (auto: lowest val CV ECE), fitted per class on val detections matched at IoU 0.5
    recall_targets: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))  # class -> val recall target; others F1
    bins: int = 10  # equal-width confidence bins of the detection ECE and the reliability diagram
    min_detections: int = 30  # a class with fewer val detections (at or above `floor`) takes the pooled fit
    floor: float = 0.05  # detections below this confidence are neither fitted nor binned


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
    ensembles: Mapping[str, EnsembleSpec] = field(default_factory=lambda: MappingProxyType({}))  # name -> WBF ensemble


@dataclass(frozen=True)
class ParitySpec:
    """The export gate: each format's detections against PyTorch's on the same test images (export/parity.py)."""

    min_matched: float = 0.99  # share of detections matched one to one (IoU >= 0.9, same class), FP32/FP16 formats
    max_conf_delta: float = 0.02  # worst |confidence difference| of a matched pair, FP32/FP16 formats
    max_map50_drop: float = 0.005  # test mAP50 below PyTorch's, FP32/FP16 formats
    int8_min_matched: float = 0.9  # the same three for an INT8 engine
    int8_max_conf_delta: float = 0.1
    int8_max_map50_drop: float = 0.01


@dataclass(frozen=True)
class ExportSpec:
    model: str
    formats: tuple[str, ...]
    half: bool
    int8: bool
    opset: int | None  # None: Ultralytics picks (18 with torch 2.14)
    dynamic: bool  # dynamic batch and image size in the ONNX graph
    simplify: bool  # onnxslim graph simplification
    conf: float = 0.25  # deploy threshold of an uncalibrated package; the parity gate counts detections above it
    iou: float = 0.7  # NMS IoU of the deploy package (and of the PyTorch reference in the gate)
    parity: ParitySpec = field(default_factory=ParitySpec)


@dataclass(frozen=True)
class SelectSpec:
    """One active-learning round (``select.<round>``): which pool images go out for annotation (select.py)."""

    STRATEGIES: ClassVar[tuple[str, ...]] = ("least_confidence", "margin", "band", "random")
    name: str
    model: str  # the stage (or base / init) whose detections rank the pool
    dataset: str  # whose unlabelled pool: data/organized/<dataset>/images/pool
    budget: int  # images in the package
    strategy: str
    band: tuple[float, float] = (0.2, 0.6)  # `band` strategy: a detection with confidence in [min, max] is uncertain
    conf: float = 0.05  # detections below this confidence are not looked at
    preannotate: float = 0.25  # detections at or above this confidence go into the package as pre-annotations
    diversity: int = 0  # a candidate within this many pHash bits (of 256) of an earlier pick is passed over; 0 = off


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
    select: Mapping[str, SelectSpec] = field(default_factory=lambda: MappingProxyType({}))  # active-learning rounds
    calibrate: CalibrateSpec = field(default_factory=CalibrateSpec)  # confidence calibration of the shipped model
