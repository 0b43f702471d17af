"""organize: canonical layout, seeded split, class mapping, dedupe, bad labels reported."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from stagetrain.config import ConfigError, parse
from stagetrain.data import organize, sources


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
    with pytest.raises(ConfigError) as err:
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
    with pytest.raises(ConfigError, match=r"classes \['blue', 'traffic_sign'\] are neither canonical nor mapped"):
        organize.run(parse(params), "target", raw, tmp_path / "out")
    params["datasets"]["target"]["class_map"] = {"blue": "blue_cone", "traffic_sign": None}
    report = organize.run(parse(params), "target", raw, tmp_path / "out")
    assert report["dropped_boxes"]["traffic_sign"] > 0
    assert sum(per_class["unknown_cone"] for per_class in report["boxes"].values()) == 0
    assert sum(per_class["blue_cone"] for per_class in report["boxes"].values()) > 0
