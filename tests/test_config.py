"""params.yaml validation: every user mistake is one clear ConfigError naming the key."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from conftest import REPO
from stagetrain.config import ConfigError, load, parse


def test_repo_params_are_valid():
    cfg = load(REPO / "params.yaml")
    assert list(cfg.stages) == ["stage1", "stage2", "stage3", "baseline"]
    assert cfg.stages["stage2"].upstream == "stage1"
    assert cfg.stages["stage2"].train_args["lr0"] == 0.001
    assert cfg.stages["stage2"].train_args["optimizer"] == "SGD"  # merged from `train`
    assert cfg.stages["stage2"].freeze_level == 1


def test_stage_keys_win_over_train_defaults(params):
    params["train"]["lr0"] = 0.05
    params["stages"]["stage1"]["lr0"] = 0.002
    cfg = parse(params)
    assert cfg.stages["stage1"].train_args["lr0"] == 0.002
    assert cfg.stages["baseline"].train_args["lr0"] == 0.01


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda p: p.update(sed=1), r"unknown key `sed`; did you mean `seed`\?"),
        (lambda p: p["stages"]["stage2"].update(lr=0.1), r"unknown key `stages.stage2.lr`; did you mean .*`lr0`"),
        (lambda p: p["stages"]["stage2"].update(freez_level=1), r"`stages.stage2.freez_level`; did you mean `freeze_level`\?"),
        (lambda p: p["model"].update(imgsize=64), r"unknown key `model.imgsize`; did you mean `imgsz`\?"),
        (lambda p: p["stages"]["stage2"].update(epochs="ten"), r"`stages.stage2.epochs` must be int, got str"),
        (lambda p: p.update(seed="0"), r"`seed` must be int, got str"),
        (lambda p: p["organize"].update(dedupe="yes"), r"`organize.dedupe` must be bool"),
        (lambda p: p["stages"]["stage2"].update({"from": "stage0"}), r"`stages.stage2.from` names no stage: 'stage0'; did you mean .*`stage1`"),
        (lambda p: p["stages"]["stage1"].update({"from": "stage3"}), r"cycle: stage1 -> stage3 -> stage2 -> stage1"),
        (lambda p: p["stages"]["stage2"].pop("dataset"), r"missing key `stages.stage2.dataset`"),
        (lambda p: p["stages"]["stage2"].update(dataset="tgt"), r"`stages.stage2.dataset` names no dataset: 'tgt'"),
        (lambda p: p["stages"]["stage2"].update(freeze_level=3), r"`stages.stage2.freeze_level` is 3"),
        (lambda p: p["stages"]["stage2"].update(freeze=[0, 1]), r"`stages.stage2.freeze` is set by the pipeline; use `freeze_level`"),
        (lambda p: p["train"].update(optimizer="auto"), r"`train.optimizer: auto` ignores lr0"),
        (lambda p: p["evaluate"].update(models=["stage3", "stage9"]), r"`evaluate.models` names no stage: 'stage9'"),
        (lambda p: p["datasets"]["source"].update(kind="kaggle"), r"`datasets.source.kind` is 'kaggle'"),
        (lambda p: p["datasets"]["source"]["synthetic"].update(domain="mars"), r"`datasets.source.synthetic.domain` is 'mars'"),
        (lambda p: p["organize"]["split"].update(train=0.9), r"`organize.split` needs train, val and test fractions"),
        (lambda p: p["stages"].update(base={"from": "base", "teacher": "base", "dataset": "source"}), r"`stages.base` is reserved"),
        (lambda p: p["stages"]["stage2"].pop("close_mosaic"), r"`stages.stage2.mosaic: 0.3` would never run.*set `stages.stage2.close_mosaic` below 1"),
    ],
)
def test_bad_params_name_the_key(params, edit, expected):
    edit(params)
    with pytest.raises(ConfigError, match=expected):
        parse(params)


def test_cli_prints_error_without_traceback(tmp_path, params):
    params["stages"]["stage2"]["lr"] = 0.1
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(params))
    proc = subprocess.run(
        [sys.executable, str(REPO / "stages" / "base.py"), "--params", str(bad), str(tmp_path / "best.pt")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "unknown key `stages.stage2.lr`; did you mean" in proc.stderr and "`lr0`" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "best.pt").exists()


def test_missing_params_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load(tmp_path / "nope.yaml")


def test_from_accepts_dvc_tracked_weights(tmp_path, params):
    params["stages"]["stage2"].update({"from": "coco", "teacher": "coco"})
    src = str(tmp_path / "params.yaml")
    with pytest.raises(ConfigError, match=r"`dvc add models/coco/best.pt`"):
        parse(params, src)
    (tmp_path / "models/coco").mkdir(parents=True)
    (tmp_path / "models/coco/best.pt.dvc").write_text("outs:\n- md5: 0\n  path: best.pt\n")
    assert parse(params, src).stages["stage2"].upstream == "coco"


def test_inits_add_starting_points_to_the_dag(tmp_path, params):
    from conftest import copy_repo

    params["model"]["inits"] = {"teacher_init": "yolov8s.yaml"}
    params["stages"]["teacher"] = {"from": "teacher_init", "teacher": "teacher_init", "dataset": "target", "epochs": 1}
    params["stages"]["stage3"].update(teacher="teacher", distill={"kind": "logit"})
    assert parse(params).stages["teacher"].upstream == "teacher_init"
    repo = copy_repo(tmp_path / "repo")
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dag = subprocess.run([sys.executable, "-m", "dvc", "dag", "train@teacher"], cwd=repo, capture_output=True, text=True, check=True).stdout
    assert "init@teacher_init" in dag and "train@teacher" in dag and "base" not in dag.replace("teacher", "")
    # a teacher is a DVC dependency of its student: the student's DAG holds the teacher's branch
    dag = subprocess.run([sys.executable, "-m", "dvc", "dag", "train@stage3"], cwd=repo, capture_output=True, text=True, check=True).stdout
    assert "train@teacher" in dag and "init@teacher_init" in dag
    params["model"]["inits"] = {"stage1": "yolov8s.yaml"}
    with pytest.raises(ConfigError, match=r"`model.inits.stage1` clashes with a stage"):
        parse(params)
