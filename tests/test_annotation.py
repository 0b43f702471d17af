"""Annotation packages (data/annotation.py): what select@ writes, and labels coming back as a dataset (kind: annotations)."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
import yaml
from PIL import Image

from stagetrain.config import parse
from stagetrain.data import annotation, organize, sources, synthetic
from stagetrain.errors import UserError


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> tuple[dict, Path]:
    """The shrunk target dataset with a pool of 6 images, downloaded (raw, read only: tests share it)."""
    from conftest import repo_params, shrink

    params = shrink(repo_params())
    params["datasets"]["target"]["synthetic"]["pool"] = 6
    raw = tmp_path_factory.mktemp("annotation") / "raw_target"
    sources.run(parse(params), "target", raw)
    return params, raw


def _picks(raw: Path, files: list[str]) -> list[annotation.Pick]:
    """Picks with two made-up detections each: one above, one below the pre-annotation threshold."""
    picks = []
    for rank, name in enumerate(files, 1):
        path = raw / "pool" / name
        with Image.open(path) as image:
            width, height = image.size
        detections = [(1, 0.9, 10.0, 12.0, 30.5, 40.0), (0, 0.1, 0.0, 0.0, 5.0, 5.0)]
        picks.append(annotation.Pick(path, rank, 1.0 - rank / 10, width, height, detections, {"max_conf": 0.9}))
    return picks


def _package(params: dict, raw: Path, out: Path, files: list[str]) -> Path:
    cfg = parse(params)
    meta = {"round": "round1", "dataset": "target", "strategy": "least_confidence"}
    annotation.write_package(out, _picks(raw, files), cfg.classes, meta, preannotate=0.25)
    return out


def _with_annotations(params: dict, package: Path, labels: str) -> dict:
    params = json.loads(json.dumps(params))
    params["datasets"]["round1"] = {"kind": "annotations", "annotations": {"package": str(package), "labels": labels}}
    return params


POOL = [f"target_pool_{i:05d}.jpg" for i in (4, 1, 3)]


def test_package_opens_and_its_coco_json_loads_with_pycocotools(target, tmp_path):
    from pycocotools.coco import COCO

    params, raw = target
    package = _package(params, raw, tmp_path / "package.zip", POOL)
    with zipfile.ZipFile(package) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "open")
    assert {f"images/{f}" for f in POOL} | {f"thumbnails/{Path(f).stem}.jpg" for f in POOL} <= names
    assert {"manifest.json", "guidelines.md", annotation.COCO_FILE} <= names
    assert (tmp_path / "open/images" / POOL[0]).read_bytes() == (raw / "pool" / POOL[0]).read_bytes()  # bytes unchanged
    coco = COCO(str(tmp_path / "open" / annotation.COCO_FILE))
    assert [coco.imgs[i]["file_name"] for i in sorted(coco.imgs)] == POOL  # in rank order, ids from 1
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(parse(params).classes) and min(coco.getCatIds()) == 1
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) == len(POOL)  # the 0.1-confidence detection is below preannotate: not a pre-annotation
    assert anns[0]["bbox"] == [10.0, 12.0, 20.5, 28.0] and anns[0]["area"] == pytest.approx(20.5 * 28.0)
    assert anns[0]["category_id"] == 2 and anns[0]["iscrowd"] == 0 and anns[0]["score"] == 0.9
    manifest = json.loads((tmp_path / "open/manifest.json").read_text())
    assert [(e["file"], e["rank"]) for e in manifest["images"]] == [(f, i) for i, f in enumerate(POOL, 1)]
    guidelines = (tmp_path / "open/guidelines.md").read_text()
    assert all(c in guidelines for c in parse(params).classes) and "left boundary" in guidelines
    with Image.open(tmp_path / "open/thumbnails" / f"{Path(POOL[0]).stem}.jpg") as thumb:
        assert max(thumb.size) <= annotation.THUMBNAIL
    again = _package(params, raw, tmp_path / "again.zip", POOL)
    assert again.read_bytes() == package.read_bytes()  # deterministic: DVC sees an unchanged rerun as unchanged


def test_oracle_import_gives_the_true_labels_and_organizes(target, tmp_path):
    params, raw = target
    package = _package(params, raw, tmp_path / "package.zip", POOL)
    cfg = parse(_with_annotations(params, package, "oracle"))
    out = tmp_path / "raw_round1"
    summary = sources.run(cfg, "round1", out)
    assert summary["returned"] == 3 and summary["not_returned"] == 0 and summary["format"] == "yolo"
    spec = cfg.datasets["target"].options
    for name in POOL:
        index = int(name.split("_")[-1].split(".")[0])
        _, boxes = synthetic.render(
            cfg.seed, "target", synthetic.index_of("pool", index), spec["size"], cfg.classes, synthetic.World.of(spec)
        )
        rows = [line.split() for line in (out / "labels/train" / f"{Path(name).stem}.txt").read_text().splitlines()]
        assert [(int(r[0]), *map(float, r[1:])) for r in rows] == [pytest.approx(b, abs=1e-6) for b in boxes]
    assert yaml.safe_load((out / "data.yaml").read_text())["names"] == dict(enumerate(cfg.classes))
    report = organize.run(cfg, "round1", out, tmp_path / "organized", [raw], workers=1)
    assert sum(report["images"].values()) == 3


def test_oracle_refuses_a_package_the_params_no_longer_render(target, tmp_path):
    params, raw = target
    package = _package(params, raw, tmp_path / "package.zip", POOL)
    changed = _with_annotations(params, package, "oracle")
    changed["seed"] = 1
    with pytest.raises(UserError, match=r"target_pool_00004.jpg differs from pool image 00004 of `target`"):
        sources.run(parse(changed), "round1", tmp_path / "out")


def test_returned_coco_json_imports_and_names_images_not_in_the_package(target, tmp_path):
    params, raw = target
    package = _package(params, raw, tmp_path / "package.zip", [*POOL, "target_pool_00000.jpg"])
    with zipfile.ZipFile(package) as archive:
        returned = json.loads(archive.read(annotation.COCO_FILE))
    returned["images"] = returned["images"][:3]  # the annotator returned three of four
    returned["annotations"] = [a for a in returned["annotations"] if a["image_id"] <= 3]
    labels = tmp_path / "returned.json"
    labels.write_text(json.dumps(returned))
    cfg = parse(_with_annotations(params, package, str(labels)))
    summary = sources.run(cfg, "round1", tmp_path / "raw_round1")
    assert summary["format"] == "coco" and summary["returned"] == 3 and summary["not_returned_files"] == ["target_pool_00000.jpg"]
    report = organize.run(cfg, "round1", tmp_path / "raw_round1", tmp_path / "organized", [raw], workers=1)
    assert sum(report["images"].values()) == 3 and sum(sum(b.values()) for b in report["boxes"].values()) == 3
    returned["images"].append({"id": 99, "file_name": "stranger.jpg", "width": 96, "height": 96})
    labels.write_text(json.dumps(returned))
    with pytest.raises(UserError, match=r"1 images were not in the package: stranger.jpg"):
        sources.run(cfg, "round1", tmp_path / "raw_round1")


def test_returned_yolo_folder_imports_and_names_unknown_files(target, tmp_path):
    params, raw = target
    package = _package(params, raw, tmp_path / "package.zip", POOL)
    labels = tmp_path / "labels"
    labels.mkdir()
    for name in POOL:
        (labels / f"{Path(name).stem}.txt").write_text("0 0.5 0.5 0.2 0.3\n")
    (labels / "classes.txt").write_text("\n".join(parse(params).classes))  # what CVAT writes beside YOLO labels: passed over
    cfg = parse(_with_annotations(params, package, str(labels)))
    summary = sources.run(cfg, "round1", tmp_path / "raw_round1")
    assert summary["format"] == "yolo" and summary["returned"] == 3
    assert (tmp_path / "raw_round1/labels/train/target_pool_00001.txt").read_text() == "0 0.5 0.5 0.2 0.3\n"
    (labels / "target_pool_00099.txt").write_text("")
    (labels / "notes.pdf").write_text("")
    with pytest.raises(UserError, match=r"2 files are not labels of a package image: notes.pdf, target_pool_00099.txt"):
        sources.run(cfg, "round1", tmp_path / "raw_round1")


def test_oracle_needs_a_synthetic_pool_and_a_real_package(target, tmp_path):
    params, raw = target
    package = _package(params, raw, tmp_path / "package.zip", POOL)
    with zipfile.ZipFile(package) as archive, zipfile.ZipFile(tmp_path / "other.zip", "w") as other:
        for name in archive.namelist():
            data = archive.read(name)
            if name == "manifest.json":
                data = json.dumps({**json.loads(data), "dataset": "source"}).encode()
            other.writestr(name, data)
    with pytest.raises(UserError, match=r"`labels: oracle` answers packages from a synthetic dataset's pool only"):
        sources.run(parse(_with_annotations(params, tmp_path / "other.zip", "oracle")), "round1", tmp_path / "out")
    (tmp_path / "not.zip").write_text("not a zip")
    with pytest.raises(UserError, match=r"not an annotation package written by select@<round>"):
        sources.run(parse(_with_annotations(params, tmp_path / "not.zip", "oracle")), "round1", tmp_path / "out")
    with pytest.raises(UserError, match=r"`datasets.round1.annotations.package` is '.*missing.zip', which does not exist"):
        sources.run(parse(_with_annotations(params, tmp_path / "missing.zip", "oracle")), "round1", tmp_path / "out")


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"package": "p.zip"}, r"missing key `datasets.round1.annotations.labels`"),
        ({"package": "p.zip", "labels": "oracle", "format": "coco"}, r"datasets.round1.annotations.*format"),
        ({"package": "", "labels": "oracle"}, r"`datasets.round1.annotations.package` is empty"),
        ({"package": "p.zip", "labels": 3}, r"datasets.round1.annotations.labels"),
    ],
)
def test_annotations_kind_config_names_the_key(target, block, message):
    params, _ = target
    params = json.loads(json.dumps(params))
    params["datasets"]["round1"] = {"kind": "annotations", "annotations": block}
    with pytest.raises(UserError, match=message):
        parse(params)


@pytest.mark.slow  # trains a model
def test_round_trip_package_oracle_import_train(target, tmp_path):
    """package -> oracle labels -> kind: annotations -> organize -> replayed into a stage's list -> 1 epoch of training."""
    from stagetrain.data import trainset
    from stagetrain.train import checkpoint, runner

    params, raw = target
    package = _package(params, raw, tmp_path / "package.zip", [f"target_pool_{i:05d}.jpg" for i in range(6)])
    params = _with_annotations(params, package, "oracle")
    params["stages"]["stage2"]["replay"] = {"round1": 1.0}
    cfg = parse(params)
    organized = tmp_path / "data/organized"
    shutil.copytree(raw, tmp_path / "raw/target")
    sources.run(cfg, "round1", tmp_path / "raw/round1")
    organize.run(cfg, "target", tmp_path / "raw/target", organized / "target", [tmp_path / "raw/round1"], workers=1)
    organize.run(cfg, "round1", tmp_path / "raw/round1", organized / "round1", [tmp_path / "raw/target"], workers=1)
    manifest = trainset.run(cfg, "stage2", organized, tmp_path / "data/trainsets/stage2")
    imported = len(list((organized / "round1/images/train").iterdir()))
    assert imported >= 1 and manifest["replayed_images"]["round1"] == imported
    checkpoint.build_base(cfg, tmp_path / "base.pt")
    metrics = runner.run(
        cfg,
        "stage2",
        tmp_path / "data/trainsets/stage2/data.yaml",
        tmp_path / "base.pt",
        tmp_path / "out",
        tmp_path / "live",
        tmp_path / "work",
    )
    assert (tmp_path / "out/best.pt").exists() and metrics["epochs_run"] == 1
