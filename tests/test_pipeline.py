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
from stagetrain.train import checkpoint

pytestmark = pytest.mark.slow
STAGES = ("stage1", "stage2", "stage3", "baseline")


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
        *(f"trainset@{s}" for s in STAGES),
        *(f"train@{s}" for s in STAGES),
        "evaluate",
        "export",
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
    assert set(evaluation) == {"stage3", "baseline", "forgetting"}
    matrix = evaluation["forgetting"]["datasets"]
    assert {"source", "target"} <= set(matrix) and matrix["source"]["models"]["stage3"]["reference"] == "stage1"
    assert set(evaluation["stage3"]["per_class"]) == set(cfg_classes)
    assert "## Verdict" in (repo / "metrics/report.md").read_text()
    export = json.loads((repo / "metrics/export.json").read_text())
    assert (repo / "models/export/model.onnx").stat().st_size == export["onnx"]["bytes"]
    assert export["onnx"]["max_abs_diff"] < 1e-3
    if not torch.cuda.is_available():
        assert "no CUDA device" in export["engine"]["skipped"]


def test_ultralytics_stayed_hermetic(repo):
    settings = json.loads((repo / ".ultralytics/Ultralytics/settings.json").read_text())
    assert settings["dvc"] is False and settings["sync"] is False
    assert not (repo / "dvclive").exists() and not (repo / "runs").exists()
    assert subprocess.run(["git", "diff", "--quiet", "dvc.yaml"], cwd=repo, check=False).returncode == 0  # not patched
    assert dvc(repo, "exp", "list", "--all-commits").strip() == ""


def test_metrics_show_lists_every_stage(repo):
    shown = dvc(repo, "metrics", "show", "--json")
    for name in (*STAGES, "eval", "export"):
        assert f"metrics/{name}.json" in shown


def test_second_repro_runs_nothing(repo):
    output = dvc(repo, "repro")
    assert ran(output) == []
    assert "Data and pipelines are up to date" in output


def test_stage3_param_change_reruns_only_downstream(repo):
    output = dvc(repo, "exp", "run", "-S", "stages.stage3.lr0=0.0002")
    # trainset@stage3 depends on the whole stage block (`replay:` is optional): it reruns in seconds, its list unchanged
    assert sorted(ran(output)) == ["evaluate", "export", "train@stage3", "trainset@stage3"]
    diff = dvc(repo, "params", "diff")
    assert "stages.stage3.lr0" in diff and "0.0002" in diff


def test_plots_show_draws_every_stage_and_the_eval_plots(repo, tmp_path):
    dvc(repo, "plots", "show", "-o", str(tmp_path / "plots"))
    html = (tmp_path / "plots" / "index.html").read_text()

    def drawn(path: str) -> bool:  # DVC names each plot's <div> after its file, `/` and `.` made `_`
        return f"#{path.replace('/', '_').replace('.', '_')}'" in html  # vegaEmbed('#<id>', spec)

    assert all(drawn(f"metrics/{stage}/plots/metrics/val/mAP50.tsv") for stage in STAGES)
    assert all(drawn(f"metrics/eval/{kind}/{model}.json") for kind in ("pr", "confusion") for model in ("stage3", "baseline"))
    pr = json.loads((repo / "metrics/eval/pr/stage3.json").read_text())
    confusion = json.loads((repo / "metrics/eval/confusion/stage3.json").read_text())
    assert {"recall", "precision"} == set(pr[0]) and {"actual", "predicted"} == set(confusion[0])
    report = (repo / "metrics/report.md").read_text()
    assert "pycocotools mAP50-95" in report and "## Export of `stage3`" in report


def test_replay_experiment_adds_source_images_to_stage3(repo):
    """The README's replay experiment: a fraction of the source's train split joins stage3's training list."""
    output = dvc(repo, "exp", "run", "-S", "++stages.stage3.replay={source: 0.5}")
    assert sorted(ran(output)) == ["evaluate", "export", "train@stage3", "trainset@stage3"]
    listed = (repo / "data/trainsets/stage3/train.txt").read_text().splitlines()
    replayed = [line for line in listed if line.startswith("./../../organized/source/images/train/")]
    metrics = json.loads((repo / "metrics/stage3.json").read_text())
    assert metrics["replayed_images"] == {"source": len(replayed)} and replayed and metrics["train_images"] == len(listed)
    assert "Data and pipelines are up to date" in dvc(repo, "repro")  # Ultralytics' labels cache under organized/ changes no hash
