"""params.yaml validation: every user mistake is one clear UserError naming the key."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from conftest import REPO
from stagetrain.config import load, parse
from stagetrain.errors import UserError


def test_repo_params_are_valid():
    cfg = load(REPO / "params.yaml")
    assert list(cfg.stages) == ["stage1", "stage2", "stage3", "baseline"]
    assert cfg.stages["stage2"].upstream == "stage1"
    assert cfg.stages["stage2"].train_args["lr0"] == 0.001
    assert cfg.stages["stage2"].train_args["optimizer"] == "SGD"  # merged from `train`
    assert cfg.stages["stage2"].freeze_level == 1


def test_evaluate_margin_and_resamples_default_when_left_out(params):
    repo = load(REPO / "params.yaml").evaluate
    assert (repo.margin, repo.resamples) == (0.01, 1000)
    for key in ("margin", "resamples"):
        params["evaluate"].pop(key, None)
    left_out = parse(params).evaluate
    assert (left_out.margin, left_out.resamples) == (0.01, 1000)
    params["evaluate"].update(margin=0, resamples=100)  # an integer margin is a number; 0 = adopt on any significant gain
    assert isinstance(parse(params).evaluate.margin, float) and parse(params).evaluate.margin == 0.0


def test_forgetting_matrix_datasets_default_to_all(params):
    assert load(REPO / "params.yaml").evaluate.datasets == tuple(yaml.safe_load((REPO / "params.yaml").read_text())["datasets"])
    params["evaluate"].pop("datasets", None)
    params["evaluate"].pop("all_stages", None)
    left_out = parse(params).evaluate
    assert left_out.datasets == tuple(params["datasets"]) and left_out.all_stages is False
    params["evaluate"].update(datasets=["target"], all_stages=True)  # a list narrows the matrix
    assert (parse(params).evaluate.datasets, parse(params).evaluate.all_stages) == (("target",), True)


def test_near_duplicates_default_and_off(params):
    assert parse(params).organize.near_duplicates == 24  # params.yaml's default
    for off in (0, None):
        params["organize"]["near_duplicates"] = off
        assert parse(params).organize.near_duplicates == 0
    params["organize"].pop("near_duplicates")  # an older params.yaml without the key: exact dedupe only
    assert parse(params).organize.near_duplicates == 0


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
        (lambda p: p["stages"]["stage2"].update(epochs="ten"), r"`stages.stage2.epochs` must be an integer, got a string 'ten'"),
        (lambda p: p.update(seed="0"), r"`seed` must be an integer, got a string"),
        (lambda p: p["organize"].update(dedupe="yes"), r"`organize.dedupe` must be true or false"),
        (lambda p: p["organize"].update(near_duplicate=8), r"unknown key `organize.near_duplicate`; did you mean `near_duplicates`\?"),
        (lambda p: p["organize"].update(near_duplicates=True), r"`organize.near_duplicates` must be an integer, got true or false True"),
        (lambda p: p["organize"].update(near_duplicates=0.5), r"`organize.near_duplicates` must be an integer"),
        (lambda p: p["organize"].update(near_duplicates=-1), r"`organize.near_duplicates` is -1; use 0 \(off\) to 64 bits"),
        (lambda p: p["organize"].update(near_duplicates=100), r"`organize.near_duplicates` is 100; use 0 \(off\) to 64 bits"),
        (lambda p: p["organize"].update(dedupe=False), r"`organize.near_duplicates: 24` needs `organize.dedupe: true`"),
        (
            lambda p: p["stages"]["stage2"].update({"from": "stage0"}),
            r"`stages.stage2.from` names no stage: 'stage0'; did you mean .*`stage1`",
        ),
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
        (
            lambda p: p["stages"]["stage2"].pop("close_mosaic"),
            r"`stages.stage2.mosaic: 0.3` would never run.*set `stages.stage2.close_mosaic` below 1",
        ),
        # value ranges
        (lambda p: p["stages"]["stage2"].update(lr0=-0.001), r"`stages.stage2.lr0` is -0.001; use a value > 0 \(initial learning rate"),
        (lambda p: p["train"].update(lr0=0), r"`train.lr0` is 0; use a value > 0"),
        (lambda p: p["stages"]["stage2"].update(mixup=1.5), r"`stages.stage2.mixup` is 1.5; use a value in \[0, 1\]"),
        (lambda p: p["model"].update(imgsz=0), r"`model.imgsz` is 0; use a value >= 32"),
        (lambda p: p["model"].update(imgsz=100), r"`model.imgsz` is 100; Ultralytics would round it up to 128.*use 96 or 128"),
        (lambda p: p["stages"]["stage1"].update(epochs=0), r"`stages.stage1.epochs` is 0; use a value >= 1"),
        (lambda p: p["stages"]["stage1"].update(epochs=2.5), r"`stages.stage1.epochs` must be an integer, got a number 2.5"),
        (lambda p: p["train"].update(batch=0), r"`train.batch` is 0; use an integer >= 1, -1 \(AutoBatch\)"),
        (lambda p: p["train"].update(patience=-1), r"`train.patience` is -1; use a value >= 0"),
        (lambda p: p.update(seed=-1), r"`seed` is -1; use a value >= 0"),
        (lambda p: p["stages"]["stage3"].update(distill={"lambda": -1.0}), r"`stages.stage3.distill.lambda` is -1.0; use a value >= 0"),
        (
            lambda p: p["stages"]["stage3"].update(distill={"temperature": 0}),
            r"`stages.stage3.distill.temperature` is 0.0; use a value > 0",
        ),
        (lambda p: p["stages"]["stage3"].update(loss_weights={"box": -1}), r"`stages.stage3.loss_weights.box` is -1.0; use a value >= 0"),
        # classes and class maps
        (lambda p: p.update(classes=[]), r"`classes` is empty; list at least one"),
        (lambda p: p.update(classes=["a", "b", "a"]), r"`classes` repeats 'a'; list each once"),
        (lambda p: p.update(classes=["a", 3]), r"`classes\[1\]` must be a string, got an integer 3"),
        (lambda p: p.update(classes=["a", " b"]), r"`classes\[1\]` is ' b'; a class name is non-empty"),
        (
            lambda p: p["datasets"]["target"].update(class_map={"cone": "orange"}),
            r"`datasets.target.class_map.cone` maps to 'orange', which is not a canonical class.*did you mean `orange_cone`",
        ),
        (
            lambda p: p["datasets"]["target"].update(class_map={"cone": 3}),
            r"`datasets.target.class_map.cone` maps to 3, which is not a canonical class; use one of blue_cone",
        ),
        # names that are not stages, in any shape
        (lambda p: p["evaluate"].update(models=["stage3", {"baseline": 1}]), r"`evaluate.models\[1\]` must be a string, got a mapping"),
        (lambda p: p["evaluate"].update(models="stage3"), r"`evaluate.models` must be a list, got a string"),
        (lambda p: p["evaluate"].update(models=["stage3", "stage3"]), r"`evaluate.models` repeats 'stage3'"),
        (lambda p: p["export"].update(formats=["onnx", "tflite"]), r"`export.formats\[1\]` is 'tflite'; use one of onnx, openvino, engine"),
        (lambda p: p["export"].update(parity={"min_matchd": 0.9}), r"unknown key `export.parity.min_matchd`; did you mean `min_matched`"),
        (lambda p: p["export"].update(parity={"max_conf_delta": 2}), r"`export.parity.max_conf_delta` is 2.0; use a number from 0 to 1"),
        (lambda p: p["export"].update(parity={"int8_min_matched": "high"}), r"`export.parity.int8_min_matched` must be a number"),
        (lambda p: p["export"].update(parity=[0.99]), r"`export.parity` must be a mapping"),
        (lambda p: p["export"].update(conf=1.5), r"`export.conf` is 1.5; use a number from 0 to 1"),
        (lambda p: p["export"].update(iou="0.7"), r"`export.iou` must be a number"),
        (lambda p: p["evaluate"].update(split="tset"), r"`evaluate.split` is 'tset'; use one of train, val, test.*did you mean `test`"),
        # the verdict's margin and the bootstrap behind it
        (lambda p: p["evaluate"].update(margn=0.01), r"unknown key `evaluate.margn`; did you mean `margin`\?"),
        (lambda p: p["evaluate"].update(margin=-0.01), r"`evaluate.margin` is -0.01; use a value in \[0, 1\)"),
        (lambda p: p["evaluate"].update(margin=1), r"`evaluate.margin` is 1.0; use a value in \[0, 1\)"),
        (lambda p: p["evaluate"].update(margin="1pt"), r"`evaluate.margin` must be a number, got a string '1pt'"),
        (lambda p: p["evaluate"].update(margin=None), r"`evaluate.margin` must be a number, got null"),
        (lambda p: p["evaluate"].update(resamples=50), r"`evaluate.resamples` is 50; use a value >= 100 \(bootstrap resamples"),
        (lambda p: p["evaluate"].update(resamples=1000.0), r"`evaluate.resamples` must be an integer, got a number 1000.0"),
        (lambda p: p["evaluate"].update(resamples=True), r"`evaluate.resamples` must be an integer"),
        # the forgetting matrix's datasets and stages
        (lambda p: p["evaluate"].update(datasets=["source", "targt"]), r"`evaluate.datasets` names no dataset: 'targt'.*`target`"),
        (lambda p: p["evaluate"].update(datasets="source"), r"`evaluate.datasets` is 'source'; use `all` or a list of dataset names"),
        (lambda p: p["evaluate"].update(datasets=[]), r"`evaluate.datasets` is empty; list at least one"),
        (lambda p: p["evaluate"].update(datasets=3), r"`evaluate.datasets` must be a string or a list, got an integer 3"),
        (lambda p: p["evaluate"].update(all_stages="yes"), r"`evaluate.all_stages` must be true or false"),
        (lambda p: p["evaluate"].update(all_stage=True), r"unknown key `evaluate.all_stage`; did you mean `all_stages`\?"),
        (lambda p: p["stages"].update(forgetting=p["stages"]["stage3"]), r"`stages.forgetting`: eval.json holds the forgetting matrix"),
        # mosaic judged on the merged `train` + stage arguments
        (
            lambda p: (p["train"].update(mosaic=0.5), p["stages"]["stage1"].update(epochs=5)),
            r"`train.mosaic: 0.5` would never run in `stages.stage1`",
        ),
        # a wrong shape anywhere in the tree
        (lambda p: p.update(train=[1, 2]), r"`train` must be a mapping \(key: value\), got a list"),
        (lambda p: p["stages"].update(stage1=["from", "base"]), r"`stages.stage1` must be a mapping"),
        (lambda p: p.update(datasets=["source"]), r"`datasets` must be a mapping"),
        (
            lambda p: p["datasets"]["source"].update(synthetic=None),
            r"`datasets.source.synthetic` must be a mapping \(key: value\), got null",
        ),
        (lambda p: p["model"].update(inits=["a"]), r"`model.inits` must be a mapping"),
        (lambda p: p["train"].update(device={"gpu": 0}), r"`train.device` is a mapping.*use auto, cpu"),
        (lambda p: p["organize"].update(split=[0.7, 0.15, 0.15]), r"`organize.split` must be a mapping"),
        (lambda p: p["stages"]["stage2"].update(distill=[1]), r"`stages.stage2.distill` must be a mapping"),
        (lambda p: p.update(stages={}), r"`stages` is empty"),
        (
            lambda p: p["stages"].update({"my stage": p["stages"].pop("baseline")}),
            r"`stages.my stage` is 'my stage'; a name becomes a folder",
        ),
    ],
)
def test_bad_params_name_the_key(params, edit, expected):
    edit(params)
    with pytest.raises(UserError, match=expected):
        parse(params)


SPLIT_FORM = {"train": 30, "val": 5, "test": 10, "pool": 8, "size": 64, "domain": "target"}


def test_synthetic_takes_either_an_image_count_or_a_fixed_split(params):
    params["datasets"]["target"]["synthetic"] = {**SPLIT_FORM, "cones": 20, "distractors": 0, "min_visible": 0.5}
    params["datasets"]["source"]["synthetic"] = {"images": 40, "size": 64, "domain": "source"}
    cfg = parse(params)
    assert dict(cfg.datasets["target"].options) == {**SPLIT_FORM, "cones": 20, "distractors": 0, "min_visible": 0.5}
    assert cfg.datasets["source"].options["images"] == 40


@pytest.mark.parametrize(
    "edit, expected",
    [
        (
            lambda s: s.update(images=40),
            r"`datasets.target.synthetic` sets both `images` .* and `train`, `val`, `test`, `pool` .*; keep one form",
        ),
        (lambda s: [s.pop(k) for k in ("train", "val", "test", "pool")], r"`datasets.target.synthetic` needs image counts: `images: N`"),
        (lambda s: s.pop("test"), r"missing key `datasets.target.synthetic.test`"),
        (lambda s: s.update(val=0), r"`datasets.target.synthetic.val` is 0; use a value >= 1"),
        (lambda s: s.update(pool=-1), r"`datasets.target.synthetic.pool` is -1; use a value >= 0"),
        (lambda s: s.update(train=2_000_000), r"`datasets.target.synthetic.train` is 2000000; use a value <= 1000000"),
        (lambda s: s.update(train=1.5), r"`datasets.target.synthetic.train` must be an integer, got a number 1.5"),
        (lambda s: s.update(size=8), r"`datasets.target.synthetic.size` is 8; use a value >= 16 \(image side in px\)"),
        (lambda s: s.update(cones=0), r"`datasets.target.synthetic.cones` is 0; use a value >= 1 \(at most this many cones per image\)"),
        (lambda s: s.update(cones="many"), r"`datasets.target.synthetic.cones` must be an integer, got a string 'many'"),
        (lambda s: s.update(distractors=-2), r"`datasets.target.synthetic.distractors` is -2; use a value >= 0"),
        (lambda s: s.update(distractors=99), r"`datasets.target.synthetic.distractors` is 99; use a value <= 50"),
        (lambda s: s.update(min_visible=0), r"`datasets.target.synthetic.min_visible` is 0.0; use a value > 0"),
        (lambda s: s.update(min_visible=1.5), r"`datasets.target.synthetic.min_visible` is 1.5; use a value <= 1"),
        (lambda s: s.update(distractor=3), r"unknown key `datasets.target.synthetic.distractor`; did you mean `distractors`\?"),
    ],
)
def test_bad_synthetic_knobs_name_the_key(params, edit, expected):
    params["datasets"]["target"]["synthetic"] = dict(SPLIT_FORM)
    edit(params["datasets"]["target"]["synthetic"])
    with pytest.raises(UserError, match=expected):
        parse(params)


def test_cli_prints_error_without_traceback(tmp_path, params):
    params["stages"]["stage2"]["lr"] = 0.1
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(params))
    proc = subprocess.run(
        [sys.executable, str(REPO / "stages" / "base.py"), "--params", str(bad), str(tmp_path / "best.pt")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "unknown key `stages.stage2.lr`; did you mean" in proc.stderr and "`lr0`" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "best.pt").exists()


def test_missing_params_file_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load(tmp_path / "nope.yaml")


def test_from_accepts_dvc_tracked_weights(tmp_path, params):
    params["stages"]["stage2"].update({"from": "coco", "teacher": "coco"})
    src = str(tmp_path / "params.yaml")
    with pytest.raises(UserError, match=r"`dvc add models/coco/best.pt`"):
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
    with pytest.raises(UserError, match=r"`model.inits.stage1` clashes with a stage"):
        parse(params)


def test_yaml_syntax_error_names_the_line(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("seed: 0\nclasses: [a, b\nmodel:\n  arch: yolov8n.yaml\n")
    with pytest.raises(UserError, match=rf"{bad}:\d+:\d+: not valid YAML: .*fix the syntax there"):
        load(bad)


def test_a_repeated_key_names_both_lines(tmp_path):
    # PyYAML alone keeps the second `stage2` and drops the first without a word
    text = (REPO / "params.yaml").read_text()
    stage2 = next(line for line in text.splitlines() if line.lstrip().startswith("stage2:"))
    bad = tmp_path / "params.yaml"
    bad.write_text(text.replace(stage2, f"{stage2}\n{stage2}"))
    line = text.splitlines().index(stage2) + 1
    with pytest.raises(UserError, match=rf"{bad}:{line + 1}: key `stage2` repeats the one on line {line}; keep one"):
        load(bad)


def test_an_empty_params_file_says_so(tmp_path):
    (tmp_path / "params.yaml").write_text("# nothing yet\n")
    with pytest.raises(UserError, match="the file is empty"):
        load(tmp_path / "params.yaml")


def _stage_cli(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "stages" / script), *args], capture_output=True, text=True, cwd=REPO, check=False)


def test_stage_cli_with_a_missing_input_is_one_clean_line(tmp_path):
    proc = _stage_cli(
        "train.py", "stage2", "--data", str(tmp_path / "data.yaml"), "--upstream", str(tmp_path / "best.pt"),
        "--out", str(tmp_path / "out"), "--metrics", str(tmp_path / "m.json"), "--live", str(tmp_path / "live"),
    )  # fmt: skip
    assert proc.returncode == 2
    assert f"argument --data: file {tmp_path / 'data.yaml'} does not exist; run the stage that writes it first" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = _stage_cli("export.py", "--weights", str(tmp_path / "w.pt"), "--data", "x", "--out", "o", "--metrics", "m")
    assert proc.returncode == 2 and "argument --weights: file" in proc.stderr and "Traceback" not in proc.stderr


def test_stage_cli_naming_an_unknown_stage_is_a_clean_error(tmp_path):
    (tmp_path / "data.yaml").write_text("names: [a]\n")
    (tmp_path / "best.pt").write_bytes(b"")
    proc = _stage_cli(
        "train.py", "stage4", "--data", str(tmp_path / "data.yaml"), "--upstream", str(tmp_path / "best.pt"),
        "--out", str(tmp_path / "out"), "--metrics", str(tmp_path / "m.json"), "--live", str(tmp_path / "live"),
    )  # fmt: skip
    assert proc.returncode == 2
    assert "`stages` has no entry 'stage4' (named on the command line); did you mean" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_stage_cli_reports_a_yaml_error_with_its_line(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("seed: 0\nstages: {stage1: [}\n")
    proc = _stage_cli("base.py", "--params", str(bad), str(tmp_path / "best.pt"))
    assert proc.returncode == 2 and f"error: {bad}:2:" in proc.stderr and "Traceback" not in proc.stderr


def test_range_checks_agree_with_the_installed_ultralytics():
    """Our ranges mirror Ultralytics' check_cfg: a key it bounds to [0, 1] or a minimum must be bounded the same here."""
    from stagetrain.config import ultralytics_args as ours
    from stagetrain.ultra import ultralytics_cfg_ranges

    fractions, int_min = ultralytics_cfg_ranges()
    trained = set(ours.ultralytics_defaults()) - set(ours.RESERVED_ARGS)
    missing = sorted(k for k in fractions & trained if k not in (*ours.FRACTIONS, *ours.RATES, "fraction"))
    assert not missing, f"Ultralytics bounds {missing} to [0, 1]; add them to FRACTIONS in config/ultralytics_args.py"
    differ = {k: (v, ours.INT_MIN.get(k)) for k, v in int_min.items() if k in trained and ours.INT_MIN.get(k) != v}
    assert not differ, f"minimums differ from Ultralytics' CFG_INT_MIN (theirs, ours): {differ}; update INT_MIN"


