"""`make repro-check`: the comparison names stage, file and first differing value, and it can fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from conftest import REPO, copy_repo

from stagetrain import repro

NOISE = "    (args.out / 'noise.txt').write_text(__import__('os').urandom(8).hex())  # deliberately nondeterministic\n"


def test_json_compares_every_value_but_timings(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(
        json.dumps({"mAP50": 0.5, "seconds": 10.0, "onnx": {"latency_ms": {"64": 1.0}, "bytes": 7}, "s3": {"inference_ms_per_image": 2}})
    )
    b.write_text(
        json.dumps({"mAP50": 0.5, "seconds": 12.0, "onnx": {"latency_ms": {"64": 3.0}, "bytes": 7}, "s3": {"inference_ms_per_image": 4}})
    )
    diff = repro.diff_json(a, b, "metrics/x.json")
    assert diff.first is None and diff.excluded == ["seconds", "onnx.latency_ms.64", "s3.inference_ms_per_image"]
    b.write_text(json.dumps({"mAP50": 0.6, "seconds": 12.0, "onnx": {"latency_ms": {"64": 3.0}, "bytes": 8}}))
    assert repro.diff_json(a, b, "metrics/x.json").first == "mAP50: 0.5 vs 0.6"


def test_markdown_tables_lose_only_their_timing_columns(tmp_path):
    a, b = tmp_path / "a.md", tmp_path / "b.md"
    a.write_text("# r\n\n| stage | mAP50 | seconds |\n| --- | --- | --- |\n| s1 | 0.500 | 12.3 |\n")
    b.write_text("# r\n\n| stage | mAP50 | seconds |\n| --- | --- | --- |\n| s1 | 0.500 | 15.0 |\n")
    assert repro.diff_text(a, b, "r.md").first is None
    b.write_text("# r\n\n| stage | mAP50 | seconds |\n| --- | --- | --- |\n| s1 | 0.600 | 15.0 |\n")
    diff = repro.diff_text(a, b, "r.md")
    assert diff.first.startswith("line 5:") and "0.500" in diff.first and diff.excluded == ["column 'seconds'"]


def test_a_size_column_is_excused_only_in_the_row_of_a_known_exception(tmp_path):
    a, b = tmp_path / "a.md", tmp_path / "b.md"
    a.write_text("| format | file | MB |\n| --- | --- | --- |\n| onnx | `m.onnx` | 12.4 |\n| pt | `m.pt` | 6.1 |\n")
    b.write_text("| format | file | MB |\n| --- | --- | --- |\n| onnx | `m.onnx` | 12.5 |\n| pt | `m.pt` | 6.1 |\n")
    assert repro.diff_text(a, b, "r.md", frozenset({"m.onnx"})).first is None
    assert repro.diff_text(a, b, "r.md").first.startswith("line 3:")
    b.write_text("| format | file | MB |\n| --- | --- | --- |\n| onnx | `m.onnx` | 12.5 |\n| pt | `m.pt` | 6.2 |\n")
    assert repro.diff_text(a, b, "r.md", frozenset({"m.onnx"})).first.startswith("line 4:")


def test_checkpoints_name_the_first_differing_tensor_element(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1))
    torch.save({"epoch": 1, "model": model}, tmp_path / "a.pt")
    with torch.no_grad():
        model[0].weight[1, 0, 0, 0] += 1
    torch.save({"epoch": 1, "model": model}, tmp_path / "b.pt")
    first = repro.diff_checkpoint(tmp_path / "a.pt", tmp_path / "b.pt", "best.pt").first
    assert first.startswith("model.0.weight[1, 0, 0, 0]: ")


def _onnx(path, weight: float, date: str, annotated: bool) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 2]) for n in ("x", "y"))
    w = numpy_helper.from_array(np.full((2, 2), weight, dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [w])
    if annotated:
        graph.value_info.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [2, 2]))
    model = helper.make_model(graph)
    helper.set_model_props(model, {"date": date, "stride": "32"})
    onnx.save(model, str(path))


def test_onnx_known_exceptions_are_narrow(tmp_path):
    """Export date and shape annotations are named and left out; a changed weight is still caught."""
    a, b, c = (tmp_path / f"{n}.onnx" for n in "abc")
    _onnx(a, 1.0, "2026-01-01", annotated=False)
    _onnx(b, 1.0, "2026-01-02", annotated=True)
    _onnx(c, 1.5, "2026-01-01", annotated=False)
    same = repro.diff_onnx(a, b, "model.onnx")
    assert same.first is None and [k.split(":")[0] for k in same.known] == ["metadata_props 'date'", "graph.value_info"]
    assert repro.diff_onnx(a, c, "model.onnx").first == "initializer w[0, 0]: 1.0 vs 1.5"


def test_the_size_of_a_known_exception_is_excused_only_for_that_file(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"onnx": {"file": "models/export/model.onnx", "bytes": 10}}))
    b.write_text(json.dumps({"onnx": {"file": "models/export/model.onnx", "bytes": 12}}))
    assert repro.diff_json(a, b, "e.json", frozenset({"models/export/model.onnx"})).first is None
    assert repro.diff_json(a, b, "e.json").first == "onnx.bytes: 10 vs 12"


def test_check_catches_a_nondeterministic_stage(tmp_path):
    """A download stage that writes a random file: the check fails and names stage, file and value."""
    source = copy_repo(tmp_path / "source")
    stage = source / "stages/download.py"
    code = stage.read_text()
    anchor = '    print(f"download@{args.dataset}: {summary}")\n'
    assert anchor in code
    stage.write_text(code.replace(anchor, NOISE + anchor))
    proc = subprocess.run(
        [sys.executable, "-m", "stagetrain.repro", "download@target", "--source", str(source), "--workdir", str(tmp_path / "work")],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "NOT REPRODUCIBLE: 1 difference(s)" in proc.stdout
    assert "download@target: data/raw/target/noise.txt: line 1: '" in proc.stdout


def test_check_passes_on_the_unchanged_data_stages(tmp_path, capsys):
    result = repro.check(tmp_path, targets=["organize@target"])
    assert result.differences == [] and result.outputs >= 3 and result.metric_values > 0, repro.report(result)
