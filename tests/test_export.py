"""export on a real (tiny) checkpoint: ONNX beside nothing else, parity with PyTorch, latency, engine skipped on CPU."""

from __future__ import annotations

import json

import onnx
import pytest
import torch

from conftest import repo_params, shrink
from stagetrain import export
from stagetrain.config import parse
from stagetrain.errors import UserError
from test_evaluate import MODEL, trained_workspace
from test_train import offline  # noqa: F401  (fixture: any non-loopback connection fails the test)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return trained_workspace(tmp_path_factory.getbasetemp() / "trained")


def export_params(**export_keys) -> dict:
    params = shrink(repo_params())
    params["export"].update(model=MODEL, **export_keys)
    return params


def run_export(workspace, monkeypatch, **export_keys) -> dict:
    monkeypatch.chdir(workspace)  # as under DVC: paths relative to the repo root
    cfg = parse(export_params(**export_keys))
    return export.run(
        cfg,
        workspace / "models" / MODEL / "best.pt",
        workspace / "organized/data.yaml",
        workspace / "models/export",
        workspace / "work_export",
        latency_runs=1,
    )


@pytest.mark.slow  # trains a model
def test_onnx_export_parity_latency_and_portable_record(workspace, monkeypatch, offline):  # noqa: F811
    results = run_export(workspace, monkeypatch)
    assert offline == []  # Ultralytics' export and ONNX validation neither download nor pip-install
    onnx_entry = results["onnx"]
    assert onnx_entry["file"] == "models/export/model.onnx" and results["source"] == f"models/{MODEL}/best.pt"
    assert (workspace / onnx_entry["file"]).stat().st_size == onnx_entry["bytes"]
    assert sorted(p.name for p in (workspace / "models" / MODEL).iterdir()) == ["best.pt"]  # nothing written beside the weights
    assert not (workspace / "work_export").exists()
    assert str(workspace) not in json.dumps(results)

    assert onnx_entry["max_abs_diff"] < 1e-3 and abs(onnx_entry["mAP50_diff"]) <= 0.005
    graph = onnx.load(workspace / onnx_entry["file"])
    assert [d.dim_param or d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim] == ["batch", 3, "height", "width"]
    assert onnx_entry["opset"] == graph.opset_import[0].version and onnx_entry["dynamic"] is True
    for entry in (results["pytorch"], onnx_entry):
        assert set(entry["latency_ms"]) == {"64", "640"} and all(ms > 0 for ms in entry["latency_ms"].values())
    assert set(onnx_entry["latency_ratio"]) == {"64", "640"}
    if not torch.cuda.is_available():
        assert results["engine"] == {"skipped": export.NO_CUDA}


@pytest.mark.slow  # trains a model
def test_static_onnx_gets_a_second_export_for_640(workspace, monkeypatch):
    results = run_export(workspace, monkeypatch, formats=["onnx"], dynamic=False, simplify=False, opset=17)
    graph = onnx.load(workspace / results["onnx"]["file"])
    assert [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 64, 64]
    assert results["onnx"]["opset"] == 17 and "engine" not in results
    assert results["onnx"]["max_abs_diff"] < 1e-3 and set(results["onnx"]["latency_ms"]) == {"64", "640"}
    assert sorted(p.name for p in (workspace / "models/export").iterdir()) == ["model.onnx"]


def test_export_params_are_validated():
    with pytest.raises(UserError, match=r"`export.opset` is 7; use null"):
        parse(export_params(opset=7))
    with pytest.raises(UserError, match=r"`export.dynamic` must be true or false"):
        parse(export_params(dynamic="yes"))
    with pytest.raises(UserError, match=r"`export.opset` is 99; the installed onnx supports up to"):
        export.run(parse(export_params(opset=99)), None, None, None, None)
