"""`make repro-check` and the repo copies it shares with the tests: the comparison names stage, file and
first differing value, it can fail, it compares only the stages it ran, and it runs on non-synthetic data."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import REPO, copy_repo
from fake_roboflow import FakeRoboflow, export_zip
from stagetrain.tools import diff, repo, repro_check

NOISE = "    (args.out / 'noise.txt').write_text(__import__('os').urandom(8).hex())  # deliberately nondeterministic\n"


def test_json_compares_every_value_but_timings(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(
        json.dumps({"mAP50": 0.5, "seconds": 10.0, "onnx": {"latency_ms": {"64": 1.0}, "bytes": 7}, "s3": {"inference_ms_per_image": 2}})
    )
    b.write_text(
        json.dumps({"mAP50": 0.5, "seconds": 12.0, "onnx": {"latency_ms": {"64": 3.0}, "bytes": 7}, "s3": {"inference_ms_per_image": 4}})
    )
    found = diff.diff_json(a, b, "metrics/x.json")
    assert found.first is None and found.excluded == ["seconds", "onnx.latency_ms.64", "s3.inference_ms_per_image"]
    b.write_text(json.dumps({"mAP50": 0.6, "seconds": 12.0, "onnx": {"latency_ms": {"64": 3.0}, "bytes": 8}}))
    assert diff.diff_json(a, b, "metrics/x.json").first == "mAP50: 0.5 vs 0.6"
    # export.json's flat keys (issue 12): a latency ratio is a timing too; the parity figures beside it are not
    a.write_text(json.dumps({"onnx_matched": 1.0, "onnx_latency_ratio_640": 0.5}))
    b.write_text(json.dumps({"onnx_matched": 0.98, "onnx_latency_ratio_640": 0.7}))
    flat = diff.diff_json(a, b, "metrics/export.json")
    assert flat.excluded == ["onnx_latency_ratio_640"] and flat.first == "onnx_matched: 1.0 vs 0.98"


def test_markdown_tables_lose_only_their_timing_columns(tmp_path):
    a, b = tmp_path / "a.md", tmp_path / "b.md"
    a.write_text("# r\n\n| stage | mAP50 | seconds |\n| --- | --- | --- |\n| s1 | 0.500 | 12.3 |\n")
    b.write_text("# r\n\n| stage | mAP50 | seconds |\n| --- | --- | --- |\n| s1 | 0.500 | 15.0 |\n")
    assert diff.diff_text(a, b, "r.md").first is None
    b.write_text("# r\n\n| stage | mAP50 | seconds |\n| --- | --- | --- |\n| s1 | 0.600 | 15.0 |\n")
    found = diff.diff_text(a, b, "r.md")
    assert found.first.startswith("line 5:") and "0.500" in found.first and found.excluded == ["column 'seconds'"]


def test_a_size_column_is_excused_only_in_the_row_of_a_known_exception(tmp_path):
    a, b = tmp_path / "a.md", tmp_path / "b.md"
    a.write_text("| format | file | MB |\n| --- | --- | --- |\n| onnx | `m.onnx` | 12.4 |\n| pt | `m.pt` | 6.1 |\n")
    b.write_text("| format | file | MB |\n| --- | --- | --- |\n| onnx | `m.onnx` | 12.5 |\n| pt | `m.pt` | 6.1 |\n")
    assert diff.diff_text(a, b, "r.md", frozenset({"m.onnx"})).first is None
    assert diff.diff_text(a, b, "r.md").first.startswith("line 3:")
    b.write_text("| format | file | MB |\n| --- | --- | --- |\n| onnx | `m.onnx` | 12.5 |\n| pt | `m.pt` | 6.2 |\n")
    assert diff.diff_text(a, b, "r.md", frozenset({"m.onnx"})).first.startswith("line 4:")


def test_checkpoints_name_the_first_differing_tensor_element(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1))
    torch.save({"epoch": 1, "model": model}, tmp_path / "a.pt")
    with torch.no_grad():
        model[0].weight[1, 0, 0, 0] += 1
    torch.save({"epoch": 1, "model": model}, tmp_path / "b.pt")
    first = diff.diff_checkpoint(tmp_path / "a.pt", tmp_path / "b.pt", "best.pt").first
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
    same = diff.diff_onnx(a, b, "model.onnx")
    assert same.first is None and [k.split(":")[0] for k in same.known] == ["metadata_props 'date'", "graph.value_info"]
    assert diff.diff_onnx(a, c, "model.onnx").first == "initializer w[0, 0]: 1.0 vs 1.5"


def test_the_size_of_a_known_exception_is_excused_only_for_that_file(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"onnx": {"file": "models/export/model.onnx", "bytes": 10}}))
    b.write_text(json.dumps({"onnx": {"file": "models/export/model.onnx", "bytes": 12}}))
    assert diff.diff_json(a, b, "e.json", frozenset({"models/export/model.onnx"})).first is None
    assert diff.diff_json(a, b, "e.json").first == "onnx.bytes: 10 vs 12"


def test_check_catches_a_nondeterministic_stage(tmp_path):
    """A download stage that writes a random file: the check fails and names stage, file and value."""
    source = copy_repo(tmp_path / "source")
    stage = source / "stages/download.py"
    code = stage.read_text()
    anchor = '    print(f"download@{args.dataset}: {summary}")\n'
    assert anchor in code
    stage.write_text(code.replace(anchor, NOISE + anchor))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "stagetrain.tools.repro_check",
            "download@target",
            "--source",
            str(source),
            "--workdir",
            str(tmp_path / "work"),
        ],
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
    result = repro_check.check(tmp_path, targets=["organize@target"])
    assert result.differences == [] and result.stages[-1] == "organize@target", repro_check.report(result)
    # organize's report is a plain output now (issue 12: no metrics from organize): compared by hash, like the data
    assert result.outputs >= 4 and result.metric_values == 0, repro_check.report(result)


def test_a_metrics_folder_is_compared_file_by_file(tmp_path):
    """evaluate declares metrics/test (one file per model): each JSON file in it is a metric file of the stage."""
    (tmp_path / "metrics/test").mkdir(parents=True)
    for name in ("stage3", "baseline"):
        (tmp_path / f"metrics/test/{name}.json").write_text(json.dumps({"mAP50": 0.5}))
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  evaluate:\n    cmd: 'true'\n    metrics:\n      - metrics/test\n      - metrics/x.json\n"
    )
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    found = repro_check.metric_files(tmp_path)
    assert found == {"metrics/test/baseline.json": "evaluate", "metrics/test/stage3.json": "evaluate", "metrics/x.json": "evaluate"}


# ---- a checkout that has run the pipeline: its dvc.lock stays behind -----------------------------

KEY = "rfKeyReproCheck0123"  # the fake Roboflow server's only key
ROBOFLOW = {"kind": "roboflow", "roboflow": {"workspace": "fsb", "project": "cones", "version": 1}, "class_map": {}}


def _commit(root, message: str) -> None:
    subprocess.run([*repo.GIT, "add", "-A"], cwd=root, check=True)
    subprocess.run([*repo.GIT, "commit", "-qm", message], cwd=root, check=True)


def _after_a_run(root) -> None:
    """What a full `dvc repro` leaves in a checkout: a dvc.lock naming every stage, and (git-ignored) outputs."""
    outs = {"download@target": ["data/raw/target"], "train@stage1": ["models/stage1/best.pt", "metrics/stage1.json"]}
    stages = {
        stage: {
            "cmd": "python stages/x.py",
            "outs": [{"path": p, "hash": "md5", "md5": f"{i + 1:032x}", "size": 1} for i, p in enumerate(paths)],
        }
        for stage, paths in outs.items()
    }
    (root / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": stages}, sort_keys=False))
    (root / "metrics").mkdir(exist_ok=True)
    (root / "metrics/stage1.json").write_text(json.dumps({"mAP50": 0.7, "seconds": 200.0}))


@pytest.mark.parametrize("committed", [False, True], ids=["untracked-lock", "committed-lock"])
def test_copies_leave_the_lock_behind_and_bring_dvc_tracked_data(tmp_path, committed):
    """A copy is a clone plus `dvc pull`: no dvc.lock (tracked or not), the data `dvc add` tracks linked in, still ignored."""
    source = copy_repo(tmp_path / "source")
    _after_a_run(source)
    (source / "weights/teacher.pt").write_bytes(b"pretrained")
    (source / "weights/teacher.pt.dvc").write_text(
        "outs:\n- md5: 0123456789abcdef0123456789abcdef\n  size: 10\n  hash: md5\n  path: teacher.pt\n"
    )
    (source / "weights/.gitignore").write_text("/teacher.pt\n")
    if committed:
        _commit(source, "a run")
    copied = copy_repo(tmp_path / "copy", source)
    assert not (copied / "dvc.lock").exists() and not (copied / "metrics").exists()
    assert (copied / "weights/teacher.pt").read_bytes() == b"pretrained"
    tracked = subprocess.run(["git", "ls-files"], cwd=copied, capture_output=True, text=True, check=True).stdout.split()
    assert "weights/teacher.pt.dvc" in tracked and "weights/teacher.pt" not in tracked and "dvc.lock" not in tracked


def test_check_compares_only_the_stages_it_ran(tmp_path, capsys):
    """Issue 10: after `make run`, `check(targets=...)` compared the metric files of stages it never ran."""
    source = copy_repo(tmp_path / "source")
    _after_a_run(source)
    result = repro_check.check(tmp_path / "work", source, targets=["download@target"])
    assert result.differences == [] and result.stages == ["download@target"] and result.outputs == 1, repro_check.report(result)
    assert "stages: download@target\n" in repro_check.report(result)


# ---- datasets shrink cannot shrink ----------------------------------------------------------------


def test_shrink_keeps_local_and_roboflow_datasets_and_shrinks_training(params):
    raw = repo.repo_params()
    raw["datasets"]["source"] = {"kind": "local", "local": {"path": "/mnt/fsoco.zip"}, "class_map": {}}
    raw["datasets"]["target"] = ROBOFLOW
    raw["stages"]["stage2"].update(batch=64, device=0)
    shrunk = repo.shrink(raw)
    assert shrunk["datasets"] == raw["datasets"]
    assert repo.full_size_datasets(shrunk) == {"source": "local", "target": "roboflow"}
    assert shrunk["model"]["imgsz"] == 64 and shrunk["train"]["batch"] == 8 and shrunk["train"]["device"] == "cpu"
    assert {s["epochs"] for s in shrunk["stages"].values()} == {1} and "batch" not in shrunk["stages"]["stage2"]
    assert repo.full_size_datasets(params) == {}


def _source_with(tmp_path, dataset: str, spec: dict):
    """A source checkout whose ``dataset`` is ``spec``; a git-ignored ``external/cones.zip`` beside it."""
    source = copy_repo(tmp_path / "source")
    (source / "external").mkdir()
    (source / "external/cones.zip").write_bytes(export_zip())
    (source / ".gitignore").write_text((source / ".gitignore").read_text() + "/external/\n")
    params = repo.repo_params(source)
    params["datasets"][dataset] = spec
    (source / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _commit(source, f"{dataset}: {spec['kind']}")
    return source


def test_check_reads_a_local_dataset_where_it_is(tmp_path, capsys):
    """A relative `local.path` the copies lack (git-ignored) is read from the source checkout, at full size."""
    source = _source_with(tmp_path, "target", {"kind": "local", "local": {"path": "external/cones.zip"}, "class_map": {}})
    result = repro_check.check(tmp_path / "work", source, targets=["download@target"])
    assert result.differences == [] and result.stages == ["download@target"], repro_check.report(result)
    zip_path = source.resolve() / "external/cones.zip"
    assert f"dataset `target` (kind: local) is used at full size, read from {zip_path}: only synthetic" in capsys.readouterr().out
    assert len(list((tmp_path / "work/run1/data/raw/target").glob("*/images/*.jpg"))) == 6  # the whole zip: 3 train, 2 valid, 1 test


def test_roboflow_without_a_key_is_refused_before_any_run(tmp_path, monkeypatch, capsys):
    source = _source_with(tmp_path, "source", ROBOFLOW)
    monkeypatch.delenv("ROBOFLOW_API_KEY", raising=False)
    assert repro_check.preflight(repo.shrunk_copy(tmp_path / "snapshot", source), ["base"]) == []  # base reads no data
    code = repro_check.main(["organize@target", "--source", str(source), "--workdir", str(tmp_path / "work")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and not (tmp_path / "work").exists()
    assert "dataset `source` is `kind: roboflow`" in err and "ROBOFLOW_API_KEY" in err and "`kind: local`" in err


def test_check_downloads_a_roboflow_dataset_in_each_run(tmp_path, monkeypatch, capsys):
    source = _source_with(tmp_path, "target", ROBOFLOW)
    (tmp_path / "home").mkdir()
    for name, value in {"ROBOFLOW_API_KEY": KEY, "HOME": str(tmp_path / "home"), "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}.items():
        monkeypatch.setenv(name, value)
    with FakeRoboflow(KEY) as server:
        monkeypatch.setenv("API_URL", server.url)
        result = repro_check.check(tmp_path / "work", source, targets=["download@target"])
    assert result.differences == [] and result.stages == ["download@target"], repro_check.report(result)
    assert sum(path.startswith("/signed/export.zip") for _, path in server.requests) == 2
    assert "dataset `target` (kind: roboflow) is used at full size, downloaded from Roboflow in each run" in capsys.readouterr().out
