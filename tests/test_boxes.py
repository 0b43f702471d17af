"""Boxes on the way to the organized labels: the VOC devkit convention, rounding vs real clipping, duplicate boxes."""

from __future__ import annotations

import json

import pytest
import yaml

from stagetrain.config import parse
from stagetrain.data import organize
from test_formats import CLASSES, SIZE, make_coco, read_labels, render, write, yolo_lines


@pytest.fixture
def cfg(params):
    return parse(params)


def voc_object(name, xmin, ymin, xmax, ymax):
    corners = f"<xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax>"
    return f"  <object><name>{name}</name><bndbox>{corners}</bndbox></object>\n"


def voc_file(path, size, objects):
    """One VOC XML beside its image: one <object> per line, so `file:line` names the object."""
    header = f"<annotation>\n  <filename>{path.stem}.jpg</filename>\n  <size><width>{size}</width><height>{size}</height></size>\n"
    write(path, header + "".join(voc_object(*o) for o in objects) + "</annotation>\n")


def all_labels(out):
    return {stem: rows for split in ("train", "val", "test") for stem, rows in read_labels(out, split).items()}


def test_voc_boxes_follow_the_devkit_convention(tmp_path, cfg):
    raw = tmp_path / "raw"
    objects = {
        "v0": [("blue_cone", 11, 21, 20, 40)],  # pixels 11..20 (1-based, inclusive) = 10 px wide: x0 10, x1 20
        "v1": [("yellow_cone", 33, 5, 33, 5)],  # xmin == xmax: the devkit's 1-px box
        "v2": [("orange_cone", 1, 1, SIZE, SIZE)],  # the whole image, devkit style
        "v3": [("orange_cone", 0, 0, SIZE, SIZE)],  # the whole image from a 0-based exporter: 1 px over, rounding only
    }
    for i in range(6):
        render(raw / f"v{i}.jpg", i)
        voc_file(raw / f"v{i}.xml", SIZE, objects.get(f"v{i}", [("blue_cone", 2, 2, 9, 9)]))
    report = organize.run(cfg, "target", raw, tmp_path / "out")
    labels = all_labels(tmp_path / "out")
    assert labels["v0"] == [pytest.approx((0, 15 / SIZE, 30 / SIZE, 10 / SIZE, 20 / SIZE), abs=1e-6)]
    assert labels["v1"] == [pytest.approx((1, 32.5 / SIZE, 4.5 / SIZE, 1 / SIZE, 1 / SIZE), abs=1e-6)]
    assert labels["v2"] == labels["v3"] == [(2, 0.5, 0.5, 1.0, 1.0)]
    assert report["skipped"] == [] and report["boxes_clipped"] == 0 and report["clipped_boxes"] == []


def test_only_a_box_genuinely_past_the_border_counts_as_clipped(tmp_path, cfg):
    raw, size = tmp_path / "raw", 200  # TOLERANCE (1 % = 2 px here) still lets a 1.5-px overhang through, clipped
    for i in range(6):
        render(raw / f"v{i}.jpg", i, size)
        voc_file(raw / f"v{i}.xml", size, [("blue_cone", 101, 101, 150, 150)])
    voc_file(raw / "v0.xml", size, [("blue_cone", 151, 11, 201.5, 50), ("yellow_cone", 11, 151, 50, 200.6)])
    report = organize.run(cfg, "target", raw, tmp_path / "out")
    assert report["boxes_clipped"] == 1  # the 0.6-px overhang is rounding: clamped without a word
    assert [(c["where"], c["class"]) for c in report["clipped_boxes"]] == [(f"{raw / 'v0.xml'}:4", "blue_cone")]
    assert report["clipped_boxes"][0]["file"] == str(raw / "v0.jpg")
    assert all_labels(tmp_path / "out")["v0"] == [
        pytest.approx((0, 175 / size, 30 / size, 50 / size, 40 / size), abs=1e-6),
        pytest.approx((1, 30 / size, 175 / size, 40 / size, 50 / size), abs=1e-6),
    ]


