"""The one door to Ultralytics: every use of its internals goes through this module.

Two jobs, one place:

- **Hermetic.** Ultralytics keeps global settings in the user's home, downloads a font on every
  train/val, pip-installs missing packages, phones home, and, when dvclive is importable, registers
  its own DVC callback that patches ``dvc.yaml``. :func:`load` pins all of that down: a config dir
  inside the repo (git-ignored), offline flags, a font that is already there, every integration off.
- **Compat.** What the pipeline relies on beyond Ultralytics' documented API (a patched module
  global, checkpoint keys, the callback order, trainer attributes, the trainer and validator methods
  we override, file layouts) is wrapped here, and ``tests/test_compat.py`` holds one contract test
  per internal that names what changed when an Ultralytics upgrade breaks it. ``TESTED_ULTRALYTICS``
  is the version those tests passed with; :func:`load` warns when another one is installed.

Importing this module is cheap and never imports Ultralytics or torch, so params validation can
use :func:`default_yaml_path` and :func:`check_arch`. Ultralytics is imported (hermetically) by
:func:`load`, which every Ultralytics name of this module (``ultra.YOLO``, ``ultra.DetectionModel``,
``ultra.AtomicCheckpointTrainer``, ...) calls on first access. Never import ``ultralytics`` elsewhere.
One module for one concern, hence over 300 lines: splitting it would make two doors.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import math
import os
import re
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from stagetrain.errors import UserError

TESTED_ULTRALYTICS = "8.4.190"  # tests/test_compat.py passed with this version; load() warns on any other
REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / ".ultralytics"

os.environ["YOLO_CONFIG_DIR"] = str(CONFIG_DIR)
os.environ["YOLO_OFFLINE"] = "1"  # is_online() -> False: no DNS probes, no downloads
os.environ["YOLO_AUTOINSTALL"] = "false"  # never pip-install at run time
os.environ.setdefault("YOLO_VERBOSE", "false")


# --- CPU threads ----------------------------------------------------------------------------------


def _cgroup_quota_cpus(proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """CPUs a CFS quota grants this process (cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``); None when unlimited."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        if controllers == "":  # v2: "0::/path", one file "<quota|max> <period>"
            files = (root / rel / "cpu.max",)
        elif "cpu" in controllers.split(","):  # v1: two files, quota -1 = unlimited
            files = (root / "cpu" / rel / "cpu.cfs_quota_us", root / "cpu" / rel / "cpu.cfs_period_us")
        else:
            continue
        try:
            words = " ".join(f.read_text() for f in files).split()
        except OSError:
            continue
        if len(words) == 2 and words[0] not in ("max", "-1") and int(words[1]) > 0:
            return max(1, math.ceil(int(words[0]) / int(words[1])))
    return None


def cpu_threads() -> int:
    """Torch threads for this process: the CPUs it may run on (``taskset``, cpusets), capped by a cgroup CPU quota.

    ``os.cpu_count()`` counts the machine's CPUs: a run pinned to one core (or a queue worker in a
    2-CPU container on a 64-core host) would start 64 threads fighting over it.
    """
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        allowed = os.cpu_count() or 1
    quota = _cgroup_quota_cpus()
    return max(1, min(allowed, quota) if quota else allowed)


CPU_THREADS = cpu_threads()


# --- Ultralytics files, read without importing it -------------------------------------------------


def installed_version() -> str | None:
    try:
        return importlib.metadata.version("ultralytics")
    except importlib.metadata.PackageNotFoundError:
        return None


def package_dir() -> Path:
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("ultralytics is not installed: run `make install` (or `pip install -r requirements.txt`)")
    return Path(next(iter(spec.submodule_search_locations)))


def default_yaml_path() -> Path:
    """Ultralytics' ``cfg/default.yaml``: every train/val argument, its default and a ``# (type) help`` comment."""
    return package_dir() / "cfg" / "default.yaml"


def model_yaml(arch: str) -> dict[str, Any]:
    """The layout of a model yaml as Ultralytics finds it: a file on disk, else one of its ``cfg/models``.

    A scaled name (``yolo11n.yaml``) falls back to its unified file (``yolo11.yaml``), whose ``scales``
    hold n/s/m/l/x. Raises FileNotFoundError when neither exists.
    """
    if Path(arch).is_file():
        return yaml.safe_load(Path(arch).read_text())
    models = package_dir() / "cfg" / "models"
    for name in (Path(arch).name, re.sub(r"(\d+)([nslmx])(.+)?$", r"\1\3", Path(arch).name)):
        found = sorted(models.rglob(name))
        if found:
            return yaml.safe_load(found[0].read_text())
    raise FileNotFoundError(f"'{arch}' does not exist")


