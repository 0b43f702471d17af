"""trainset@<stage>: the stage's training list (own train split + replayed images), read back by Ultralytics itself."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest

from stagetrain import ultra
from stagetrain.config import parse
from stagetrain.data import organize, sources, trainset
from stagetrain.errors import UserError

DATASETS = ("source", "target")


@pytest.fixture(scope="module")
def organized(tmp_path_factory) -> Path:
    """Both datasets of the shrunk params, organized under ``<tmp>/data/organized`` (read only: tests share it)."""
    from conftest import repo_params, shrink

    tmp = tmp_path_factory.mktemp("trainset")
    cfg = parse(shrink(repo_params()))
    for dataset in DATASETS:
        sources.run(cfg, dataset, tmp / "raw" / dataset)
    for dataset in DATASETS:
        others = [tmp / "raw" / d for d in DATASETS if d != dataset]
        organize.run(cfg, dataset, tmp / "raw" / dataset, tmp / "data/organized" / dataset, others, workers=1)
    return tmp / "data/organized"


def _run(params: dict, stage: str, organized: Path, out_name: str) -> tuple[Path, dict]:
    """Write ``stage``'s list to ``<data>/<out_name>/<stage>`` (a sibling of organized/, as data/trainsets/<stage> is)."""
    out = organized.parent / out_name / stage
    shutil.rmtree(out, ignore_errors=True)
    return out, trainset.run(parse(params), stage, organized, out)


def _listed(out: Path) -> list[Path]:
    """train.txt's images, each line resolved against the list's folder as Ultralytics does."""
    lines = (out / "train.txt").read_text().splitlines()
    assert lines and all(line.startswith("./") for line in lines)
    return [Path(os.path.normpath(out / line)) for line in lines]


def _split(organized: Path, dataset: str, split: str = "train") -> set[Path]:
    return {Path(os.path.normpath(p)) for p in (organized / dataset / "images" / split).iterdir()}


def test_replay_count_rounds_to_nearest_half_up_at_least_one():
    assert trainset.replay_count(0.2, 300) == 60  # not 61: 0.2 is taken as written, not as 0.2000...01
    assert trainset.replay_count(0.25, 10) == 3  # 2.5 -> 3 (halves up, no banker's rounding)
    assert trainset.replay_count(0.35, 10) == 4  # 3.5 -> 4
    assert trainset.replay_count(0.5, 5) == 3
    assert trainset.replay_count(0.24, 10) == 2
    assert trainset.replay_count(0.01, 10) == 1  # any fraction > 0 replays at least one image
    assert trainset.replay_count(1.0, 7) == 7
    assert trainset.replay_count(0.5, 0) == 0


def test_stage_without_replay_lists_exactly_its_train_split(organized, params):
    out, manifest = _run(params, "stage2", organized, "plain")
    listed = _listed(out)
    assert listed == sorted(listed) and set(listed) == _split(organized, "target") and len(listed) == len(set(listed))
    data = (out / "data.yaml").read_text()
    assert "train: train.txt\nval: ../../organized/target/images/val\n" in data and "path:" not in data
    assert manifest["train_images"] == len(listed) and manifest["replayed_images"] == {} and manifest["replay"] == {}
    assert list(manifest["datasets"]) == ["target"] and manifest["val"] == {
        "dataset": "target",
        "images": len(_split(organized, "target", "val")),
    }
    assert json.loads((out / "manifest.json").read_text()) == manifest


def test_replay_adds_a_seeded_fraction_of_the_other_train_split(organized, params):
    params["stages"]["stage3"]["replay"] = {"source": 0.25}
    out, manifest = _run(params, "stage3", organized, "replay")
    listed = _listed(out)
    own, other = _split(organized, "target"), _split(organized, "source")
    replayed = [p for p in listed if p in other]
    assert set(listed) - set(replayed) == own  # the whole own split, plus replayed images only
    assert len(replayed) == trainset.replay_count(0.25, len(other)) == manifest["replayed_images"]["source"] > 0
    assert manifest["replay"] == {"source": {"fraction": 0.25, "of": len(other), "images": len(replayed)}}
    assert manifest["train_images"] == len(listed) == len(own) + len(replayed)
    assert all(p.exists() and Path(ultra.img2label_paths([str(p)])[0]).exists() for p in listed)
    # box counts per dataset match the label files behind the listed images
    for dataset, images in (("target", own), ("source", replayed)):
        rows = [line for p in images for line in Path(ultra.img2label_paths([str(p)])[0]).read_text().splitlines() if line.strip()]
        counts = manifest["datasets"][dataset]
        assert counts["images"] == len(images) and sum(counts["boxes"].values()) == len(rows)
        assert counts["boxes"]["blue_cone"] == sum(line.split()[0] == "0" for line in rows)