def test_coco_box_past_the_border_by_rounding_is_not_clipped(tmp_path, cfg):
    raw = tmp_path / "raw"
    make_coco(raw, "train", range(6))
    data = json.loads((raw / "train/_annotations.coco.json").read_text())
    data["annotations"].append({"id": 7, "image_id": 1, "category_id": 3, "bbox": [40.2, 0, 24.3, 10.5], "iscrowd": 0})  # right edge 64.5
    (raw / "train/_annotations.coco.json").write_text(json.dumps(data))
    report = organize.run(cfg, "target", raw, tmp_path / "out")
    assert report["boxes_clipped"] == 0 and report["clipped_boxes"] == []
    assert pytest.approx((2, 52.1 / SIZE, 5.25 / SIZE, 23.8 / SIZE, 10.5 / SIZE), abs=1e-6) in all_labels(tmp_path / "out")["c1"]


def yolo_raw(raw, repeat):
    """Six images with YOLO labels; image 0's first box written ``repeat`` times in all."""
    for i in range(6):
        boxes = render(raw / "images" / f"y{i}.jpg", i)
        boxes = boxes[:1] * (repeat - 1) + boxes if i == 0 else boxes
        write(raw / "labels" / f"y{i}.txt", yolo_lines(boxes))
    write(raw / "data.yaml", yaml.safe_dump({"names": CLASSES}))
    return raw / "images/y0.jpg", raw / "labels/y0.txt"


def coco_raw(raw, repeat):
    make_coco(raw, "train", range(6))
    path = raw / "train/_annotations.coco.json"
    data = json.loads(path.read_text())
    first = next(a for a in data["annotations"] if a["image_id"] == 0 and not a["iscrowd"])
    data["annotations"] += [{**first, "id": 5000 + k} for k in range(repeat - 1)]  # as some COCO writers repeat annotations
    path.write_text(json.dumps(data))
    return raw / "train/c0.jpg", path


def voc_raw(raw, repeat):
    for i in range(6):
        render(raw / f"v{i}.jpg", i)
        voc_file(raw / f"v{i}.xml", SIZE, [("blue_cone", 5, 5, 20, 30)] * (repeat if i == 0 else 1) + [("orange_cone", 30, 30, 50, 60)])
    return raw / "v0.jpg", raw / "v0.xml"


@pytest.mark.parametrize("make", [yolo_raw, coco_raw, voc_raw])
def test_duplicate_boxes_are_collapsed_and_listed(tmp_path, cfg, make):
    image, annotation = make(tmp_path / "raw", repeat=3)
    report = organize.run(cfg, "target", tmp_path / "raw", tmp_path / "out")
    rows = all_labels(tmp_path / "out")[image.stem]
    assert len(rows) == len(set(rows))  # Ultralytics would drop the copies silently at train time
    assert report["duplicate_boxes"]["count"] == 2
    listed = report["duplicate_boxes"]["boxes"]
    assert [d["file"] for d in listed] == [str(image)] * 2
    assert all(d["where"].startswith(str(annotation)) and d["duplicate_of"].startswith(str(annotation)) for d in listed)
    assert all(tuple(map(float, d["box"].split())) in rows for d in listed)
    total = sum(sum(per_class.values()) for per_class in report["boxes"].values())
    assert total == sum(len(r) for r in all_labels(tmp_path / "out").values())


def test_boxes_merged_by_class_map_are_collapsed_and_listed(tmp_path, params):
    raw = tmp_path / "raw"
    yolo_raw(raw, repeat=1)
    write(raw / "data.yaml", yaml.safe_dump({"names": [*CLASSES, "blue"]}))
    write(raw / "labels/y0.txt", "0 0.3 0.3 0.1 0.1\n1 0.6 0.6 0.1 0.1\n5 0.3 0.3 0.1 0.1\n")  # `blue` annotated on a blue_cone box too
    params["datasets"]["target"]["class_map"] = {"blue": "blue_cone"}
    report = organize.run(parse(params), "target", raw, tmp_path / "out")
    assert all_labels(tmp_path / "out")["y0"] == [(0, 0.3, 0.3, 0.1, 0.1), (1, 0.6, 0.6, 0.1, 0.1)]
    [merged] = report["duplicate_boxes"]["boxes"]
    assert merged["where"] == f"{raw / 'labels/y0.txt'}:3" and merged["duplicate_of"] == f"{raw / 'labels/y0.txt'}:1"
    assert "blue" in merged["reason"] and report["duplicate_boxes"]["count"] == 1
