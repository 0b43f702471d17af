"""End to end: the real `dvc repro` on shrunk params in a temp copy of the repo."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import copy_repo, repo_params, shrink
from stagetrain.tools.diff import flatten
from stagetrain.train import checkpoint

pytestmark = pytest.mark.slow
STAGES = ("stage1", "stage2", "stage3", "baseline")
# what a change to stage3's block reruns: mine@ and trainset@stage3 depend on the whole block (`replay:`,
# `hard_negatives:` are optional) and rerun in seconds; the rest is downstream of train@stage3
STAGE3_AND_DOWNSTREAM = ["calibrate", "evaluate", "export", "mine@stage3", "plots", "select@round1", "train@stage3", "trainset@stage3"]


def dvc(repo: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def ran(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """The repo copied to a temp dir, params shrunk, pipeline reproduced once."""
    root = copy_repo(tmp_path_factory.mktemp("repo"))
    (root / "params.yaml").write_text(yaml.safe_dump(shrink(repo_params()), sort_keys=False))
    subprocess.run(["git", "-c", "user.email=t@e", "-c", "user.name=t", "commit", "-qam", "shrink"], cwd=root, check=True)
    output = dvc(root, "repro")
    assert set(ran(output)) == {
        "download@source",
        "download@target",
        "organize@source",
        "organize@target",
        "base",
        *(f"mine@{s}" for s in STAGES),  # without `hard_negatives` a constant file, no model loaded
        *(f"trainset@{s}" for s in STAGES),
        *(f"train@{s}" for s in STAGES),
        "select@round1",
        "calibrate",
        "evaluate",
        "export",
        "plots",
    }
    return root


def test_every_output_exists_and_parses(repo):
    cfg_classes = repo_params()["classes"]
    for dataset in ("source", "target"):
        organized = repo / "data/organized" / dataset
        data = yaml.safe_load((organized / "data.yaml").read_text())
        assert "path" not in data and list(data["names"].values()) == cfg_classes
        for split in ("train", "val", "test"):
            assert any((organized / "images" / split).iterdir()) and any((organized / "labels" / split).iterdir())
        assert json.loads((repo / "metrics/organize" / f"{dataset}.json").read_text())["skipped"] == []
    for stage in STAGES:
        for name in ("best.pt", "last.pt"):
            ckpt = checkpoint.read(repo / "models" / stage / name)
            assert list(checkpoint.model_of(ckpt).names.values()) == cfg_classes
            assert "date" not in ckpt and not os.path.isabs(ckpt["train_args"]["data"])
        args = yaml.safe_load((repo / "models" / stage / "args.yaml").read_text())
        assert args["optimizer"] == "SGD" and args["imgsz"] == 64 and args["epochs"] == 1
        metrics = json.loads((repo / "metrics" / f"{stage}.json").read_text())
        assert {"mAP50", "mAP50-95", "precision", "recall", "epochs_run", "resumed_from_epoch", "seconds"} <= set(metrics)
        assert metrics["epochs_run"] == 1 and metrics["resumed_from_epoch"] is None
        plots = repo / "metrics" / stage / "plots" / "metrics"
        assert (plots / "train" / "box_loss.tsv").exists() and (plots / "val" / "mAP50.tsv").exists()
    assert yaml.safe_load((repo / "models/stage2/args.yaml").read_text())["freeze"] == list(range(10))
    evaluation = json.loads((repo / "metrics/eval.json").read_text())
    assert set(evaluation) == {"stage3", "baseline", "forgetting", *repo_params()["evaluate"].get("ensembles", {})}
    matrix = evaluation["forgetting"]["datasets"]
    assert {"source", "target"} <= set(matrix) and matrix["source"]["models"]["stage3"]["reference"] == "stage1"
    assert set(evaluation["stage3"]["per_class"]) == set(cfg_classes)
    assert "## Verdict" in (repo / "metrics/report.md").read_text()
    export = json.loads((repo / "metrics/export.json").read_text())
    assert export["onnx_matched"] >= 0.99  # the parity gate passed (shrink exports onnx only: tests/test_export.py runs openvino)
    assert (repo / "models/export/model.onnx").exists() and (repo / "models/export/predict.py").exists()
    deploy = yaml.safe_load((repo / "models/export/deploy.yaml").read_text())
    assert deploy["classes"] == cfg_classes and deploy["calibration"]["model"] == "stage3"  # calibrate@ fed the package
    assert json.loads((repo / "models/export/parity.json").read_text())["onnx"]["max_abs_diff"] < 1e-3
    if not torch.cuda.is_available():
        assert "no CUDA device" in export["engine_skipped"]


def test_ultralytics_stayed_hermetic(repo):
    settings = json.loads((repo / ".ultralytics/Ultralytics/settings.json").read_text())
    assert settings["dvc"] is False and settings["sync"] is False
    assert not (repo / "dvclive").exists() and not (repo / "runs").exists()
    assert subprocess.run(["git", "diff", "--quiet", "dvc.yaml"], cwd=repo, check=False).returncode == 0  # not patched
    assert dvc(repo, "exp", "list", "--all-commits").strip() == ""


MAX_METRIC_COLUMNS = 40  # issue 12: `dvc metrics show` fits a screen


def test_metrics_show_is_a_row_per_stage_and_model_and_fits_a_screen(repo):
    shown = json.loads(dvc(repo, "metrics", "show", "--json"))[""]["data"]
    rows = {path: flatten(entry["data"]) for path, entry in shown.items()}
    models = [f"metrics/test/{name}.json" for name in ("stage3", "baseline")]
    assert {*(f"metrics/{stage}.json" for stage in STAGES), *models, "metrics/export.json"} <= set(rows)
    assert "metrics/eval.json" not in rows and not any(path.startswith("metrics/organize/") for path in rows)  # detail: plain outs
    columns = set().union(*rows.values())
    assert len(columns) <= MAX_METRIC_COLUMNS and not {"freeze_level", "frozen_layers"} & columns, sorted(columns)  # params echoes
    header = dvc(repo, "metrics", "show").splitlines()[0].split()
    assert header[0] == "Path" and len(header) == len(columns) + 1
    for stage in STAGES:
        assert {"mAP50", "mAP50-95", "precision", "recall", "epochs_run", "seconds", "train_images"} <= set(rows[f"metrics/{stage}.json"])
    evaluation = json.loads((repo / "metrics/eval.json").read_text())
    stage3, versus = rows["metrics/test/stage3.json"], evaluation["stage3"]["vs_baseline"]
    figures, interval = ("mAP50", "mAP50-95", "coco_mAP50-95"), ("diff", "ci_low", "ci_high")
    assert [stage3[k] for k in figures] == [evaluation["stage3"][k] for k in figures]
    assert [stage3[f"vs_baseline.{k}"] for k in interval] == [versus["map50_95"][k] for k in interval]
    assert stage3["vs_baseline.verdict"] == versus["verdict"]
    drop = evaluation["forgetting"]["datasets"]["source"]["models"]["stage3"]["drop_mAP50-95"]["diff"]
    assert stage3["drop_mAP50-95.source"] == drop and not any(k.startswith("vs_baseline") for k in rows["metrics/test/baseline.json"])


def test_report_embeds_its_charts(repo):
    report = (repo / "metrics/report.md").read_text()
    links = re.findall(r"!\[[^\]]+\]\(([^)]+)\)", report)
    assert links == ["report/schedule.png", "report/per_class.png", "report/forgetting.png"]
    for link in links:
        png = (repo / "metrics" / link).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    rows = json.loads((repo / "metrics/eval/forgetting.json").read_text())
    assert {(r["model"], r["dataset"]) for r in rows} == {(m, d) for m in ("stage3", "baseline") for d in ("source", "target")}


def test_second_repro_runs_nothing(repo):
    output = dvc(repo, "repro")
    assert ran(output) == []
    assert "Data and pipelines are up to date" in output


def test_stage3_param_change_reruns_only_downstream(repo):
    output = dvc(repo, "exp", "run", "-S", "stages.stage3.lr0=0.0002")
    assert sorted(ran(output)) == STAGE3_AND_DOWNSTREAM
    diff = dvc(repo, "params", "diff")
    assert "stages.stage3.lr0" in diff and "0.0002" in diff


def test_plots_show_draws_the_dashboard_offline(repo, tmp_path):
    dvc(repo, "plots", "show", "-o", str(tmp_path / "plots"))
    html = (tmp_path / "plots" / "index.html").read_text()
    charts = re.findall(r'<div id = "([^"]+)"', html)  # one per top-level definition, none per dvclive TSV
    assert charts == [next(iter(entry)) for entry in yaml.safe_load((repo / "dvc.yaml").read_text())["plots"]]
    assert not re.search(r"<script[^>]*\bsrc\s*=", html) and "vegaEmbed=" in html  # vega inline: draws offline
    schedule = json.loads((repo / "plots/data/schedule.json").read_text())
    assert {row["stage"] for row in schedule} == set(STAGES)
    assert next(r for r in schedule if r["stage"] == "stage2")["global_epoch"] == 2  # 1 epoch per stage when shrunk
    pr = json.loads((repo / "metrics/eval/pr/stage3.json").read_text())
    confusion = json.loads((repo / "metrics/eval/confusion/stage3.json").read_text())
    assert {"recall", "precision"} == set(pr[0]) and {"actual", "predicted"} == set(confusion[0])
    report = (repo / "metrics/report.md").read_text()
    assert "pycocotools mAP50-95" in report and "## Export of `stage3`" in report


def test_replay_experiment_adds_source_images_to_stage3(repo):
    """The README's replay experiment: a fraction of the source's train split joins stage3's training list."""
    output = dvc(repo, "exp", "run", "-S", "++stages.stage3.replay={source: 0.5}")
    assert sorted(ran(output)) == STAGE3_AND_DOWNSTREAM
    listed = (repo / "data/trainsets/stage3/train.txt").read_text().splitlines()
    replayed = [line for line in listed if line.startswith("./../../organized/source/images/train/")]
    metrics = json.loads((repo / "metrics/stage3.json").read_text())
    assert metrics["replayed_images"] == {"source": len(replayed)} and replayed and metrics["train_images"] == len(listed)
    assert "Data and pipelines are up to date" in dvc(repo, "repro")  # Ultralytics' labels cache under organized/ changes no hash


def test_a_changed_pool_retrains_nothing(repo):
    """The target's unlabelled pool changes (as when an imported annotation round takes its images out of it): the
    training lists and val splits stay the same, so no train@ stage reruns; selection and evaluation do."""
    pool = yaml.safe_load((repo / "params.yaml").read_text())["datasets"]["target"]["synthetic"]["pool"]
    output = dvc(repo, "exp", "run", "-S", f"datasets.target.synthetic.pool={pool + 3}")
    reran = set(ran(output))
    assert {"download@target", "organize@target", "select@round1", *(f"trainset@{s}" for s in STAGES)} <= reran
    assert not {stage for stage in reran if stage.startswith("train@")}, reran
    assert len(list((repo / "data/organized/target/images/pool").iterdir())) == pool + 3