def test_same_params_give_the_same_bytes_another_seed_another_pick(organized, params):
    params["stages"]["stage3"]["replay"] = {"source": 0.25}
    first, _ = _run(params, "stage3", organized, "first")
    second, _ = _run(params, "stage3", organized, "second")
    for name in ("data.yaml", "train.txt", "manifest.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    other = _split(organized, "source")
    picked = {p for p in _listed(first) if p in other}
    params["seed"] = 1
    reseeded, _ = _run(params, "stage3", organized, "reseeded")
    assert {p for p in _listed(reseeded) if p in other} != picked
    params["seed"] = 0
    params["stages"]["stage2"]["replay"] = {"source": 0.25}  # another stage: its own draw
    elsewhere, _ = _run(params, "stage2", organized, "elsewhere")
    assert {p for p in _listed(elsewhere) if p in other} != picked


def test_outputs_hold_no_absolute_path(organized, params):
    params["stages"]["stage3"]["replay"] = {"source": 0.5}
    out, _ = _run(params, "stage3", organized, "portable")
    for name in ("data.yaml", "train.txt", "manifest.json"):
        text = (out / name).read_text()
        assert str(organized.parent) not in text and "\n/" not in text and ": /" not in text, name


def test_ultralytics_reads_the_list_and_labels(organized, params):
    """Its own loader (check_det_dataset + YOLODataset, as the trainer builds it) finds every listed image and its boxes."""
    params["stages"]["stage3"]["replay"] = {"source": 0.5}
    out, manifest = _run(params, "stage3", organized, "ultra")
    before = sorted(p.name for p in out.iterdir())
    images, labels = ultra.read_split(out / "data.yaml", "train")
    assert sorted(Path(os.path.normpath(p)) for p in images) == _listed(out)
    boxes = sum(sum(counts["boxes"].values()) for counts in manifest["datasets"].values())
    assert sum(len(label["cls"]) for label in labels) == boxes
    val_images, _ = ultra.read_split(out / "data.yaml", "val")
    assert {Path(os.path.normpath(p)) for p in val_images} == _split(organized, "target", "val")
    # its labels cache lands beside a label folder under organized/ (`*.cache` is in .dvcignore), never in the trainset
    assert sorted(p.name for p in out.iterdir()) == before
    assert any(organized.glob("*/labels/*.cache"))


def test_a_stale_or_missing_list_is_refused_before_training(organized, params, tmp_path):
    params["stages"]["stage3"]["replay"] = {"source": 0.25}
    out, _ = _run(params, "stage3", organized, "stale")
    expected = {"source": trainset.replay_count(0.25, len(_split(organized, "source")))}
    assert trainset.summary(parse(params), "stage3", out / "data.yaml")["replayed_images"] == expected
    params["stages"]["stage3"]["replay"] = {"source": 0.5}
    with pytest.raises(UserError, match=r"manifest.json: written for .* rerun trainset@stage3"):
        trainset.summary(parse(params), "stage3", out / "data.yaml")
    with pytest.raises(UserError, match=r"`stages.stage3` sets replay, but this data.yaml has no manifest.json"):
        trainset.summary(parse(params), "stage3", organized / "target/data.yaml")
    params["stages"]["stage3"].pop("replay")
    assert trainset.summary(parse(params), "stage3", organized / "target/data.yaml") == {
        "train_images": len(_split(organized, "target")),
        "replayed_images": {},
        "oversampled_images": 0,
        "mined_images": 0,
    }
    params["stages"]["stage3"]["oversample"] = {"orange_cone": 2.0}
    with pytest.raises(UserError, match=r"`stages.stage3` sets oversample, but this data.yaml has no manifest.json"):
        trainset.summary(parse(params), "stage3", organized / "target/data.yaml")
    with pytest.raises(UserError, match=r"manifest.json: written for .*'oversample': \{\}.* rerun trainset@stage3"):
        trainset.summary(parse(params), "stage3", out / "data.yaml")


def test_missing_organized_dataset_is_a_clear_error(organized, params, tmp_path):
    with pytest.raises(UserError, match=r"not found; run organize@target first"):
        trainset.run(parse(params), "stage2", tmp_path / "nowhere", tmp_path / "out")


def test_resume_fingerprint_follows_the_list(organized, params, tmp_path):
    """A changed list (other replay, or a replayed image's bytes) never resumes a run started on the old one."""
    from stagetrain.train import resume

    upstream = tmp_path / "upstream.pt"
    upstream.write_bytes(b"weights")
    params["stages"]["stage3"]["replay"] = {"source": 0.25}
    out, _ = _run(params, "stage3", organized, "fp")
    before = resume.fingerprint({"epochs": 1}, upstream, out / "data.yaml")
    _run(params, "stage3", organized, "fp")
    assert resume.fingerprint({"epochs": 1}, upstream, out / "data.yaml") == before  # same params: same list, same print
    params["stages"]["stage3"]["replay"] = {"source": 0.5}
    _run(params, "stage3", organized, "fp")
    assert resume.fingerprint({"epochs": 1}, upstream, out / "data.yaml") != before
    # same names and sizes, one replayed label rewritten in place: the manifest's SHA-256 changes, so does the print
    params["stages"]["stage3"]["replay"] = {"source": 0.25}
    _run(params, "stage3", organized, "fp")
    replayed = next(p for p in _listed(out) if "/source/" in p.as_posix())
    label = Path(ultra.img2label_paths([str(replayed)])[0])
    text = label.read_text()
    try:
        label.write_text(text.replace("0.", "1.", 1) if "0." in text else text + " ")
        _run(params, "stage3", organized, "fp")
        assert resume.fingerprint({"epochs": 1}, upstream, out / "data.yaml") != before
    finally:
        label.write_text(text)


@pytest.mark.slow  # trains a model (1 epoch, 32 px: seconds)
def test_a_stage_with_replay_trains_and_counts_its_images(organized, params, tmp_path):
    """The DVC commands, run by hand from a repo-like folder: trainset@stage3, then train@stage3 on its list."""
    import subprocess
    import sys

    import yaml

    from conftest import REPO
    from stagetrain.train import checkpoint

    params["model"]["imgsz"] = 32
    params["stages"]["stage3"]["replay"] = {"source": 0.25}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (tmp_path / "data").mkdir()
    (tmp_path / "data/organized").symlink_to(organized, target_is_directory=True)
    checkpoint.build_base(parse(params), tmp_path / "models/stage2/best.pt")

    def stage(*args: str) -> str:
        cmd = [sys.executable, str(REPO / "stages" / args[0]), "--params", "params.yaml", *args[1:]]
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    assert "replayed: source" in stage("trainset.py", "stage3", "--organized", "data/organized", "--out", "data/trainsets/stage3")
    stage(
        "train.py", "stage3", "--data", "data/trainsets/stage3/data.yaml", "--upstream", "models/stage2/best.pt",
        "--teacher", "models/stage2/best.pt", "--out", "models/stage3", "--metrics", "metrics/stage3.json", "--live", "metrics/stage3",
    )  # fmt: skip
    metrics = json.loads((tmp_path / "metrics/stage3.json").read_text())
    replayed = trainset.replay_count(0.25, len(_split(organized, "source")))
    assert metrics["replayed_images"] == {"source": replayed} and metrics["epochs_run"] == 1
    assert metrics["train_images"] == len(_split(organized, "target")) + replayed
    args = yaml.safe_load((tmp_path / "models/stage3/args.yaml").read_text())
    assert args["data"] == "data/trainsets/stage3/data.yaml"  # relative, as written to the outputs
    assert not list((tmp_path / "data/trainsets/stage3").glob("*.cache"))


# --- critical-class oversampling ----------------------------------------------------------------


def test_oversample_counts_take_the_factor_as_written_and_round_half_up():
    assert trainset.oversample_counts(2.5, 10) == (2, 5)  # 25 entries: each twice, half of them a third time
    assert trainset.oversample_counts(1.5, 3) == (1, 2)  # 1.5 -> 2 (halves up)
    assert trainset.oversample_counts(2.2, 5) == (2, 1)  # exactly 11 entries, not 10 or 12 from float error
    assert trainset.oversample_counts(3.0, 7) == (3, 0)
    assert trainset.oversample_counts(1.25, 1) == (1, 0)
    assert trainset.oversample_counts(1.5, 0) == (1, 0)


def _holding(images: set[Path], class_id: int) -> set[Path]:
    return {p for p in images if class_id in trainset.label_classes(p)}


def _class_id(params: dict, name: str) -> int:
    return params["classes"].index(name)


def test_oversampling_repeats_images_holding_the_class_exactly(organized, params):
    """Every image holding a listed class appears its largest factor's times, exactly; others once; boxes follow."""
    factors = {"large_orange_cone": 2.5, "unknown_cone": 1.5}
    params["stages"]["stage2"]["oversample"] = factors
    out, manifest = _run(params, "stage2", organized, "oversample")
    listed = _listed(out)
    counts = {p: listed.count(p) for p in set(listed)}
    own = _split(organized, "target")
    large = _holding(own, _class_id(params, "large_orange_cone"))
    unknown = _holding(own, _class_id(params, "unknown_cone")) - large  # an image holding both takes 2.5
    plain = own - large - unknown
    assert large and unknown and plain, "the fixture must hold each kind of image"
    assert set(counts) == own and all(counts[p] == 1 for p in plain)
    assert sorted({counts[p] for p in large}) == [2, 3] and sum(counts[p] for p in large) == math.floor(2.5 * len(large) + 0.5)
    assert {counts[p] for p in unknown} <= {1, 2} and sum(counts[p] for p in unknown) == math.floor(1.5 * len(unknown) + 0.5)
    assert manifest["train_images"] == len(listed) and manifest["oversampled_images"] == len(listed) - len(own)
    section = manifest["oversample"]
    assert section["factors"] == factors and section["added"] == len(listed) - len(own)
    assert section["images_holding"] == {"large_orange_cone": len(large), "unknown_cone": len(unknown | (large & _holding(own, 4)))}
    assert section["before"]["images"] == len(own) and section["after"]["images"] == len(listed)
    for name in params["classes"]:  # boxes per class before/after = label rows times how often each image is listed
        rows = {p: trainset.label_classes(p).count(_class_id(params, name)) for p in own}
        assert section["before"]["boxes"][name] == sum(rows.values())
        assert section["after"]["boxes"][name] == sum(rows[p] * counts[p] for p in own) == manifest["datasets"]["target"]["boxes"][name]
    # Ultralytics' own loader keeps every repeated line: the trainer draws each image that many times an epoch
    images, labels = ultra.read_split(out / "data.yaml", "train")
    assert len(images) == len(labels) == len(listed) and sorted(Path(os.path.normpath(p)) for p in images) == listed
    assert trainset.summary(parse(params), "stage2", out / "data.yaml")["oversampled_images"] == len(listed) - len(own)


def test_oversampling_is_seeded_and_covers_replayed_images(organized, params):
    params["stages"]["stage3"].update(replay={"source": 0.5}, oversample={"large_orange_cone": 1.5})
    first, manifest = _run(params, "stage3", organized, "os_first")
    second, _ = _run(params, "stage3", organized, "os_second")
    assert (first / "train.txt").read_bytes() == (second / "train.txt").read_bytes()
    listed = _listed(first)
    repeated = {p for p in listed if listed.count(p) > 1}
    assert any("/source/" in p.as_posix() for p in repeated) and any("/target/" in p.as_posix() for p in repeated)
    params["seed"] = 1
    reseeded, _ = _run(params, "stage3", organized, "os_reseeded")
    again = _listed(reseeded)
    assert {p for p in again if again.count(p) > 1 and "/target/" in p.as_posix()} != {p for p in repeated if "/target/" in p.as_posix()}
    assert manifest["oversample"]["before"]["images"] == len(set(listed))


@pytest.mark.parametrize(
    ("oversample", "message"),
    [
        ({"orange_cones": 2.0}, r"`stages.stage2.oversample.orange_cones` names no class; .* did you mean `orange_cone`"),
        ({"orange_cone": 0.5}, r"`stages.stage2.oversample.orange_cone` is 0.5; use a factor in \[1, 20.0\]"),
        ({"orange_cone": "x3"}, r"`stages.stage2.oversample.orange_cone` must be a number, got a string"),
        ([("orange_cone", 2)], r"`stages.stage2.oversample` must be a mapping"),
    ],
)
def test_oversample_params_are_validated(params, oversample, message):
    params["stages"]["stage2"]["oversample"] = oversample
    with pytest.raises(UserError, match=message):
        parse(params)


def test_oversample_null_or_empty_is_off(params):
    for value in (None, {}):
        params["stages"]["stage2"]["oversample"] = value
        assert dict(parse(params).stages["stage2"].oversample) == {}
