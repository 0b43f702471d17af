"""formats: every raw layout organize reads (Roboflow YOLO, plain YOLO, COCO JSON, Pascal VOC), end to end."""

from __future__ import annotations

import json

import pytest
import yaml

from stagetrain.config import parse
from stagetrain.data import formats, organize, sources, synthetic
from stagetrain.errors import UserError

SIZE = 64
CLASSES = list(synthetic.CONE_STYLES)  # the canonical names, in the order of the repo's `classes`


def render(path, index, size=SIZE, **save):
    """Write a real synthetic image at ``path``; return its boxes ``(class_id, xc, yc, w, h)``, normalised."""
    image, boxes = synthetic.render(0, "source", index, size, tuple(CLASSES))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **save)
    return boxes


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def yolo_lines(boxes):
    return "".join(f"{c} {xc:.6f} {yc:.6f} {w:.6f} {h:.6f}\n" for c, xc, yc, w, h in boxes)


def read_labels(out, split):
    return {p.stem: [tuple(map(float, line.split())) for line in p.read_text().splitlines()] for p in (out / "labels" / split).iterdir()}


def assert_boxes_close(got, want):
    assert len(got) == len(want)
    for g, w in zip(sorted(got), sorted(want), strict=True):
        assert g[0] == w[0] and g[1:] == pytest.approx(w[1:], abs=2e-6)


@pytest.fixture
def cfg(params):
    assert CLASSES == params["classes"]
    return parse(params)


def make_roboflow_yolo(root, splits=(("train", 6), ("valid", 3), ("test", 3))):
    """Roboflow's YOLO export: <split>/images + <split>/labels, data.yaml with names, README files."""
    truth, index = {}, 0
    for split, count in dict(splits).items():
        for _ in range(count):
            boxes = render(root / split / "images" / f"img{index}_jpg.rf.abc.jpg", index)
            write(root / split / "labels" / f"img{index}_jpg.rf.abc.txt", yolo_lines(boxes))
            truth[f"img{index}_jpg.rf.abc"] = (split, boxes)
            index += 1
    (root / "data.yaml").write_text(yaml.safe_dump({"train": "../train/images", "val": "../valid/images", "nc": 5, "names": CLASSES}))
    (root / "README.roboflow.txt").write_text("exported from roboflow\n")
    (root / "source.json").write_text(json.dumps({"kind": "roboflow", "format": "roboflow"}))
    return truth


def test_roboflow_yolo_export_keeps_its_split(tmp_path, cfg):
    truth = make_roboflow_yolo(tmp_path / "raw")
    report = organize.run(cfg, "target", tmp_path / "raw", tmp_path / "out")
    assert report["format"] == "yolo" and report["split_origin"] == dict.fromkeys(("train", "val", "test"), "source")
    for split, source_split in (("train", "train"), ("val", "valid"), ("test", "test")):
        labels = read_labels(tmp_path / "out", split)
        assert set(labels) == {stem for stem, (s, _) in truth.items() if s == source_split}
        for stem, boxes in labels.items():
            assert_boxes_close(boxes, truth[stem][1])
    assert report["skipped"] == [] and "path" not in yaml.safe_load((tmp_path / "out/data.yaml").read_text())


def test_roboflow_export_without_test_split_carves_it_from_train(tmp_path, cfg):
    truth = make_roboflow_yolo(tmp_path / "raw", (("train", 16), ("valid", 4)))
    report = organize.run(cfg, "target", tmp_path / "raw", tmp_path / "out")
    assert report["split_origin"] == {"train": "source", "val": "source", "test": "carved from train"}
    assert report["images"] == {"train": 13, "val": 4, "test": 3}  # round(20 * 0.15) carved out of train
    test = set(read_labels(tmp_path / "out", "test"))
    assert all(truth[stem][0] == "train" for stem in test)