SUPPORTED_HEADS = ("Detect", "v10Detect")  # heads the pipeline trains, validates, distils and exports
HEAD_REASONS = {
    "RTDETRDecoder": "RT-DETR's transformer decoder needs Ultralytics' RTDETR trainer, validator and loss (no strides, "
    "no DFL bins to distil) and costs ~30x yolov8n's CPU time per training step; use a YOLO detect yaml "
    "(yolov8n.yaml, yolov10n.yaml, yolo11n.yaml, yolo12n.yaml, yolo26n.yaml)",
}


def head_of(layout: dict[str, Any]) -> str | None:
    """The module name of a layout's last layer (its head), e.g. ``Detect`` or ``RTDETRDecoder``; None if it has no head."""
    try:
        return str(layout["head"][-1][2])
    except (KeyError, IndexError, TypeError):
        return None


def check_arch(arch: str | dict[str, Any], where: str) -> None:
    """Refuse, before any work, a model whose head the pipeline cannot train.

    Args:
        arch: a model yaml name or path (``model.arch``), or a built model's layout (``model.yaml``).
            A ``.pt`` name passes: its layout is checked when the base stage loads it.
        where: the param, for the message, e.g. ``params.yaml: `model.arch: rtdetr-l.yaml```.
    """
    if isinstance(arch, str):
        if not arch.endswith((".yaml", ".yml")):
            return
        try:
            arch = model_yaml(arch)
        except FileNotFoundError:
            raise UserError(f"{where} is not an Ultralytics model yaml nor a file; e.g. yolov8n.yaml, yolo11n.yaml") from None
    head = head_of(arch)
    if head is None:
        raise UserError(f"{where} is not an Ultralytics model yaml (no `head:` layers); e.g. yolov8n.yaml, yolo11n.yaml")
    if head not in SUPPORTED_HEADS:
        reason = HEAD_REASONS.get(head, f"stagetrain trains detectors with a {' or '.join(SUPPORTED_HEADS)} head")
        raise UserError(f"{where} has a {head} head, which stagetrain does not support: {reason}")


# --- loading Ultralytics --------------------------------------------------------------------------

_LAZY = {  # name here -> (module, name there)
    "YOLO": ("ultralytics", "YOLO"),
    "DetectionModel": ("ultralytics.nn.tasks", "DetectionModel"),
    "DetectionTrainer": ("ultralytics.models.yolo.detect", "DetectionTrainer"),
    "DetectionValidator": ("ultralytics.models.yolo.detect", "DetectionValidator"),
    "DetectionPredictor": ("ultralytics.models.yolo.detect", "DetectionPredictor"),  # select.py: per-box class scores
    "non_max_suppression": ("ultralytics.utils.nms", "non_max_suppression"),
    "AutoBackend": ("ultralytics.nn.autobackend", "AutoBackend"),
    "img2label_paths": ("ultralytics.data.utils", "img2label_paths"),
    "IMG_FORMATS": ("ultralytics.data.utils", "IMG_FORMATS"),
    "exif_size": ("ultralytics.data.utils", "exif_size"),
    "get_cfg": ("ultralytics.cfg", "get_cfg"),
}
SETTINGS = {
    "sync": False,  # no analytics events
    "api_key": "",
    "clearml": False,
    "comet": False,
    "dvc": False,  # we log with our own dvclive.Live per stage
    "mlflow": False,
    "raytune": False,
    "tensorboard": False,
    "wandb": False,
    "datasets_dir": str(CONFIG_DIR / "datasets"),
    "weights_dir": str(CONFIG_DIR / "weights"),
    "runs_dir": str(CONFIG_DIR / "runs"),
}
_loaded = False