# --- replay (per stage `replay: {<dataset>: <fraction>}`, written to the stage's training list by trainset@<stage>) -----


def test_replay_is_optional_and_sorted(params):
    cfg = parse(params)
    assert all(stage.replay == {} for stage in cfg.stages.values())  # absent = none
    params["stages"]["stage3"]["replay"] = {"source": 1}  # an integer is a fraction: all of it
    params["stages"]["baseline"]["replay"] = None  # null = none
    params["datasets"]["extra"] = params["datasets"]["source"]
    params["stages"]["stage2"]["replay"] = {"source": 0.2, "extra": 0.5}
    cfg = parse(params)
    assert cfg.stages["stage3"].replay == {"source": 1.0} and isinstance(cfg.stages["stage3"].replay["source"], float)
    assert cfg.stages["baseline"].replay == {} and list(cfg.stages["stage2"].replay) == ["extra", "source"]
    assert "replay" not in cfg.stages["stage3"].train_args  # ours, never passed to Ultralytics


@pytest.mark.parametrize(
    "replay, expected",
    [
        ({"sourc": 0.2}, r"`stages.stage3.replay.sourc` names no dataset: 'sourc'; replay one defined under .*did you mean `source`\?"),
        ({"target": 0.2}, r"`stages.stage3.replay.target`: 'target' is the stage's own dataset"),
        ({"source": 0}, r"`stages.stage3.replay.source` is 0.0; use a fraction in \(0, 1\] of source's train split"),
        ({"source": 1.5}, r"`stages.stage3.replay.source` is 1.5; use a fraction in \(0, 1\]"),
        ({"source": -0.1}, r"`stages.stage3.replay.source` is -0.1; use a fraction in \(0, 1\]"),
        ({"source": "20%"}, r"`stages.stage3.replay.source` must be a number, got a string '20%'"),
        ({"source": True}, r"`stages.stage3.replay.source` must be a number, got true or false True"),
        ({"source": None}, r"`stages.stage3.replay.source` must be a number, got null"),
        (["source"], r"`stages.stage3.replay` must be a mapping \(key: value\), got a list"),
        (0.2, r"`stages.stage3.replay` must be a mapping \(key: value\), got a number"),
        ({3: 0.2}, r"`stages.stage3.replay.3` must be a string, got an integer 3"),
    ],
)
def test_bad_replay_names_the_key(params, replay, expected):
    params["stages"]["stage3"]["replay"] = replay
    with pytest.raises(UserError, match=expected):
        parse(params)


def test_a_misspelt_replay_key_is_suggested(params):
    params["stages"]["stage3"]["replai"] = {"source": 0.2}
    with pytest.raises(UserError, match=r"unknown key `stages.stage3.replai`; did you mean .*`replay`"):
        parse(params)
