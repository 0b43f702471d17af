"""export on a real (tiny) checkpoint: the deploy package, the parity gate (a perturbed ONNX fails it), OpenVINO parity, latency."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from conftest import repo_params, shrink
from stagetrain import export
from stagetrain.config import parse
from stagetrain.deploy import parity
from stagetrain.errors import UserError
from test_evaluate import MODEL, trained_workspace
from test_train import offline  # noqa: F401  (fixture: any non-loopback connection fails the test)

# The shared 1-epoch test model scores next to nothing: lifting its class logits by this much gives it ~30
# confident detections on the parity images (boxes of an untrained head, but a real network the gate can compare).
LOGIT_SHIFT = 7.0
WEIGHTS = "export_src/best.pt"  # the lifted checkpoint, beside (not in) the workspace's models/


def export_params(**export_keys) -> dict:
    params = shrink(repo_params())
    params["export"].update(model=MODEL, formats=["onnx", "openvino", "engine"])
    params["export"].update(export_keys)
    return params


def shift_class_logits(model: torch.nn.Module, shift: float) -> None:
    """Add ``shift`` to the bias of the last conv of every class branch of the Detect head."""
    for branch in model.model[-1].cv3:
        branch[-1].bias.data += shift


def run_export(workspace: Path, out: str = "models/export", calibration: Path | None = None, **export_keys) -> dict:
    """export.run as the stage calls it, from the workspace root (paths relative to it, as under DVC)."""
    cfg = parse(export_params(**export_keys))
    return export.run(
        cfg, workspace / WEIGHTS, workspace / "organized/data.yaml", workspace / out, workspace / "work_export", 1, calibration=calibration
    )


def exported_package(root: Path, monkeypatch) -> tuple[Path, dict]:
    """A trained workspace, its checkpoint with lifted logits, and that exported into models/export (built once per session)."""
    workspace = trained_workspace(root)
    monkeypatch.chdir(workspace)
    record = workspace / "export_results.json"
    if not record.exists():
        ckpt = torch.load(workspace / "models" / MODEL / "best.pt", weights_only=False)
        for key in ("model", "ema"):
            if ckpt.get(key) is not None:
                shift_class_logits(ckpt[key], LOGIT_SHIFT)
        (workspace / WEIGHTS).parent.mkdir(exist_ok=True)
        torch.save(ckpt, workspace / WEIGHTS)
        record.write_text(json.dumps(run_export(workspace)))
    return workspace, json.loads(record.read_text())


@pytest.fixture(scope="module")
def module_monkeypatch():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(scope="module")
def package(tmp_path_factory, module_monkeypatch):
    return exported_package(tmp_path_factory.getbasetemp() / "trained", module_monkeypatch)


@pytest.mark.slow  # trains a model, exports ONNX and OpenVINO
def test_package_passes_the_gate_and_records_flat_portable_figures(package, offline):  # noqa: F811
    workspace, results = package
    assert offline == []  # this test's own calls made none either (the package may have been built before it)
    out = workspace / "models/export"
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == [
        "README.txt",
        "deploy.yaml",
        "model.onnx",
        "model_openvino_model/metadata.yaml",
        "model_openvino_model/model.bin",
        "model_openvino_model/model.xml",
        "parity.json",
        "predict.py",
    ]
    assert sorted(p.name for p in (workspace / "models" / MODEL).iterdir()) == ["best.pt"]  # nothing beside the weights
    assert not (workspace / "work_export").exists()
    detail = json.loads((out / "parity.json").read_text())
    deploy = json.loads((out / "deploy.yaml").read_text())
    for text in (json.dumps(results), json.dumps(detail), json.dumps(deploy)):
        assert str(workspace) not in text

    assert all(not isinstance(v, (dict, list)) for v in results.values())  # flat: one `dvc metrics show` column each
    for fmt in ("onnx", "openvino"):
        entry = detail[fmt]
        assert entry["detections"] >= 20, "the gate compared too few detections to mean anything"
        assert entry["matched"] >= 0.99 and entry["max_conf_delta"] <= 0.02 and abs(entry["map50_delta"]) <= 0.005
        assert entry["max_abs_diff"] < 1e-2  # raw outputs: OpenVINO runs FP32 (its CPU default would be bf16)
        assert results[f"{fmt}_matched"] == entry["matched"] and results[f"{fmt}_map50_delta"] == entry["map50_delta"]
        assert {f"{fmt}_latency_ratio_64", f"{fmt}_latency_ratio_640"} <= set(results)
        assert all(ms > 0 for ms in entry["latency_ms"].values()) and set(entry["latency_ms"]) == {"64", "640"}
    assert detail["onnx"]["file"] == "models/export/model.onnx" and detail["source"] == WEIGHTS
    graph = onnx.load(out / "model.onnx")
    assert [d.dim_param or d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim] == ["batch", 3, "height", "width"]
    assert detail["onnx"]["opset"] == graph.opset_import[0].version
    assert deploy["models"] == {"onnx": "model.onnx", "openvino": "model_openvino_model/model.xml"}
    assert deploy["test_metrics"]["mAP50"] == results["pytorch_map50"] and deploy["source_stage"] == MODEL
    assert deploy["calibration"] is None and set(deploy["thresholds"].values()) == {0.25}
    if not torch.cuda.is_available():
        assert results["engine_skipped"] == export.NO_CUDA


@pytest.mark.slow  # trains a model, exports
def test_a_perturbed_export_fails_the_stage_naming_format_and_figures(package, monkeypatch):
    """A faulty graph simplifier (onnxslim, inside Ultralytics' ONNX export) lifts every class logit by 0.5: a real
    perturbed model.onnx reaches the gate, which fails the stage; OpenVINO (exported from PyTorch) passes it."""
    import onnxslim

    real_slim = onnxslim.slim

    def faulty_slim(model, *args, **kwargs):
        model = real_slim(model, *args, **kwargs)
        biases = [t for t in model.graph.initializer if ".cv3." in t.name and t.name.endswith("bias")]
        assert biases, "no class-branch biases in the ONNX graph"
        for tensor in biases:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) + np.float32(0.5), tensor.name))
        return model

    monkeypatch.setattr(onnxslim, "slim", faulty_slim)
    workspace, _ = package
    identity = {
        "model": MODEL,
        "method": "identity",
        "classes": {"blue_cone": {"x": [0, 1], "y": [0, 1]}},
        "thresholds": {"blue_cone": 0.4},
    }
    (workspace / "calibration.json").write_text(json.dumps(identity))
    with pytest.raises(UserError, match=r"parity gate failed") as failed:
        run_export(workspace, out="models/perturbed", calibration=workspace / "calibration.json", formats=["onnx", "openvino"])
    message = str(failed.value)
    assert "onnx: " in message and "openvino" not in message.replace("see models/export/parity.json", "")
    assert re.search(r"onnx: .*max \|Δconf\| 0\.\d+ > 0\.02", message) and "export.parity.min_matched" in message
    detail = json.loads((workspace / "models/perturbed/parity.json").read_text())
    assert detail["onnx"]["max_conf_delta"] > 0.02 and detail["openvino"]["max_conf_delta"] <= 0.02
    deploy = json.loads((workspace / "models/perturbed/deploy.yaml").read_text())  # written before the gate ran
    assert deploy["calibration"]["method"] == "identity" and deploy["thresholds"]["blue_cone"] == 0.4


@pytest.mark.slow  # trains a model
def test_static_onnx_gets_a_second_export_for_640(package):
    workspace, _ = package
    results = run_export(workspace, out="models/static", formats=["onnx"], dynamic=False, simplify=False, opset=17)
    graph = onnx.load(workspace / "models/static/model.onnx")
    assert [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 64, 64]
    assert json.loads((workspace / "models/static/parity.json").read_text())["onnx"]["opset"] == 17 and "engine_skipped" not in results
    assert results["onnx_matched"] >= 0.99 and {"onnx_latency_ratio_64", "onnx_latency_ratio_640"} <= set(results)


def test_gate_counts_the_union_and_tolerates_the_floor():
    """compare(): pairs by class and IoU >= 0.9; a partner just under `conf` still pairs; unpaired ones above it count."""
    box = np.array([[10.0, 10, 50, 50]])
    ref = {"class_id": np.array([0, 1, 2]), "raw_conf": np.array([0.9, 0.26, 0.8]), "box": np.concatenate([box, box + 100, box + 200])}
    exp = {
        "class_id": np.array([0, 1, 1]),
        "raw_conf": np.array([0.88, 0.245, 0.7]),
        "box": np.concatenate([box + 1, box + 100, box + 200]),
    }
    figures = parity.compare([ref], [exp], conf=0.25)
    # pairs: class 0 (IoU 0.9 with a 1 px shift of a 40 px box? 39*39/(41*41) = 0.905) and class 1 (0.26 vs 0.245);
    # the class-2 box has a class-1 partner: both unpaired, both above 0.25
    assert figures == {"detections": 4, "matched": 0.5, "max_conf_delta": 0.02, "only_pytorch": 1, "only_export": 1}
    spec = parse(export_params()).export.parity
    assert parity.failures("onnx", {**figures, "map50_delta": -0.02}, spec, int8=False) == [
        (
            "onnx: matched 50.00% < 99% of 4 detections (1 only in PyTorch, 1 only in onnx); test mAP50 -2.00 pt vs PyTorch, "
            "more than the 0.5 pt allowed (thresholds: export.parity.min_matched / max_conf_delta / max_map50_drop in params.yaml)"
        )
    ]
    assert parity.compare([ref], [ref], conf=0.25)["matched"] == 1.0


def test_export_params_are_validated():
    with pytest.raises(UserError, match=r"`export.opset` is 7; use null"):
        parse(export_params(opset=7))
    with pytest.raises(UserError, match=r"`export.dynamic` must be true or false"):
        parse(export_params(dynamic="yes"))
    with pytest.raises(UserError, match=r"`export.opset` is 99; the installed onnx supports up to"):
        export.run(parse(export_params(opset=99)), None, None, None, None)
    assert parse(export_params(parity={"int8_max_map50_drop": 0.02})).export.parity.int8_max_map50_drop == 0.02
