"""organize: canonical layout, seeded or kept split, class mapping, dedupe within and across datasets, the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import REPO
from stagetrain.config import parse
from stagetrain.data import organize, sources, validate
from stagetrain.errors import UserError


@pytest.fixture
def raw(tmp_path, params):
    cfg = parse(params)
    out = tmp_path / "raw"
    sources.run(cfg, "target", out)
    return out


def _organized_names(out):
    return {split: sorted(p.name for p in (out / "images" / split).iterdir()) for split in ("train", "val", "test")}


def test_layout_split_and_report(tmp_path, params, raw):
    cfg = parse(params)
    out = tmp_path / "organized"
    report = organize.run(cfg, "target", raw, out)
    names = _organized_names(out)
    assert sum(map(len, names.values())) == params["datasets"]["target"]["synthetic"]["images"]
    assert report["images"] == {"train": 28, "val": 6, "test": 6}
    assert not set(names["train"]) & set(names["test"]) and not set(names["val"]) & set(names["test"])
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert "path" not in data
    assert list(data["names"].values()) == params["classes"]
    for split, files in names.items():
        for name in files:
            label = out / "labels" / split / name.replace(".jpg", ".txt")
            assert label.read_text() == (raw / "labels" / label.name).read_text()
            assert (out / "images" / split / name).stat().st_ino == (raw / "images" / name).stat().st_ino  # hard link
    boxes = sum(sum(per_class.values()) for per_class in report["boxes"].values())
    assert boxes == sum(len((raw / "labels" / f"{n[:-4]}.txt").read_text().splitlines()) for f in names.values() for n in f)
    json.dumps(report)  # the report is what the stage writes as JSON


def test_split_is_seeded(tmp_path, params, raw):
    first = organize.run(parse(params), "target", raw, tmp_path / "a")
    again = organize.run(parse(params), "target", raw, tmp_path / "b")
    params["seed"] = 1
    other = organize.run(parse(params), "target", raw, tmp_path / "c")
    assert first == again
    assert _organized_names(tmp_path / "a") == _organized_names(tmp_path / "b")
    assert _organized_names(tmp_path / "a")["test"] != _organized_names(tmp_path / "c")["test"]
    assert other["images"] == first["images"]


def test_duplicates_never_straddle_splits(tmp_path, params, raw):
    for i in range(5):  # five exact copies of one image under other names
        shutil.copyfile(raw / "images" / "target_00000.jpg", raw / "images" / f"copy_{i}.jpg")
        shutil.copyfile(raw / "labels" / "target_00000.txt", raw / "labels" / f"copy_{i}.txt")
    report = organize.run(parse(params), "target", raw, tmp_path / "out")
    assert len(report["duplicates_removed"]) == 5
    assert all(d["duplicate_of"].endswith("copy_0.jpg") for d in report["duplicates_removed"])
    kept = [n for f in _organized_names(tmp_path / "out").values() for n in f]
    assert sum(n in {"target_00000.jpg", *(f"copy_{i}.jpg" for i in range(5))} for n in kept) == 1


def test_bad_labels_error_names_file_and_line(tmp_path, params, raw):
    (raw / "labels" / "target_00003.txt").write_text("0 0.5 0.5 0.1 0.1\n7 0.5 0.5 0.1 0.1\n")
    (raw / "labels" / "target_00004.txt").write_text("0 0.5 0.5 0.1\n")
    with pytest.raises(UserError) as err:
        organize.run(parse(params), "target", raw, tmp_path / "out")
    message = str(err.value)
    assert "target_00003.txt:2: class id 7 is not one of 0..4" in message
    assert "target_00004.txt:1: expected 5 numbers" in message
    assert "organize.on_bad: skip" in message
    assert not (tmp_path / "out").exists()


def test_skip_mode_leaves_bad_files_out_and_lists_them(tmp_path, params, raw):
    (raw / "labels" / "target_00003.txt").write_text("0 0.5 0.5 0.1 0.1\n0 1.5 0.5 0.2 0.2\n")
    params["organize"]["on_bad"] = "skip"
    report = organize.run(parse(params), "target", raw, tmp_path / "out")
    kept = [n for f in _organized_names(tmp_path / "out").values() for n in f]
    assert "target_00003.jpg" not in kept and len(kept) == 39
    assert any("target_00003.txt:2: box" in line for line in report["skipped"])


def test_class_map_renames_and_drops(tmp_path, params, raw):
    (raw / "data.yaml").write_text("names: [blue, yellow_cone, orange_cone, large_orange_cone, traffic_sign]\n")
    with pytest.raises(UserError, match=r"classes \['blue', 'traffic_sign'\] are neither canonical nor mapped"):
        organize.run(parse(params), "target", raw, tmp_path / "out")
    params["datasets"]["target"]["class_map"] = {"blue": "blue_cone", "traffic_sign": None}
    report = organize.run(parse(params), "target", raw, tmp_path / "out")
    assert report["dropped_boxes"]["traffic_sign"] > 0
    assert sum(per_class["unknown_cone"] for per_class in report["boxes"].values()) == 0
    assert sum(per_class["blue_cone"] for per_class in report["boxes"].values()) > 0


def _digests(out, splits):
    return {validate.file_digest(p) for split in splits for p in (out / "images" / split).iterdir()}


def _split_source(raw):
    """Move a synthetic raw folder into images/{train,val,test} (a source with its own split): 28/6/6."""
    for i, image in enumerate(sorted((raw / "images").glob("*.jpg"))):
        split = "train" if i < 28 else "val" if i < 34 else "test"
        for folder, suffix in (("images", ".jpg"), ("labels", ".txt")):
            (raw / folder / split).mkdir(exist_ok=True)
            (raw / folder / f"{image.stem}{suffix}").rename(raw / folder / split / f"{image.stem}{suffix}")


def test_dedupe_across_datasets_keeps_shared_images_out_of_val_and_test(tmp_path, params):
    cfg = parse(params)
    sources.run(cfg, "target", tmp_path / "raw/target")
    sources.run(cfg, "source", tmp_path / "raw/source")
    for i in range(8):  # the same 8 photos published in both datasets, under other names (sorted last: they land in val/test below)
        shutil.copyfile(tmp_path / f"raw/target/images/target_{i:05d}.jpg", tmp_path / f"raw/source/images/zz_shared_{i}.jpg")
        shutil.copyfile(tmp_path / f"raw/target/labels/target_{i:05d}.txt", tmp_path / f"raw/source/labels/zz_shared_{i}.txt")
    shared = {validate.file_digest(tmp_path / f"raw/source/images/zz_shared_{i}.jpg") for i in range(8)}
    reports = {}
    for name, other in (("target", "source"), ("source", "target")):
        reports[name] = organize.run(cfg, name, tmp_path / "raw" / name, tmp_path / "out" / name, [tmp_path / "raw" / other])
        assert not shared & _digests(tmp_path / "out" / name, ("val", "test"))
        assert shared <= _digests(tmp_path / "out" / name, ("train",))  # seeded split: kept, in train
        assert len(reports[name]["kept_in_train"]) == 8 and reports[name]["duplicates_removed"] == []
    assert reports["target"]["kept_in_train"][0] == {
        "file": str(tmp_path / "raw/target/images/target_00000.jpg"),
        "split": None,
        "duplicate_of": str(tmp_path / "raw/source/images/zz_shared_0.jpg"),
        "distance": 0,
        "reason": "identical image in another dataset",
    }
    assert sum(reports["target"]["images"].values()) == 40 and reports["target"]["images"]["test"] == 6
    # a source with its own split cannot move them: they leave its val/test, and the report says so
    _split_source(tmp_path / "raw/source")
    report = organize.run(cfg, "source", tmp_path / "raw/source", tmp_path / "out/source", [tmp_path / "raw/target"])
    removed = [d for d in report["duplicates_removed"] if d["split"] in ("val", "test")]
    assert len(removed) == 8 and all(d["reason"] == "identical image in another dataset" for d in removed)
    assert not shared & _digests(tmp_path / "out/source", ("val", "test"))
    assert report == organize.run(cfg, "source", tmp_path / "raw/source", tmp_path / "out/again", [tmp_path / "raw/target"])


def test_source_split_is_kept_and_a_duplicate_leaves_the_test_split(tmp_path, params, raw):
    _split_source(raw)
    test_image = min((raw / "images/test").iterdir())
    shutil.copyfile(test_image, raw / "images/train/copy.jpg")
    shutil.copyfile(raw / "labels/test" / f"{test_image.stem}.txt", raw / "labels/train/copy.txt")
    report = organize.run(parse(params), "target", raw, tmp_path / "out")
    assert report["split_origin"] == {"train": "source", "val": "source", "test": "source"}
    assert report["images"] == {"train": 29, "val": 6, "test": 5}
    assert report["duplicates_removed"] == [
        {
            "file": str(test_image),
            "split": "test",
            "duplicate_of": str(raw / "images/train/copy.jpg"),
            "distance": 0,
            "reason": "identical to an image kept in this dataset (train)",
        }
    ]
    assert _organized_names(tmp_path / "out")["val"] == sorted(p.name for p in (raw / "images/val").iterdir())


def test_one_worker_and_a_pool_give_the_same_result(tmp_path, params, raw):
    serial = organize.run(parse(params), "target", raw, tmp_path / "one", workers=1)
    pooled = organize.run(parse(params), "target", raw, tmp_path / "two", workers=2)
    assert serial == pooled and _organized_names(tmp_path / "one") == _organized_names(tmp_path / "two")


def _cli(tmp_path, params, *args):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = [sys.executable, str(REPO / "stages/organize.py"), "target", *map(str, args), "--params", str(tmp_path / "params.yaml")]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, check=False)


def test_cli_writes_the_report_and_prints_user_errors_without_traceback(tmp_path, params):
    sources.run(parse(params), "target", tmp_path / "raw/target")
    sources.run(parse(params), "source", tmp_path / "raw/source")
    done = _cli(tmp_path, params, "raw/target", "organized/target", "metrics/target.json", "--others", "raw")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "metrics/target.json").read_text())["images"] == {"train": 28, "val": 6, "test": 6}
    (tmp_path / "raw/target/labels/target_00002.txt").write_text("0 0.5 0.5 0.1 0.1\n7 0.5 0.5 0.1 0.1\n")
    failed = _cli(tmp_path, params, "raw/target", "organized/target", "metrics/target.json", "--others", "raw")
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert "\nerror: raw/target: 1 problems in the inputs" in f"\n{failed.stderr}"  # after the progress lines of the phases run
    assert "raw/target/labels/target_00002.txt:2: class id 7 is not one of 0..4" in failed.stderr
