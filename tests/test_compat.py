"""Contract tests: one per Ultralytics internal that stagetrain relies on, all wrapped in ``stagetrain.ultra``.

After an Ultralytics upgrade, run this file first: each failure names the internal that changed and
the ``ultra`` function to adapt. When all pass, bump ``ultra.TESTED_ULTRALYTICS``. The fast tests read
Ultralytics' code, files and small models; the ones marked slow train a 2-epoch model (seconds).
"""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stagetrain import ultra
from stagetrain.config import parse, ultralytics_arg_types, ultralytics_defaults
from stagetrain.data import organize, sources
from stagetrain.train import checkpoint
from test_train import offline  # noqa: F401  (fixture: any non-loopback connection fails the test)

SRC = Path(__file__).resolve().parents[1] / "src"
CHANGED = f"changed in ultralytics {ultra.installed_version()}"


def _child(code: str, **kwargs) -> str:
    """Run ``code`` in a fresh interpreter with the package importable; return its stdout."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True, **kwargs).stdout


# --- version ------------------------------------------------------------------------------------


def test_installed_ultralytics_is_the_tested_one():
    assert ultra.installed_version() == ultra.TESTED_ULTRALYTICS, (
        f"ultralytics {ultra.installed_version()} is installed, stagetrain was tested with {ultra.TESTED_ULTRALYTICS}: "
        "the other tests in this file name each internal that changed; when they pass, bump ultra.TESTED_ULTRALYTICS"
    )


def test_another_version_is_warned_about(monkeypatch):
    monkeypatch.setattr(ultra, "TESTED_ULTRALYTICS", "0.0.1")
    monkeypatch.setattr(ultra, "_loaded", False)
    with pytest.warns(UserWarning, match=r"tested with ultralytics 0\.0\.1, .* is installed: run `pytest tests/test_compat.py`"):
        ultra.load()


# --- files read without importing Ultralytics ---------------------------------------------------


def test_params_side_needs_neither_ultralytics_nor_torch():
    """Config validation may call these: importing ``ultra`` and using them must stay cheap."""
    out = _child(
        "import sys; from stagetrain import ultra\n"
        "ultra.default_yaml_path(); ultra.check_arch('yolo11n.yaml', 'x')\n"
        "print(sorted(m for m in ('ultralytics', 'torch') if m in sys.modules))"
    )
    assert out.strip() == "[]", f"importing stagetrain.ultra or reading Ultralytics' files imported {out.strip()}"


def test_default_yaml_location_and_comment_format():
    """config reads Ultralytics' defaults from this file and each argument's types from its ``# (bool | str) help`` comment."""
    from ultralytics.cfg import DEFAULT_CFG_DICT, DEFAULT_CFG_PATH

    assert ultra.default_yaml_path() == Path(DEFAULT_CFG_PATH), f"cfg/default.yaml moved to {DEFAULT_CFG_PATH} ({CHANGED})"
    assert dict(ultralytics_defaults()) == DEFAULT_CFG_DICT, "default.yaml no longer holds all of Ultralytics' default arguments"
    untyped = sorted(set(DEFAULT_CFG_DICT) - set(ultralytics_arg_types()))
    assert not untyped, f"default.yaml arguments without a `# (type) help` comment, which config parses for types: {untyped}"


def test_arguments_the_pipeline_passes_exist():
    from ultralytics.cfg import DEFAULT_CFG_DICT

    passed = "data imgsz seed deterministic freeze device plots project name exist_ok verbose resume epochs batch workers"
    passed += " distill_model dis split augment max_det save_json rect format dynamic simplify opset quantize"
    missing = sorted(set(passed.split()) - set(DEFAULT_CFG_DICT))
    assert not missing, f"Ultralytics arguments that stagetrain passes were removed or renamed: {missing}"


@pytest.mark.parametrize(
    "arch", ["yolov8n.yaml", "yolo11n.yaml", "yolo12n.yaml", "yolo26n.yaml", "yolov10n.yaml", "yolov8n-p2.yaml", "rtdetr-l.yaml"]
)
def test_model_yaml_lookup_matches_ultralytics(arch):
    from ultralytics.nn.tasks import yaml_model_load

    theirs, ours = yaml_model_load(arch), ultra.model_yaml(arch)
    assert (ours["backbone"], ours["head"]) == (theirs["backbone"], theirs["head"]), f"Ultralytics now finds {arch} elsewhere ({CHANGED})"


# --- hermetic set-up and threads -----------------------------------------------------------------


