"""mine@<stage> (hard-negative mining) and the mined images trainset@<stage> adds, on tiny data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stagetrain import mine
from stagetrain.config import parse
from stagetrain.data import organize, sources, trainset
from stagetrain.errors import UserError
from stagetrain.stats.matching import Detections, GroundTruth

DATASETS = ("source", "target")


def test_false_positives_are_unmatched_detections_of_three_kinds():
    gt = GroundTruth(np.array([0, 1]), np.array([[0.1, 0.1, 0.3, 0.3], [0.6, 0.6, 0.8, 0.8]]))
    det = Detections(
        classes=np.array([0, 0, 0, 2, 1]),
        scores=np.array([0.9, 0.8, 0.7, 0.6, 0.5]),
        boxes=np.array(
            [
                [0.1, 0.1, 0.3, 0.3],  # true positive
                [0.11, 0.1, 0.3, 0.3],  # the same cone again: duplicate
                [0.4, 0.0, 0.5, 0.1],  # nothing there: background
                [0.6, 0.6, 0.8, 0.8],  # a class-1 cone called class 2: confusion
                [0.61, 0.6, 0.8, 0.8],  # true positive
            ]
        ),
    )
    found = mine.false_positives(gt, det, iou=0.5)
    assert [(fp["kind"], fp["class"], fp["conf"]) for fp in found] == [("duplicate", 0, 0.8), ("background", 0, 0.7), ("confusion", 2, 0.6)]
    assert found[1]["box"] == [0.4, 0.0, 0.5, 0.1]
    assert mine.false_positives(GroundTruth(np.zeros(0), np.zeros((0, 4))), det, iou=0.5)[0]["kind"] == "background"
    assert len(mine.false_positives(gt, det, iou=0.99)) == 4  # a stricter IoU unmatches the shifted box too


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"conff": 0.4}, r"unknown key `stages.stage3.hard_negatives.conff`; did you mean `conf`"),
        ({"conf": 1.5}, r"`stages.stage3.hard_negatives.conf` is 1.5; use a value in \(0, 1\)"),
        ({"iou": 0}, r"`stages.stage3.hard_negatives.iou` is 0.0; use a value in \(0, 1\)"),
        ({"copies": 0}, r"`stages.stage3.hard_negatives.copies` is 0; use a value >= 1"),
        ({"copies": 1.5}, r"`stages.stage3.hard_negatives.copies` must be an integer"),
        ({"max_images": 0}, r"`stages.stage3.hard_negatives.max_images` is 0; use a value >= 1"),
        ({"pool": "sorce"}, r"`stages.stage3.hard_negatives.pool` names no dataset: 'sorce'; .* did you mean `source`"),
        ({"pool": "target"}, r"`stages.stage3.hard_negatives.pool` is the stage's own dataset"),
        ([0.4], r"`stages.stage3.hard_negatives` must be a mapping"),
    ],
)
def test_hard_negative_params_are_validated(params, block, message):
    params["stages"]["stage3"]["hard_negatives"] = block
    with pytest.raises(UserError, match=message):
        parse(params)


def test_hard_negative_defaults(params):
    params["stages"]["stage3"]["hard_negatives"] = {}
    spec = parse(params).stages["stage3"].hard_negatives
    assert (spec.conf, spec.iou, spec.copies, spec.pool, spec.max_images) == (0.4, 0.5, 1, None, None)
    params["stages"]["stage3"]["hard_negatives"] = None
    assert parse(params).stages["stage3"].hard_negatives is None


def test_a_stage_without_hard_negatives_mines_nothing_and_loads_no_model(params, tmp_path):
    mined = mine.run(parse(params), "stage2", tmp_path / "no-such.pt", tmp_path / "organized", tmp_path / "mined")
    assert mined == {"stage": "stage2", "model": "stage1", "dataset": "target", "settings": None}
    assert json.loads((tmp_path / "mined/mined.json").read_text()) == mined


# --- a real model on real images ----------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Both datasets organized (writable copies), and a model trained one epoch on the target (a few seconds)."""
    from conftest import repo_params, shrink
    from stagetrain import ultra
    from stagetrain.train import checkpoint

    tmp = tmp_path_factory.mktemp("mining")
    params = shrink(repo_params(), images=24, size=64, imgsz=32)
    cfg = parse(params)
    for dataset in DATASETS:
        sources.run(cfg, dataset, tmp / "raw" / dataset)
    for dataset in DATASETS:
        others = [tmp / "raw" / d for d in DATASETS if d != dataset]
        organize.run(cfg, dataset, tmp / "raw" / dataset, tmp / "data/organized" / dataset, others, workers=1)
    checkpoint.build_base(cfg, tmp / "base.pt")
    model = ultra.YOLO(str(tmp / "base.pt"))
    args = {"epochs": 1, "imgsz": 32, "batch": 8, "device": "cpu", "workers": 0, "plots": False, "seed": 0, "deterministic": True}
    model.train(data=str(tmp / "data/organized/target/data.yaml"), project=str(tmp), name="run", exist_ok=True, verbose=False, **args)
    (tmp / "models/stage2").mkdir(parents=True)
    shutil.copyfile(tmp / "run/weights/last.pt", tmp / "models/stage2/best.pt")
    return tmp, params


def _label(image: Path) -> Path:
    return image.parent.parent.parent / "labels" / image.parent.name / (image.stem + ".txt")


def _rows(det: Detections) -> list[str]:
    """YOLO label rows (class x y w h) of detections, so that each is a labelled box."""
    rows = []
    for cls, (x1, y1, x2, y2) in zip(det.classes, det.boxes, strict=True):
        rows.append(f"{cls} {(x1 + x2) / 2:.6f} {(y1 + y2) / 2:.6f} {x2 - x1:.6f} {y2 - y1:.6f}")
    return rows