def load() -> None:
    """Import Ultralytics hermetically (idempotent); warn when it is not the tested version."""
    global _loaded
    if _loaded:
        return
    CONFIG_DIR.mkdir(parents=True, exist_ok=True)
    import matplotlib  # an Ultralytics dependency that ships DejaVu fonts
    import torch
    from ultralytics.utils import SETTINGS as settings
    from ultralytics.utils import USER_CONFIG_DIR, torch_utils

    for name in ("Arial.ttf", "Arial.Unicode.ttf"):  # check_font() looks here before it downloads
        if not (USER_CONFIG_DIR / name).exists():
            shutil.copyfile(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf", USER_CONFIG_DIR / name)
    settings.update(SETTINGS)
    # select_device() resets torch to NUM_THREADS (cpu_count - 1) threads on CPU: every trainer and
    # validator uses ours instead (~1.8x img/s on 2 cores; 1 thread under `taskset -c 0`).
    torch_utils.NUM_THREADS = CPU_THREADS
    torch.set_num_threads(CPU_THREADS)
    from ultralytics.engine import trainer as trainer_module

    trainer_module.check_amp = hermetic_check_amp  # the trainer's own name for it (imported there by name)
    _loaded = True
    if installed_version() != TESTED_ULTRALYTICS:
        warnings.warn(
            f"stagetrain was tested with ultralytics {TESTED_ULTRALYTICS}, {installed_version()} is installed: "
            "run `pytest tests/test_compat.py` to see which internals changed",
            stacklevel=2,
        )


AMP_WEIGHTS = "yolo26n.pt"  # what Ultralytics' check_amp loads (downloads when absent) on a CUDA device


def hermetic_check_amp(model: Any) -> bool:
    """Ultralytics' ``check_amp`` without its download: the trainer calls this in its place.

    On CUDA, Ultralytics loads ``yolo26n.pt`` (a download offline: a failed network attempt, then AMP
    kept on). With that file already in the weights dir, or off CUDA (where no file is loaded and AMP is
    off), its own check runs. Otherwise the model being trained is its own probe: one FP32 and one
    autocast forward of a fixed input must agree within Ultralytics' tolerance (0.5 px; scores are in
    [0, 1]), else AMP is turned off with the reason logged. Unverified here: no CUDA device in CI.
    """
    import copy

    import torch
    from ultralytics.utils import LOGGER, WEIGHTS_DIR
    from ultralytics.utils.checks import check_amp

    device = next(model.parameters()).device
    if device.type != "cuda" or (WEIGHTS_DIR / AMP_WEIGHTS).is_file():
        return check_amp(model)
    probe = copy.deepcopy(model).eval().float()
    size = max(256, int(model.stride.max() * 4))
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        full = probe(x)[0]
        with torch.autocast(device_type="cuda"):
            mixed = probe(x)[0]
    ok = full.shape == mixed.shape and bool(torch.isfinite(mixed).all()) and torch.allclose(full, mixed.float(), atol=0.5)
    LOGGER.info(f"AMP: {'on' if ok else 'off'}: FP32 vs autocast forward of the model itself ({AMP_WEIGHTS} absent, not downloaded)")
    return ok


def __getattr__(name: str) -> Any:
    """Ultralytics names and our subclasses of its classes, resolved (and Ultralytics loaded) on first use."""
    if name in _LAZY:
        load()
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
    elif name in _SUBCLASSES:
        load()
        mixin, base = _SUBCLASSES[name]
        value = type(name, (mixin, __getattr__(base)), {"__module__": __name__, "__doc__": mixin.__doc__})
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # pickling and Ultralytics' DDP launcher import these by module and name
    return value


def ultralytics_cfg_ranges() -> tuple[frozenset[str], dict[str, int]]:
    """(arguments ``check_cfg`` bounds to [0, 1], minimum of each integer argument it bounds): config mirrors them."""
    load()
    from ultralytics.cfg import CFG_FRACTION_KEYS, CFG_INT_MIN

    return frozenset(CFG_FRACTION_KEYS), dict(CFG_INT_MIN)


def resolve_device(device: object) -> object:
    """Map the params' ``device: auto`` to the first CUDA GPU if there is one, else ``cpu``."""
    import torch

    if device in (None, "", "auto"):
        return 0 if torch.cuda.is_available() else "cpu"
    return device


# --- datasets -----------------------------------------------------------------------------------


def read_split(data_yaml: Path, split: str = "train", imgsz: int = 64) -> tuple[list[str], list[dict[str, Any]]]:
    """A data.yaml split as Ultralytics' trainer reads it (``check_det_dataset``, then ``YOLODataset``): image files, labels.

    Labels carry ``im_file`` and ``cls`` (an n x 1 array of class ids). Reading writes Ultralytics' labels cache
    (``<first label folder>.cache``) as training does.
    """
    load()
    from ultralytics.data import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(str(data_yaml))
    dataset = YOLODataset(img_path=data[split], data=data, imgsz=imgsz, augment=False, prefix=f"{split}: ")
    return list(dataset.im_files), list(dataset.labels)


# --- trainer: callbacks and attributes ------------------------------------------------------------

BOX_METRICS = {  # Ultralytics' validator keys -> our flat names
    "metrics/precision(B)": "precision",
    "metrics/recall(B)": "recall",
    "metrics/mAP50(B)": "mAP50",
    "metrics/mAP50-95(B)": "mAP50-95",
}


def on_epochs(model: Any, epoch_end: Callable[[Any], None], final: Callable[[Any], None]) -> None:
    """Call ``epoch_end(trainer)`` once per completed (and validated) epoch and ``final(trainer)`` once after training.

    Ultralytics calls ``on_fit_epoch_end`` after each epoch's validation and once more from its final
    evaluation of best.pt (epochs + 1 calls); only the per-epoch calls follow an ``on_train_epoch_end``.
    """
    pending = False

    def train_epoch_end(trainer: Any) -> None:
        nonlocal pending
        pending = True

    def fit_epoch_end(trainer: Any) -> None:
        nonlocal pending
        (epoch_end if pending else final)(trainer)
        pending = False

    model.add_callback("on_train_epoch_end", train_epoch_end)
    model.add_callback("on_fit_epoch_end", fit_epoch_end)


def epoch_losses(trainer: Any) -> dict[str, float]:
    """The epoch's mean training losses, ``{"train/box_loss": ...}``."""
    return trainer.label_loss_items(trainer.tloss, prefix="train")


def learning_rates(trainer: Any) -> dict[str, float]:
    """The epoch's learning rate per parameter group, ``{"lr/pg0": ...}``."""
    return dict(trainer.lr)


def val_metrics(trainer: Any) -> dict[str, float]:
    """The latest validation: ``metrics/...(B)`` scores and ``val/...`` losses (losses absent after training)."""
    return {k: float(v) for k, v in (trainer.metrics or {}).items()}


def epochs_completed(trainer: Any) -> int:
    return trainer.epoch + 1


def best_epoch(trainer: Any) -> int:
    """Epochs run when val fitness was best (1-based)."""
    return trainer.stopper.best_epoch


def weights_dir(trainer: Any) -> Path:
    """Where the trainer wrote last.pt and best.pt."""
    return Path(trainer.wdir)


def trainer_args(trainer: Any) -> dict[str, Any]:
    """The trainer's effective arguments (after Ultralytics merged defaults, checkpoint and overrides)."""
    return dict(vars(trainer.args))


# --- checkpoints ----------------------------------------------------------------------------------

VOLATILE_KEYS = ("date", "git", "license", "docs")  # differ between identical runs, or name the host


def checkpoint_model(ckpt: dict[str, Any]) -> Any:
    """The model a checkpoint holds (its EMA when there is one); a feature-distillation wrapper gives its student."""
    model = ckpt.get("ema") or ckpt.get("model")
    return getattr(model, "student_model", model)


def checkpoint_progress(ckpt: dict[str, Any]) -> tuple[int, bool]:
    """(epochs completed, resumable): a finished run's checkpoint is stripped (epoch -1, no optimizer)."""
    return int(ckpt.get("epoch", -1)) + 1, ckpt.get("optimizer") is not None


def new_checkpoint(model: Any) -> dict[str, Any]:
    """A checkpoint of an untrained model that ``YOLO(path)`` loads and trains from."""
    load()
    from ultralytics import __version__

    return {"epoch": -1, "model": model, "ema": None, "version": __version__}


def portable_checkpoint(ckpt: dict[str, Any], train_args: dict[str, Any]) -> dict[str, Any]:
    """``ckpt`` without date, git state, wall times or host paths, recording ``train_args`` instead."""
    import torch

    ckpt = {k: v for k, v in ckpt.items() if k not in VOLATILE_KEYS}
    if isinstance(ckpt.get("train_results"), dict):  # per-epoch wall times differ between identical runs
        ckpt["train_results"] = {k: v for k, v in ckpt["train_results"].items() if k != "time"}
    ckpt["train_args"] = train_args
    for key in ("ema", "model"):
        if isinstance(ckpt.get(key), torch.nn.Module):
            ckpt[key] = getattr(ckpt[key], "student_model", ckpt[key])  # distilled: the student alone ships
            ckpt[key].args = dict(train_args)
            if hasattr(ckpt[key], "pt_path"):  # the host path Ultralytics loaded it from
                del ckpt[key].pt_path
    return ckpt


# --- models ---------------------------------------------------------------------------------------


def layer_counts(model: Any) -> tuple[int, int]:
    """(backbone layers, all layers): the backbone is the first ``len(yaml["backbone"])`` layers, the head the last."""
    return len(model.yaml["backbone"]), len(model.model)


def class_branches(model: Any) -> tuple[str, ...]:
    """State-dict prefixes of the Detect head's class branches (``cv3``, and ``one2one_cv3`` of end-to-end heads)."""
    detect = f"model.{len(model.model) - 1}."
    return detect + "cv3.", detect + "one2one_cv3."


def strides(model: Any) -> list[float]:
    return model.stride.tolist()


def dfl_bins(model: Any) -> int | None:
    """Bins of the head's box distributions (``reg_max``); None for heads without them."""
    return getattr(model.model[-1], "reg_max", None)


def head_outputs(preds: Any) -> dict[str, Any]:
    """The raw head dict ({boxes, scores, feats}) from a train-mode dict or an eval-mode (y, dict) tuple."""
    preds = preds[1] if isinstance(preds, (tuple, list)) else preds
    return preds.get("one2many", preds)  # end-to-end heads (YOLO26): the dense branch


def wrap_criterion(trainer: Any, wrap: Callable[[Any], Any]) -> None:
    """Make the training model's loss ``wrap(its detection loss)``.

    The criterion is called as ``criterion(preds, batch) -> (per-term losses x batch size, {name: loss})``
    and the trainer backpropagates the sum of the first.
    """
    student = trainer.model.module if hasattr(trainer.model, "module") else trainer.model  # DDP wraps it
    student.criterion = wrap(student.init_criterion())


# --- trainer and validator subclasses -------------------------------------------------------------


class _AtomicCheckpoints:
    """A DetectionTrainer whose checkpoints are written to a temp file and renamed into place.

    Ultralytics writes ``last.pt`` with a plain ``write_bytes`` to ``self.last``/``self.best``: a kill
    mid-write leaves a torn file. ``after_setup()`` runs once Ultralytics has built the model, EMA and
    optimizer (and restored them on resume): subclasses hook in there. Resolved lazily into
    ``ultra.AtomicCheckpointTrainer`` so Ultralytics' DDP launcher can import it in its workers.
    """

    def after_setup(self) -> None:
        """Override: runs at the end of Ultralytics' training set-up."""

    def _setup_train(self) -> None:
        super()._setup_train()
        self.after_setup()

    def save_model(self):
        final = {"last": self.last, "best": self.best}
        self.last, self.best = (p.with_name(f".{p.name}.tmp") for p in (self.last, self.best))
        try:
            saved = super().save_model()
        finally:
            for key, target in final.items():
                tmp = getattr(self, key)
                if tmp.exists():
                    os.replace(tmp, target)
                setattr(self, key, target)
        return saved


class _EvalHooks:
    """Ultralytics' detection validator with a confusion matrix but no PNG plots, and no COCO scoring of its own.

    With ``plots=False`` Ultralytics skips the confusion matrix; ``_process_batch`` sees every image's
    predictions and ground truth, so it fills the matrix there. ``eval_json`` would score the
    predictions with faster-coco-eval (not a dependency): stagetrain scores them with pycocotools.
    """

    confusion_conf = 0.25  # Ultralytics' predict threshold: at val's 0.001 nearly every row would be background

    def _process_batch(self, preds: dict, batch: dict) -> dict:
        if not self.args.plots:  # with plots on, Ultralytics fills it itself
            self.confusion_matrix.process_batch(preds, batch, conf=self.confusion_conf)
        return super()._process_batch(preds, batch)

    def eval_json(self, stats: dict[str, Any]) -> dict[str, Any]:
        return stats


_SUBCLASSES = {  # name -> (our mixin, Ultralytics base): built by __getattr__ once Ultralytics is loaded
    "AtomicCheckpointTrainer": (_AtomicCheckpoints, "DetectionTrainer"),
    "EvalValidator": (_EvalHooks, "DetectionValidator"),
}


def pr_curve(result: Any) -> tuple[Any, Any]:
    """(recall grid, precision per class on it) at IoU 0.5 from a validator's metrics."""
    return result.box.px, result.box.prec_values


def confusion_counts(result: Any) -> Any:
    """The ``[predicted, actual]`` count matrix of a validation, background last."""
    return result.confusion_matrix.matrix