def test_settings_and_font_stay_inside_the_repo():
    from ultralytics.utils import SETTINGS, USER_CONFIG_DIR
    from ultralytics.utils.checks import check_font

    ultra.load()
    assert USER_CONFIG_DIR.parent == ultra.CONFIG_DIR, "YOLO_CONFIG_DIR no longer decides Ultralytics' config dir"
    assert {k: SETTINGS[k] for k in ultra.SETTINGS} == ultra.SETTINGS
    assert check_font("Arial.ttf") == USER_CONFIG_DIR / "Arial.ttf", "check_font() no longer looks in USER_CONFIG_DIR first"


def test_select_device_sets_torch_threads_from_num_threads():
    from ultralytics.utils import torch_utils

    ultra.load()
    assert torch_utils.NUM_THREADS == ultra.CPU_THREADS
    torch.set_num_threads(1 if ultra.CPU_THREADS > 1 else 2)
    torch_utils.select_device("cpu", verbose=False)
    assert torch.get_num_threads() == ultra.CPU_THREADS, (
        "select_device('cpu') no longer resets torch threads to ultralytics.utils.torch_utils.NUM_THREADS: ultra.load() patches it"
    )


def test_threads_follow_the_cpus_this_process_may_use():
    """Pinned to one CPU (as ``taskset -c 0`` or a cpuset does), every thread count the module sets is 1."""
    code = (
        "from stagetrain import ultra; ultra.load()\n"
        "import torch; from ultralytics.utils import torch_utils\n"
        "torch_utils.select_device('cpu', verbose=False)\n"
        "print(ultra.CPU_THREADS, torch_utils.NUM_THREADS, torch.get_num_threads())"
    )
    cpu = min(os.sched_getaffinity(0))
    pinned = _child(code, preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    assert pinned.split() == ["1", "1", "1"]
    assert _child(code).split() == [str(ultra.CPU_THREADS)] * 3  # unpinned: every CPU this process may use


@pytest.mark.parametrize(
    "cgroup, files, cpus",
    [
        ("0::/job\n", {"job/cpu.max": "150000 100000\n"}, 2),  # v2: 1.5 CPUs of quota -> 2 threads
        ("0::/\n", {"cpu.max": "max 100000\n"}, None),  # v2 unlimited
        ("3:cpu,cpuacct:/job\n", {"cpu/job/cpu.cfs_quota_us": "100000\n", "cpu/job/cpu.cfs_period_us": "100000\n"}, 1),  # v1
        ("3:cpu,cpuacct:/\n", {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1 unlimited
    ],
)
def test_cgroup_cpu_quota_caps_threads(tmp_path, cgroup, files, cpus):
    (tmp_path / "cgroup").write_text(cgroup)
    for name, text in files.items():
        (tmp_path / "fs" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "fs" / name).write_text(text)
    assert ultra._cgroup_quota_cpus(tmp_path / "cgroup", tmp_path / "fs") == cpus


def test_lazy_names_resolve():
    for name in ultra._LAZY:
        assert getattr(ultra, name) is not None, f"{ultra._LAZY[name]} is gone ({CHANGED})"
    fractions, int_min = ultra.ultralytics_cfg_ranges()
    assert "lr0" in fractions and int_min["epochs"] == 1, "ultralytics.cfg CFG_FRACTION_KEYS / CFG_INT_MIN changed"


# --- models ------------------------------------------------------------------------------------


def _batch(n: int = 2, size: int = 64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "img": torch.rand(n, 3, size, size, generator=g),
        "batch_idx": torch.arange(n).float(),
        "cls": torch.tensor([[1.0], [3.0]])[:n],
        "bboxes": torch.tensor([[0.5, 0.5, 0.3, 0.4], [0.4, 0.6, 0.2, 0.2]])[:n],
    }


@pytest.mark.parametrize("arch, backbone, layers, bins", [("yolov8n.yaml", 10, 23, 16), ("yolo26n.yaml", 11, 24, 1)])
def test_detection_model_layout_head_and_loss(arch, backbone, layers, bins):
    model = ultra.DetectionModel(arch, nc=5, verbose=False)
    assert ultra.layer_counts(model) == (backbone, layers), f"model.yaml['backbone'] / model.model no longer give {arch}'s layers"
    assert ultra.strides(model) == [8.0, 16.0, 32.0] and ultra.dfl_bins(model) == bins, "Detect's stride or reg_max moved"
    keys = model.state_dict()
    assert any(k.startswith(ultra.class_branches(model)[0]) for k in keys), "the Detect head's class branch is no longer `cv3`"
    model.args = ultra.get_cfg()
    for mode in (model.train, model.eval):  # train: {boxes, scores, feats}; eval: (y, that dict); YOLO26 wraps both in one2many
        mode()
        head = ultra.head_outputs(model(_batch()["img"]))
        assert head["scores"].shape[:2] == (2, 5) and head["boxes"].shape[:2] == (2, 4 * bins), "the head's raw output format changed"
    model.train()
    loss, items = model.init_criterion()(model(_batch()["img"]), _batch())
    assert loss.shape == (len(items),) and {"box_loss", "cls_loss"} <= set(items), (
        "the detection criterion no longer returns (per-term losses x batch size, {name: loss}): LogitDistillLoss appends to both"
    )
    model.criterion = lambda preds, batch: ("ours", batch)
    assert model.loss(_batch())[0] == "ours", "model.loss() no longer calls model.criterion: ultra.wrap_criterion sets it"


def test_a_new_checkpoint_loads_and_carries_its_host_path(tmp_path):
    model = ultra.DetectionModel("yolov8n.yaml", nc=5, verbose=False)
    model.names = dict(enumerate("abcde"))
    torch.save(ultra.new_checkpoint(model), tmp_path / "new.pt")
    loaded = ultra.YOLO(str(tmp_path / "new.pt")).model
    assert loaded.names == model.names, "YOLO(path) no longer loads a {'model', 'ema': None, 'epoch': -1} checkpoint"
    assert hasattr(loaded, "pt_path"), "Ultralytics no longer records `pt_path` (ultra.portable_checkpoint deletes it)"
    portable = ultra.portable_checkpoint({"model": loaded, "date": "x", "git": {}}, {"task": "detect"})
    assert not hasattr(portable["model"], "pt_path") and "date" not in portable and portable["model"].args == {"task": "detect"}


# --- the methods our subclasses override --------------------------------------------------------


def _signature(method) -> list[str]:
    return list(inspect.signature(method).parameters)


def test_trainer_methods_we_override():
    trainer = ultra.DetectionTrainer
    assert _signature(trainer._setup_train) == ["self"], "DetectionTrainer._setup_train changed: ultra's after_setup() hook runs after it"
    assert _signature(trainer.save_model) == ["self"], "DetectionTrainer.save_model changed its signature"
    source = inspect.getsource(trainer.save_model)
    assert "self.last." in source and "self.best." in source, (
        "DetectionTrainer.save_model no longer writes to self.last / self.best: ultra.AtomicCheckpointTrainer redirects those"
    )
    assert _signature(trainer.label_loss_items) == ["self", "loss_items", "prefix"], "label_loss_items changed (ultra.epoch_losses)"
    assert issubclass(ultra.AtomicCheckpointTrainer, trainer)


def test_validator_methods_we_override():
    from ultralytics.utils.metrics import ConfusionMatrix, DetMetrics

    validator = ultra.DetectionValidator
    assert _signature(validator._process_batch) == ["self", "preds", "batch"], "DetectionValidator._process_batch changed"
    assert _signature(validator.eval_json) == ["self", "stats"], "DetectionValidator.eval_json changed"
    assert "conf" in _signature(ConfusionMatrix.process_batch), "ConfusionMatrix.process_batch takes no `conf` any more"
    update = inspect.getsource(validator.update_metrics)
    assert "self._process_batch(" in update and "if self.args.plots:" in update, (
        "update_metrics no longer calls _process_batch per image, or fills the confusion matrix regardless of plots: see ultra._EvalHooks"
    )
    assert list(DetMetrics().keys) == list(ultra.BOX_METRICS), "the validator's metric keys changed (ultra.BOX_METRICS)"


def test_other_internals_keep_their_shape():
    from ultralytics.nn.distill_model import DistillationModel

    assert ultra.img2label_paths(["/d/images/train/a.jpg"]) == ["/d/labels/train/a.txt"], "img2label_paths maps images elsewhere"
    assert {"jpg", "png"} <= set(ultra.IMG_FORMATS)
    assert {"device", "fp16", "verbose"} <= set(_signature(ultra.AutoBackend.__init__)), "AutoBackend's arguments changed (export.py)"
    assert "student_model" in _signature(DistillationModel.__init__), "feature distillation no longer wraps a `student_model`"


def test_amp_check_is_ours_and_never_downloads(offline):  # noqa: F811
    """The trainer calls check_amp by its module-level name (ultra.hermetic_check_amp replaces it there), Ultralytics'
    own loads yolo26n.pt on CUDA, and ours on a CPU model returns False with no network attempt. CUDA path unverified."""
    from ultralytics.engine import trainer as trainer_module
    from ultralytics.utils import checks

    ultra.load()
    assert trainer_module.check_amp is ultra.hermetic_check_amp, "the trainer no longer imports check_amp by name: see ultra.load"
    assert "self.amp = torch.tensor(check_amp(self.model)" in inspect.getsource(trainer_module.BaseTrainer._setup_train), CHANGED
    assert ultra.AMP_WEIGHTS in inspect.getsource(checks.check_amp), f"check_amp no longer loads {ultra.AMP_WEIGHTS} ({CHANGED})"
    model = ultra.DetectionModel("yolov8n.yaml", nc=2, verbose=False)
    assert ultra.hermetic_check_amp(model) is False and offline == []


def test_openvino_export_needs_nothing_installed():
    """Ultralytics' OpenVINO export asks check_requirements for openvino>=2024/2025.2: the pinned one satisfies both (no pip)."""
    import importlib.metadata

    from ultralytics.engine.exporter import Exporter
    from ultralytics.utils.checks import check_version

    cells = [c.cell_contents for c in Exporter.export_openvino.__closure__ or ()]  # under @try_export
    source = inspect.getsource(next((c for c in cells if inspect.isfunction(c)), Exporter.export_openvino))
    bounds = sorted(set(re.findall(r'"openvino(>=[\d.]+)"', source)))
    assert bounds, f"export_openvino no longer checks an openvino version ({CHANGED})"
    for bound in bounds:
        assert check_version(importlib.metadata.version("openvino"), bound), f"openvino {bound} needed by Ultralytics' export"
    assert os.environ["YOLO_AUTOINSTALL"] == "false"


def test_an_image_list_resolves_against_its_folder(tmp_path):
    """data/trainset.py writes `train: train.txt` of `./../../organized/...` lines, images never copied: Ultralytics must
    resolve a `./` line against the list's folder, a relative `val:` against the yaml's, and find labels by /images/ -> /labels/."""
    from PIL import Image

    for split, stem, row in (("train", "a", "1 0.5 0.5 0.2 0.2"), ("train", "b", "3 0.4 0.4 0.1 0.1"), ("val", "c", "0 0.5 0.5 0.3 0.3")):
        for kind in ("images", "labels"):
            (tmp_path / "organized/ds" / kind / split).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), (200, 100, 0)).save(tmp_path / "organized/ds/images" / split / f"{stem}.png")
        (tmp_path / "organized/ds/labels" / split / f"{stem}.txt").write_text(row + "\n")
    lists = tmp_path / "trainsets/stage"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("./../../organized/ds/images/train/b.png\n./../../organized/ds/images/train/a.png\n")
    (lists / "data.yaml").write_text("train: train.txt\nval: ../../organized/ds/images/val\nnames: {0: p, 1: q, 2: r, 3: s}\n")
    images, labels = ultra.read_split(lists / "data.yaml", "train")
    assert [os.path.normpath(p) for p in images] == [str(tmp_path / "organized/ds/images/train" / n) for n in ("a.png", "b.png")], (
        f"a `./` line of an image list no longer resolves against the list's folder ({CHANGED}): see data/trainset.py"
    )
    assert [label["cls"].ravel().tolist() for label in labels] == [[1.0], [3.0]], (
        "labels of listed images are not found by /images/ -> /labels/"
    )
    assert sorted(p.name for p in lists.iterdir()) == ["data.yaml", "train.txt"], "Ultralytics now writes its cache beside the list"
    assert (tmp_path / "organized/ds/labels/train.cache").exists(), "the labels cache moved: check .dvcignore's `*.cache` still covers it"
    val_images, _ = ultra.read_split(lists / "data.yaml", "val")
    assert [Path(p).name for p in val_images] == ["c.png"], "a relative `val:` no longer resolves against the data.yaml's folder"


# --- a real (tiny) training run -----------------------------------------------------------------

EPOCHS = 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-epoch run of Ultralytics' trainer (our atomic subclass), with every callback and checkpoint recorded."""
    from stagetrain.tools.repo import repo_params, shrink

    tmp = tmp_path_factory.mktemp("compat")
    cfg = parse(shrink(repo_params(), images=24, size=64, imgsz=32))
    sources.run(cfg, "target", tmp / "raw")
    organize.run(cfg, "target", tmp / "raw", tmp / "data")
    checkpoint.build_base(cfg, tmp / "base.pt")
    seen: dict = {"events": [], "ours": [], "saved": [], "epoch_records": []}
    model = ultra.YOLO(str(tmp / "base.pt"))
    for event in ("on_train_epoch_end", "on_fit_epoch_end", "on_train_end"):
        model.add_callback(event, lambda trainer, event=event: seen["events"].append(event))
    model.add_callback("on_model_save", lambda trainer: seen["saved"].append(checkpoint.read(trainer.last)))

    def epoch_end(trainer):
        seen["ours"].append("epoch")
        seen["epoch_records"].append((ultra.epoch_losses(trainer), ultra.learning_rates(trainer), ultra.val_metrics(trainer)))

    ultra.on_epochs(model, epoch_end, lambda trainer: seen["ours"].append("final"))
    args = {"epochs": EPOCHS, "imgsz": 32, "batch": 8, "device": "cpu", "workers": 0, "plots": False, "seed": 0, "deterministic": True}
    model.train(
        trainer=ultra.AtomicCheckpointTrainer, data=str(tmp / "data/data.yaml"), project=str(tmp), name="run", verbose=False, **args
    )
    return model.trainer, seen, tmp


@pytest.mark.slow
def test_callback_order_and_count(trained):
    _, seen, _ = trained
    events = [e for e in seen["events"] if e != "on_train_end"]
    assert events == ["on_train_epoch_end", "on_fit_epoch_end"] * EPOCHS + ["on_fit_epoch_end"], (
        f"Ultralytics' epoch callbacks changed: {events}; ultra.on_epochs expects on_fit_epoch_end epochs + 1 times, "
        "the extra one (final validation of best.pt) without an on_train_epoch_end before it"
    )
    assert seen["ours"] == ["epoch"] * EPOCHS + ["final"]


@pytest.mark.slow
def test_trainer_attributes(trained):
    trainer, seen, _ = trained
    losses, lrs, metrics = seen["epoch_records"][-1]
    assert set(losses) == {"train/box_loss", "train/cls_loss", "train/dfl_loss"}, "trainer.tloss / label_loss_items changed"
    assert lrs and all(k.startswith("lr/pg") for k in lrs), "trainer.lr changed"
    assert set(ultra.BOX_METRICS) <= set(metrics) and "val/box_loss" in metrics, "trainer.metrics after validation changed"
    assert 1 <= ultra.best_epoch(trainer) <= EPOCHS, "trainer.stopper.best_epoch (1-based: epochs run when it was best) changed"
    assert ultra.epochs_completed(trainer) == EPOCHS
    assert sorted(p.name for p in ultra.weights_dir(trainer).iterdir()) == ["best.pt", "last.pt"], (
        "trainer.wdir changed (or a .tmp was left)"
    )
    assert ultra.trainer_args(trainer)["epochs"] == EPOCHS


@pytest.mark.slow
def test_checkpoint_keys(trained):
    trainer, seen, _ = trained
    during = seen["saved"][0]
    assert ultra.checkpoint_progress(during) == (1, True), "a mid-run checkpoint no longer holds `epoch` and `optimizer`"
    assert isinstance(ultra.checkpoint_model(during), torch.nn.Module) and during.get("model") is None, "the EMA is no longer under `ema`"
    assert set(ultra.VOLATILE_KEYS) <= set(during) and {"train_args", "train_results"} <= set(during), f"checkpoint keys: {sorted(during)}"
    final = checkpoint.read(ultra.weights_dir(trainer) / "last.pt")
    assert ultra.checkpoint_progress(final) == (0, False), "a finished run's last.pt is no longer stripped (epoch -1, no optimizer)"


@pytest.mark.slow
def test_eval_validator_outputs(trained):
    trainer, _, tmp = trained
    result = ultra.YOLO(str(ultra.weights_dir(trainer) / "best.pt")).val(
        validator=ultra.EvalValidator, data=str(tmp / "data/data.yaml"), imgsz=32, batch=8, device="cpu", plots=False,
        save_json=True, conf=0.0001, project=str(tmp), name="val", exist_ok=True, verbose=False,
    )  # fmt: skip
    recall, precision = ultra.pr_curve(result)
    assert len(recall) == precision.shape[1] and precision.shape[0] >= 1, "box.px / box.prec_values changed"
    assert ultra.confusion_counts(result).shape == (6, 6), "confusion_matrix.matrix changed"
    assert ultra.confusion_counts(result).sum() > 0, "EvalValidator no longer fills the confusion matrix with plots off"
    predictions = json.loads((tmp / "val/predictions.json").read_text())
    assert predictions and {"file_name", "category_id", "bbox", "score"} <= set(predictions[0]), "predictions.json entries changed"
    assert {p["category_id"] for p in predictions} <= set(range(1, 6)), "category ids of custom data are no longer class index + 1"