@pytest.mark.slow  # trains a model (1 epoch, 32 px)
def test_mining_finds_a_planted_false_positive_and_trainset_adds_it(world):
    """Label every detection of the model on the train images (no false positive left), then take one label away
    (a planted background false positive) and relabel another box's class (a confusion): exactly those images are mined,
    each with that one box; trainset@stage3 then lists them 1 + copies times, and a stale or missing mined.json is refused."""
    tmp, params = world
    conf = 0.001  # a 1-epoch model is unsure of everything: a low threshold still gives each image a detection or more
    params["stages"]["stage3"]["hard_negatives"] = {"conf": conf, "copies": 2}
    cfg = parse(params)
    organized, weights = tmp / "data/organized", tmp / "models/stage2/best.pt"
    images = sorted((organized / "target/images/train").iterdir())
    detections = mine.detect(weights, images, cfg, conf, "cpu")
    assert all(d.scores.size for d in detections), "every image needs a detection to plant a false positive on"
    originals = {image: _label(image).read_text() for image in images}
    try:
        for image, det in zip(images, detections, strict=True):
            _label(image).write_text("\n".join(_rows(det)) + "\n")
        background, confusion = images[1], images[3]
        top = int(np.argmax(detections[1].scores))
        kept = [row for i, row in enumerate(_rows(detections[1])) if i != top]
        _label(background).write_text("".join(f"{row}\n" for row in kept))  # may leave it background-only: that is fine
        swapped = _rows(detections[3])
        first = int(np.argmax(detections[3].scores))
        cls = int(detections[3].classes[first])
        swapped[first] = f"{(cls + 1) % len(cfg.classes)}" + swapped[first][len(str(cls)) :]
        _label(confusion).write_text("\n".join(swapped) + "\n")

        mined = mine.run(cfg, "stage3", weights, organized, tmp / "data/mined/stage3")
        assert mined["scanned_images"] == {"target": len(images)}
        assert sorted((s["image"], s["false_positives"]) for s in mined["selected"]) == sorted([(background.name, 1), (confusion.name, 1)])
        found = {item["image"]: item["false_positives"] for item in mined["images"]}
        assert set(found) == {background.name, confusion.name}
        (planted,) = found[background.name]
        assert planted["box"] == pytest.approx(detections[1].boxes[top].tolist(), abs=1e-4) and planted["kind"] in (
            "background",
            "duplicate",
        )
        assert planted["conf"] == pytest.approx(float(detections[1].scores[top]), abs=1e-5)
        (called,) = found[confusion.name]
        assert called["kind"] == "confusion" and called["class"] == cls
        assert mined["false_positives"] == 2 and mined["images_with_false_positives"] == 2

        # trainset@stage3: the two mined images, 1 + copies times each
        out = tmp / "data/trainsets/stage3"
        manifest = trainset.run(cfg, "stage3", organized, out, tmp / "data/mined/stage3")
        listed = [os.path.normpath(out / line) for line in (out / "train.txt").read_text().splitlines()]
        counts = {Path(p).name: listed.count(p) for p in set(listed)}
        assert counts[background.name] == counts[confusion.name] == 3 and sum(counts.values()) == len(images) + 4
        assert manifest["mined_images"] == 4 and manifest["mined"]["selected_images"] == 2 and manifest["mined"]["added"] == 4
        assert manifest["mined"]["false_positives_found"] == 2
        assert trainset.summary(cfg, "stage3", out / "data.yaml")["mined_images"] == 4

        # max_images keeps the one with the most (then the most confident) false positives
        params["stages"]["stage3"]["hard_negatives"]["max_images"] = 1
        capped = mine.run(parse(params), "stage3", weights, organized, tmp / "capped")
        assert len(capped["selected"]) == 1 and len(capped["left_out_by_max_images"]) == 1
        with pytest.raises(UserError, match=r"mined.json: written for .* rerun mine@stage3"):  # settings changed since
            trainset.run(parse(params), "stage3", organized, out, tmp / "data/mined/stage3")
        with pytest.raises(UserError, match=r"not found, but `stages.stage3.hard_negatives` is set; run mine@stage3"):
            trainset.run(parse(params), "stage3", organized, out, tmp / "nowhere")
    finally:
        for image, text in originals.items():
            _label(image).write_text(text)


@pytest.mark.slow  # uses the trained model
def test_a_background_pool_is_mined_whole_through_the_cli(world):
    """The DVC command: with `pool: source` whose labels are all removed, every source image with a detection is mined."""
    import yaml

    from conftest import REPO

    tmp, params = world
    params["stages"]["stage3"]["hard_negatives"] = {"conf": 0.001, "pool": "source"}
    (tmp / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    labels = tmp / "data/organized/source/labels/train"
    saved = {p: p.read_text() for p in labels.glob("*.txt")}
    try:
        for p in saved:
            p.write_text("")  # background-only images: any detection is a false positive
        cmd = [sys.executable, str(REPO / "stages/mine.py"), "--params", "params.yaml", "stage3", "--model", "models/stage2/best.pt"]
        cmd += ["--organized", "data/organized", "--out", "data/mined/pool"]
        proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        mined = json.loads((tmp / "data/mined/pool/mined.json").read_text())
        sources_mined = [s for s in mined["selected"] if s["dataset"] == "source"]
        assert len(sources_mined) == mined["scanned_images"]["source"] == len(saved)
        assert all(fp["kind"] == "background" for item in mined["images"] if item["dataset"] == "source" for fp in item["false_positives"])
        assert f"{len(mined['selected'])} mined" in proc.stdout
    finally:
        for p, text in saved.items():
            p.write_text(text)