def test_plain_yolo_with_split_subfolders_and_no_source_json(tmp_path, cfg):
    raw = tmp_path / "raw"
    for i, split in enumerate(["train"] * 5 + ["val"] * 2 + ["test"] * 2):
        boxes = render(raw / "images" / split / f"{i}.jpg", i)
        write(raw / "labels" / split / f"{i}.txt", yolo_lines(boxes))
    (raw / "data.yaml").write_text(yaml.safe_dump({"names": dict(enumerate(CLASSES))}))
    report = organize.run(cfg, "target", raw, tmp_path / "out")
    assert report["images"] == {"train": 5, "val": 2, "test": 2}
    assert sorted(read_labels(tmp_path / "out", "val")) == ["5", "6"]


def make_coco(root, split_dir, indices, size=SIZE):
    """Roboflow's COCO export: images beside ``_annotations.coco.json``, category 0 a never-used supercategory."""
    images, annotations, truth = [], [], {}
    for i in indices:
        boxes = render(root / split_dir / f"c{i}.jpg", i, size)
        images.append({"id": i, "file_name": f"c{i}.jpg", "width": size, "height": size})
        for c, xc, yc, w, h in boxes:
            bbox = [(xc - w / 2) * size, (yc - h / 2) * size, w * size, h * size]
            annotations.append({"id": len(annotations) + 100 * i, "image_id": i, "category_id": c + 1, "bbox": bbox, "iscrowd": 0})
        truth[f"c{i}"] = boxes
    categories = [{"id": 0, "name": "cones", "supercategory": "none"}] + [{"id": c + 1, "name": n} for c, n in enumerate(CLASSES)]
    annotations.append({"id": 99999, "image_id": indices[0], "category_id": 1, "bbox": [0, 0, 5, 5], "iscrowd": 1})
    (root / split_dir / "_annotations.coco.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return truth


def test_coco_roboflow_layout_normalises_pixel_boxes(tmp_path, cfg):
    raw = tmp_path / "raw"
    truth = make_coco(raw, "train", range(6)) | make_coco(raw, "valid", range(6, 9)) | make_coco(raw, "test", range(9, 12))
    report = organize.run(cfg, "target", raw, tmp_path / "out")
    assert report["format"] == "coco" and report["images"] == {"train": 6, "val": 3, "test": 3}
    assert report["crowd_boxes_skipped"] == 3  # one per file, as Ultralytics' COCO converter skips crowds
    for split in ("train", "val", "test"):
        for stem, boxes in read_labels(tmp_path / "out", split).items():
            assert_boxes_close(boxes, truth[stem])


def test_coco_annotations_folder_with_category_names_mapped(tmp_path, params):
    raw = tmp_path / "raw"
    truth = make_coco(raw, "images", range(12))
    data = json.loads((raw / "images/_annotations.coco.json").read_text())
    data["categories"][1]["name"] = "blue"  # the dataset's own name for blue_cone
    (raw / "annotations").mkdir()
    (raw / "annotations/instances_default.json").write_text(json.dumps(data))
    (raw / "images/_annotations.coco.json").unlink()
    with pytest.raises(UserError, match=r"classes \['blue'\] are neither canonical nor mapped.*'blue_cone'"):
        organize.run(parse(params), "target", raw, tmp_path / "out")
    params["datasets"]["target"]["class_map"] = {"blue": "blue_cone"}
    report = organize.run(parse(params), "target", raw, tmp_path / "out")
    assert report["split_origin"]["train"] == "seeded" and sum(report["images"].values()) == 12
    want = sum(1 for boxes in truth.values() for b in boxes if b[0] == 0)
    assert sum(per_class["blue_cone"] for per_class in report["boxes"].values()) == want > 0


def test_malformed_coco_file_is_a_user_error_naming_it(tmp_path, cfg):
    raw = tmp_path / "raw"
    make_coco(raw, "train", range(4))
    for content, reason in (("{not json", "JSONDecodeError"), ('{"images": [], "categories": [{"id": 1}]}', "KeyError: 'name'")):
        (raw / "train/_annotations.coco.json").write_text(content)
        with pytest.raises(UserError, match=rf"train/_annotations.coco.json: not a COCO detection file \({reason}"):
            organize.run(cfg, "target", raw, tmp_path / "out")


def voc_xml(filename, size, boxes):
    """VOC devkit coordinates: 1-based and inclusive, so the box's left edge x0 is written as x0 + 1 and its right edge as is."""
    objects = "".join(
        f"""  <object>
    <name>{CLASSES[c]}</name><difficult>0</difficult>
    <bndbox><xmin>{(xc - w / 2) * size + 1}</xmin><ymin>{(yc - h / 2) * size + 1}</ymin>
      <xmax>{(xc + w / 2) * size}</xmax><ymax>{(yc + h / 2) * size}</ymax></bndbox>
  </object>
"""
        for c, xc, yc, w, h in boxes
    )
    header = f"  <filename>{filename}</filename>\n  <size><width>{size}</width><height>{size}</height><depth>3</depth></size>\n"
    return f"<annotation>\n{header}{objects}</annotation>\n"


def test_voc_tree_with_image_sets(tmp_path, cfg):
    raw, truth = tmp_path / "raw", {}
    for i in range(10):
        truth[f"v{i}"] = render(raw / "JPEGImages" / f"v{i}.jpg", i)
        write(raw / "Annotations" / f"v{i}.xml", voc_xml(f"v{i}.jpg", SIZE, truth[f"v{i}"]))
    (raw / "ImageSets/Main").mkdir(parents=True)
    (raw / "ImageSets/Main/trainval.txt").write_text("\n".join(f"v{i}" for i in range(8)))
    (raw / "ImageSets/Main/val.txt").write_text("v6\nv7\n")
    (raw / "ImageSets/Main/test.txt").write_text("v8\n")  # v9 is in no set: left out, and said so
    report = organize.run(cfg, "target", raw, tmp_path / "out")
    assert report["format"] == "voc" and report["images"] == {"train": 6, "val": 2, "test": 1}
    assert report["outside_source_split"] == [str(raw / "JPEGImages/v9.jpg")]
    for split in ("train", "val", "test"):
        for stem, boxes in read_labels(tmp_path / "out", split).items():
            assert_boxes_close(boxes, truth[stem])


def test_voc_xml_beside_images_in_split_folders(tmp_path, cfg):
    raw, truth = tmp_path / "raw", {}
    for i, split in enumerate(["train"] * 6 + ["valid"] * 3 + ["test"] * 3):
        truth[f"v{i}"] = render(raw / split / f"v{i}.jpg", i)
        (raw / split / f"v{i}.xml").write_text(voc_xml(f"v{i}.jpg", SIZE, truth[f"v{i}"]))
    (raw / "source.json").write_text(json.dumps({"kind": "roboflow", "format": "voc"}))
    report = organize.run(cfg, "target", raw, tmp_path / "out")
    assert report["images"] == {"train": 6, "val": 3, "test": 3}
    assert sorted(read_labels(tmp_path / "out", "val")) == ["v6", "v7", "v8"]


def test_voc_object_problems_name_file_and_line(tmp_path, cfg):
    raw = tmp_path / "raw"
    for i in range(4):
        render(raw / f"v{i}.jpg", i)
        (raw / f"v{i}.xml").write_text(voc_xml(f"v{i}.jpg", SIZE, [(0, 0.5, 0.5, 0.2, 0.2)]))
    (raw / "v1.xml").write_text(
        "<annotation>\n<object>\n<name>blue_cone</name>\n<bndbox><xmin>a</xmin></bndbox>\n</object>\n</annotation>\n"
    )
    (raw / "v2.xml").write_text("<annotation>\n<object>\n</annotation>\n")
    with pytest.raises(UserError) as err:
        organize.run(cfg, "target", raw, tmp_path / "out")
    assert f"{raw / 'v1.xml'}:2: <object> needs <bndbox>" in str(err.value)
    assert f"{raw / 'v2.xml'}:3: not valid XML (mismatched tag)" in str(err.value)


def test_ambiguous_layout_asks_for_the_format_and_source_json_settles_it(tmp_path, cfg):
    raw = tmp_path / "raw"
    make_coco(raw, "train", range(6))
    (raw / "data.yaml").write_text(yaml.safe_dump({"names": CLASSES}))  # a stray YOLO names file too
    with pytest.raises(UserError, match=r"cannot tell the dataset's format \(coco: .*; yolo: .*\); name it with the dataset's `format:`"):
        organize.run(cfg, "target", raw, tmp_path / "out")
    (raw / "source.json").write_text(json.dumps({"kind": "local", "format": "coco"}))
    assert organize.run(cfg, "target", raw, tmp_path / "out")["format"] == "coco"


def test_repeated_names_get_unique_deterministic_output_names(tmp_path, cfg):
    raw = tmp_path / "raw"
    for i in range(12):  # batch_0/frame0.jpg, batch_1/frame0.png, ...: names repeat across folders and suffixes
        folder, name = f"batch_{i % 6}", f"frame{i // 6}" + (".png" if i % 2 else ".jpg")
        boxes = render(raw / "images" / folder / name, i)
        write(raw / "labels" / folder / f"frame{i // 6}.txt", yolo_lines(boxes))
    (raw / "data.yaml").write_text(yaml.safe_dump({"names": CLASSES}))
    first = organize.run(cfg, "target", raw, tmp_path / "out")
    assert first == organize.run(cfg, "target", raw, tmp_path / "again")
    by_inode = {p.stat().st_ino: p for p in (raw / "images").rglob("*.*")}
    for split in ("train", "val", "test"):
        images = sorted((tmp_path / "out/images" / split).iterdir())
        assert [p.name for p in images] == sorted(p.name for p in (tmp_path / "again/images" / split).iterdir())
        assert len({p.stem.lower() for p in images}) == len(images)  # labels are <stem>.txt: stems must differ
        for image in images:  # each output is a hard link to its source, beside that source's own label
            source = by_inode[image.stat().st_ino]
            label = raw / "labels" / source.parent.name / f"{source.stem}.txt"
            assert (tmp_path / "out/labels" / split / f"{image.stem}.txt").read_text() == label.read_text()


def test_hidden_files_and_macos_metadata_are_ignored(tmp_path, cfg):
    raw = tmp_path / "raw"
    for i in range(6):
        boxes = render(raw / "images" / f"{i}.jpg", i)
        write(raw / "labels" / f"{i}.txt", yolo_lines(boxes))
    (raw / "data.yaml").write_text(yaml.safe_dump({"names": CLASSES}))
    (raw / "__MACOSX/images").mkdir(parents=True)
    (raw / "__MACOSX/images/._0.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (raw / "images/.DS_Store").write_bytes(b"junk")
    assert [i.rel for i in formats.read(raw).items] == [f"images/{i}.jpg" for i in range(6)]
    assert organize.run(cfg, "target", raw, tmp_path / "out")["skipped"] == []


@pytest.mark.parametrize(
    ("parts", "split"),
    [
        (("train", "images"), "train"),
        (("images", "valid"), "val"),
        (("val2017",), "val"),
        (("Testing",), "test"),
        (("images", "batch1"), None),
    ],
)
def test_split_names(parts, split):
    assert formats.split_of(parts) == split


def make_yolo(raw, names_text, order, yaml_name="data.yaml"):
    """A YOLO dataset whose class ids follow ``order`` (not the canonical one); returns the canonical boxes per stem."""
    truth = {}
    for i, split in enumerate(["train"] * 4 + ["val"] * 2 + ["test"] * 2):
        boxes = render(raw / "images" / split / f"{i}.jpg", i)
        write(raw / "labels" / split / f"{i}.txt", yolo_lines([(order.index(CLASSES[c]), *xywh) for c, *xywh in boxes]))
        truth[str(i)] = boxes
    write(raw / yaml_name, names_text)
    return truth


NAMES_FORMS = {  # how Ultralytics' own dataset yamls spell `names:` (coco8.yaml: `0: person`; others quote the ids)
    "list": lambda order: "names: [" + ", ".join(order) + "]\n",
    "int keys": lambda order: "names:\n" + "".join(f"  {i}: {n}\n" for i, n in enumerate(order)),
    "quoted keys": lambda order: "names:\n" + "".join(f'  "{i}": {n}\n' for i, n in enumerate(order)),
    "unordered int keys": lambda order: "names:\n" + "".join(f"  {i}: {n}\n" for i, n in reversed(list(enumerate(order)))),
}


@pytest.mark.parametrize("yaml_name", ["dataset.yaml", "coco8.yaml", "data.yml"])
@pytest.mark.parametrize("form", NAMES_FORMS)
def test_yolo_dataset_yaml_of_any_name_with_names_as_list_or_mapping(tmp_path, cfg, yaml_name, form):
    order = CLASSES[::-1]  # the dataset's ids differ from the canonical ones: names must be read, not assumed
    header = "path: ../datasets/cones\ntrain: images/train\nval: images/val\ntest: images/test\n"
    truth = make_yolo(tmp_path / "raw", header + NAMES_FORMS[form](order), order, yaml_name)
    report = organize.run(cfg, "target", tmp_path / "raw", tmp_path / "out")
    assert report["format"] == "yolo" and report["images"] == {"train": 4, "val": 2, "test": 2}
    for split in ("train", "val", "test"):
        for stem, boxes in read_labels(tmp_path / "out", split).items():
            assert_boxes_close(boxes, truth[stem])


def test_several_dataset_yamls_data_yaml_wins_and_others_without_names_are_ignored(tmp_path, cfg):
    order = CLASSES[::-1]
    truth = make_yolo(tmp_path / "raw", "names: [" + ", ".join(order) + "]\n", order, "data.yaml")
    write(tmp_path / "raw/coco8.yaml", "names: [" + ", ".join(CLASSES) + "]\n")  # a stray copy, other order
    write(tmp_path / "raw/hyp.yaml", "lr0: 0.01\nmosaic: 1.0\n")  # not a dataset yaml
    organize.run(cfg, "target", tmp_path / "raw", tmp_path / "out")
    for stem, boxes in read_labels(tmp_path / "out", "train").items():
        assert_boxes_close(boxes, truth[stem])


def test_several_candidate_dataset_yamls_with_different_names_is_an_error_naming_them(tmp_path, cfg):
    order = CLASSES[::-1]
    make_yolo(tmp_path / "raw", "names: [" + ", ".join(order) + "]\n", order, "cones.yaml")
    write(tmp_path / "raw/other.yml", "names: [" + ", ".join(CLASSES) + "]\n")
    with pytest.raises(UserError, match=r"cones.yaml.*other.yml"):
        organize.run(cfg, "target", tmp_path / "raw", tmp_path / "out")
    write(tmp_path / "raw/other.yml", "names: [" + ", ".join(order) + "]\n")  # the same names twice: no ambiguity
    assert organize.run(cfg, "target", tmp_path / "raw", tmp_path / "out")["format"] == "yolo"


@pytest.mark.parametrize(
    ("names", "reason"),
    [
        ("names: {0: a, 2: b}\n", r"ids 0\.\.1"),
        ("names: {zero: a, one: b}\n", r"ids 0\.\.1"),
        ("names: []\n", r"`names:` must list the class names"),
    ],
)
def test_unusable_names_in_a_dataset_yaml_are_a_user_error_naming_it(tmp_path, cfg, names, reason):
    make_yolo(tmp_path / "raw", names, CLASSES, "dataset.yaml")
    with pytest.raises(UserError, match=rf"dataset.yaml: .*{reason}"):
        organize.run(cfg, "target", tmp_path / "raw", tmp_path / "out")


def test_local_source_declared_roboflow_but_holding_a_coco_export_asks_for_format_coco(tmp_path, params):
    export = tmp_path / "export"
    make_coco(export, "train", range(6)) | make_coco(export, "valid", range(6, 9))
    params["datasets"]["target"] = {"kind": "local", "local": {"path": str(export), "format": "roboflow"}, "class_map": {}}
    cfg = parse(params)
    sources.run(cfg, "target", tmp_path / "raw")
    with pytest.raises(UserError, match=r"a COCO dataset.*`datasets\.target\.local\.format: coco`"):
        organize.run(cfg, "target", tmp_path / "raw", tmp_path / "out")
    params["datasets"]["target"]["local"]["format"] = "coco"
    sources.run(parse(params), "target", tmp_path / "raw")
    assert organize.run(parse(params), "target", tmp_path / "raw", tmp_path / "out")["format"] == "coco"


def test_a_data_yaml_that_does_not_parse_is_a_user_error_naming_it(tmp_path, cfg):
    make_yolo(tmp_path / "raw", "names: [a, b\n", CLASSES, "data.yaml")
    write(tmp_path / "raw/classes.txt", "\n".join(CLASSES) + "\n")  # a fallback must not hide the broken yaml
    with pytest.raises(UserError, match=r"data.yaml: not a YAML file Ultralytics can read \(ParserError"):
        organize.run(cfg, "target", tmp_path / "raw", tmp_path / "out")


def make_voc(raw):
    for i, split in enumerate(["train"] * 6 + ["valid"] * 3 + ["test"] * 3):
        boxes = render(raw / split / f"v{i}.jpg", i)
        (raw / split / f"v{i}.xml").write_text(voc_xml(f"v{i}.jpg", SIZE, boxes))


LAYOUTS = {
    "roboflow yolo": make_roboflow_yolo,
    "coco": lambda raw: make_coco(raw, "train", range(6)) | make_coco(raw, "valid", range(6, 9)) | make_coco(raw, "test", range(9, 12)),
    "voc": make_voc,
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_top_level_pool_folder_is_passed_through_and_never_read_as_annotated_data(tmp_path, cfg, layout):
    LAYOUTS[layout](tmp_path / "plain")
    plain = organize.run(cfg, "target", tmp_path / "plain", tmp_path / "plain_out")
    LAYOUTS[layout](tmp_path / "raw")
    pool = tmp_path / "raw/pool"
    for i in range(3):  # unlabelled images, one in a subfolder, beside files that look like every format's annotations
        render(pool / ("more" if i == 2 else "") / f"p{i}.jpg", 100 + i, 96)
    write(pool / "labels/p0.txt", "0 0.5 0.5 0.1 0.1\n")
    write(pool / "p1.xml", voc_xml("p1.jpg", 96, [(0, 0.5, 0.5, 0.2, 0.2)]))
    write(pool / "_annotations.coco.json", json.dumps({"images": [], "annotations": [], "categories": [{"id": 0, "name": "x"}]}))
    write(pool / "data.yaml", "names: [something, else]\n")
    report = organize.run(cfg, "target", tmp_path / "raw", tmp_path / "out")
    assert report["pool"] == {"found": 3, "images": 3, "skipped": 0, "duplicates_removed": 0, "removed": []}
    assert {k: v for k, v in report.items() if k != "pool"} == json.loads(json.dumps(plain).replace("plain", "raw"))
    assert sorted(p.name for p in (tmp_path / "out/images/pool").iterdir()) == ["p0.jpg", "p1.jpg", "p2.jpg"]
    assert not (tmp_path / "out/labels/pool").exists()
    assert set(yaml.safe_load((tmp_path / "out/data.yaml").read_text())) == {"train", "val", "test", "names"}
    assert "pool" not in plain and not (tmp_path / "plain_out/images/pool").exists()
