"""evaluate on real (tiny) checkpoints: metrics, the pycocotools cross-check, TTA, the dvc plots rows, the
paired bootstrap against the baseline (a model against itself: no difference; against a degraded copy: worse),
and the forgetting matrix over several datasets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
import yaml

from conftest import repo_params, shrink
from stagetrain import evaluate, forgetting, report, stats
from stagetrain.config import parse
from stagetrain.data import organize, sources
from stagetrain.errors import UserError
from stagetrain.train import checkpoint, runner

MODEL = "baseline"


def trained_workspace(root: Path) -> Path:
    """Synthetic target data and a 1-epoch `baseline` checkpoint in ``root``, built once per test session.

    test_export.py reuses the same folder (it lives under pytest's session base temp dir).
    """
    if (root / "models" / MODEL / "best.pt").exists():
        return root
    cfg = parse(shrink(repo_params()))
    sources.run(cfg, "target", root / "raw")
    organize.run(cfg, "target", root / "raw", root / "organized")
    checkpoint.build_base(cfg, root / "base.pt")
    runner.run(cfg, MODEL, root / "organized/data.yaml", root / "base.pt", root / "out", root / "live", root / "work")
    (root / "models" / MODEL).mkdir(parents=True)
    shutil.copyfile(root / "out/best.pt", root / "models" / MODEL / "best.pt")
    return root


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return trained_workspace(tmp_path_factory.getbasetemp() / "trained")


def eval_params(**evaluate_keys) -> dict:
    """Test params scoring `baseline` on `target` alone (the forgetting matrix's own tests widen `datasets`)."""
    params = shrink(repo_params())
    params["evaluate"].update({"models": [MODEL], "datasets": ["target"], "ensembles": {}, **evaluate_keys})  # no stage3 here
    return params


def target_data(workspace: Path) -> dict[str, Path]:
    return {"target": workspace / "organized/data.yaml"}


def label_lines(labels: Path) -> int:
    return sum(len([line for line in f.read_text().splitlines() if line.strip()]) for f in labels.glob("*.txt"))


@pytest.mark.slow  # trains a model
def test_real_model_metrics_cross_check_and_plots(workspace, tmp_path):
    cfg = parse(eval_params())
    results = evaluate.run(cfg, target_data(workspace), workspace / "models", tmp_path / "work", tmp_path / "plots")
    m = results[MODEL]
    assert {"mAP50", "mAP50-95", "precision", "recall", "coco_mAP50", "coco_mAP50-95", "inference_ms_per_image"} <= set(m)
    assert set(m["per_class"]) == set(cfg.classes) and m["tta"] is False
    assert m["detections"] > 0  # a 1-epoch model scores ~0, but both scorers do see its predictions (see the next test)
    assert abs(m["coco_mAP50-95"] - m["mAP50-95"]) <= 0.01 and m["coco_delta_mAP50-95"] == pytest.approx(
        m["coco_mAP50-95"] - m["mAP50-95"], abs=1e-5
    )
    assert m["images"] == len(list((workspace / "organized/images/test").iterdir()))
    assert m["instances"] == label_lines(workspace / "organized/labels/test") > 0
    assert not (tmp_path / "work").exists()

    pr = json.loads((tmp_path / "plots/pr" / f"{MODEL}.json").read_text())
    assert len(pr) == evaluate.PR_POINTS and pr[0]["recall"] == 0 and pr[-1]["recall"] == 1
    assert all(0 <= row["precision"] <= 1 for row in pr)
    confusion = json.loads((tmp_path / "plots/confusion" / f"{MODEL}.json").read_text())
    names = {*cfg.classes, evaluate.BACKGROUND}
    assert all(set(row) == {"actual", "predicted"} and {row["actual"], row["predicted"]} <= names for row in confusion)
    # every ground-truth box is one row: matched to a class, or missed (predicted background)
    assert sum(row["actual"] != evaluate.BACKGROUND for row in confusion) == m["instances"]


class GroundTruthValidator(evaluate.EvalValidator):
    """Ultralytics' real validator fed the ground truth as predictions: jittered boxes, random scores,
    a fifth of the classes wrong, and spurious boxes. A non-trivial mAP that both scorers must agree on."""

    jitter = 0.05  # box noise, as a fraction of the box size
    wrong = 0.2  # fraction of boxes given the next class

    def update_metrics(self, preds: list[dict], batch: dict) -> None:
        generator = torch.Generator().manual_seed(self.seen)
        oracle = []
        for si in range(len(preds)):
            gt = self._prepare_batch(si, batch)
            n, size = len(gt["cls"]), float(max(gt["imgsz"]))
            wh = (gt["bboxes"][:, 2:] - gt["bboxes"][:, :2]).repeat(1, 2)
            # IoUs spread over 0.5-0.95: mAP50-95 well below mAP50
            boxes = gt["bboxes"] + self.jitter * wh * torch.randn(n, 4, generator=generator)
            cls = gt["cls"].clone()
            wrong = torch.rand(n, generator=generator) < self.wrong
            cls[wrong] = (cls[wrong] + 1) % self.nc
            xy = torch.rand(2, 2, generator=generator) * size * 0.8
            spurious = torch.cat([xy, xy + size * 0.2], 1)
            oracle.append(
                {
                    "bboxes": torch.cat([boxes, spurious]),
                    "conf": torch.rand(n + 2, generator=generator),
                    "cls": torch.cat([cls, torch.tensor([0.0, 1.0])]),
                    "extra": torch.zeros(n + 2, 0),
                }
            )
        super().update_metrics(oracle, batch)


@pytest.mark.slow  # trains a model
def test_cross_check_agrees_on_a_non_trivial_score(workspace, tmp_path):
    """Same predictions, two scorers: a wrong image id, category id or coordinate scale would put COCO near 0."""
    cfg = parse(eval_params(split="train"))  # the largest split: more boxes, smoother PR curves
    m = evaluate.run(cfg, target_data(workspace), workspace / "models", tmp_path / "work", validator=GroundTruthValidator)[MODEL]
    assert 0.2 < m["mAP50-95"] < 0.8 and m["mAP50"] > 0.3
    assert abs(m["coco_mAP50-95"] - m["mAP50-95"]) <= 0.01
    assert abs(m["coco_mAP50"] - m["mAP50"]) <= 0.02


def two_names_for_one_checkpoint(workspace: Path, models: Path) -> Path:
    """``models/{baseline,stage3}/best.pt``: the workspace's one checkpoint under both names evaluate compares."""
    for name in ("baseline", "stage3"):
        (models / name).mkdir(parents=True)
        shutil.copyfile(workspace / "models" / MODEL / "best.pt", models / name / "best.pt")
    return models


@pytest.mark.slow  # trains a model
@pytest.mark.parametrize(
    "validator, split",
    [(evaluate.EvalValidator, "test"), (GroundTruthValidator, "train")],
    ids=["checkpoint-predictions", "ground-truth-oracle"],  # the 1-epoch checkpoint scores ~0: the oracle makes 0 == 0 non-trivial
)
def test_a_model_against_itself_shows_no_difference(workspace, tmp_path, validator, split):
    cfg = parse(eval_params(models=["stage3", "baseline"], split=split))
    models = two_names_for_one_checkpoint(workspace, tmp_path / "models")
    results = evaluate.run(cfg, target_data(workspace), models, tmp_path / "work", validator=validator)
    versus = results["stage3"]["vs_baseline"]
    assert "vs_baseline" not in results["baseline"] and versus["direction"] == "model - baseline"
    expected = (results["baseline"]["images"], cfg.evaluate.resamples, cfg.seed, cfg.evaluate.margin)
    assert (versus["images"], versus["resamples"], versus["seed"], versus["margin"]) == expected
    for metric in ("map50_95", "map50"):
        assert versus[metric]["diff"] == 0 and versus[metric]["ci_low"] <= 0 <= versus[metric]["ci_high"]
    # the bootstrap scores the very predictions pycocotools scored, the same way
    assert versus["map50_95"]["baseline"] == pytest.approx(results["baseline"]["coco_mAP50-95"], abs=2e-6)
    assert versus["map50_95"]["baseline"] > 0.2 or validator is evaluate.EvalValidator
    assert versus["verdict"] == "no detectable difference" and versus["seconds"] < 30
    assert versus["sentence"].startswith("No detectable difference: prefer the simpler model")
    text = report.verdict(cfg, {}, results)
    assert text.startswith("**No detectable difference** between `stage3` and `baseline`")
    assert json.loads(json.dumps(results)) == results  # eval.json holds it as it is


class DegradedCopyValidator(GroundTruthValidator):
    """The ground-truth oracle for `baseline`; for `stage3`, three times the box noise and half the classes wrong.

    A 1-epoch checkpoint scores ~0 mAP, so no checkpoint of it can be significantly worse: the degraded
    predictions are made here instead, and travel the real path (validator, predictions.json, bootstrap).
    """

    def update_metrics(self, preds: list[dict], batch: dict) -> None:
        if Path(self.save_dir).name == "stage3":  # evaluate runs each model in a folder named after it
            self.jitter, self.wrong = 0.15, 0.5
        super().update_metrics(preds, batch)


@pytest.mark.slow  # trains a model
def test_a_degraded_copy_is_significantly_worse(workspace, tmp_path):
    cfg = parse(eval_params(models=["stage3", "baseline"], split="train"))  # the largest split: the tightest interval
    models = two_names_for_one_checkpoint(workspace, tmp_path / "models")
    results = evaluate.run(cfg, target_data(workspace), models, tmp_path / "work", validator=DegradedCopyValidator)
    versus = results["stage3"]["vs_baseline"]
    assert versus["map50_95"]["diff"] < 0 and versus["map50_95"]["ci_high"] < -cfg.evaluate.margin
    assert versus["map50"]["ci_high"] < 0 and versus["verdict"] == "keep baseline"
    for name, key in (("baseline", "baseline"), ("stage3", "model")):  # the bootstrap's mAP is pycocotools' on the same predictions
        assert versus["map50_95"][key] == pytest.approx(results[name]["coco_mAP50-95"], abs=2e-6)
        assert versus["map50"][key] == pytest.approx(results[name]["coco_mAP50"], abs=2e-6)
    assert report.verdict(cfg, {}, results).startswith("**Keep `baseline`**: `stage3` is worse by more than the 1.0 pt margin")
    written = evaluate.write_model_metrics(results, tmp_path / "metrics/test")  # the DVC metrics: one flat file per model
    models = sorted(f"{name}.json" for name in results if name != evaluate.FORGETTING)  # evaluate.ensembles' too
    assert sorted(p.name for p in written) == sorted(p.name for p in (tmp_path / "metrics/test").iterdir()) == models
    row = json.loads((tmp_path / "metrics/test/stage3.json").read_text())
    interval = {k: versus["map50_95"][k] for k in ("diff", "ci_low", "ci_high")}
    assert row == {**{k: results["stage3"][k] for k in evaluate.MODEL_METRICS}, "vs_baseline": {**interval, "verdict": "keep baseline"}}
    assert json.loads((tmp_path / "metrics/test/baseline.json").read_text()) == {k: results["baseline"][k] for k in evaluate.MODEL_METRICS}


class RecordingValidator(evaluate.EvalValidator):
    augment: ClassVar[list[bool]] = []

    def init_metrics(self, model) -> None:
        RecordingValidator.augment.append(bool(self.args.augment))
        super().init_metrics(model)


@pytest.mark.slow  # trains a model
def test_tta_reaches_the_validator(workspace, tmp_path):
    cfg = parse(eval_params(tta=True))
    m = evaluate.run(cfg, target_data(workspace), workspace / "models", tmp_path / "work", validator=RecordingValidator)[MODEL]
    assert RecordingValidator.augment == [True] and m["tta"] is True


def synthetic_coco(seed: int = 0, images: int = 40) -> tuple[dict, list[dict]]:
    """COCO ground truth (image ids unlike their order, an image without boxes) and near-perfect predictions of it."""
    rng = np.random.default_rng(seed)
    gt: dict = {"images": [], "annotations": [], "categories": [{"id": c + 1, "name": f"c{c}"} for c in range(5)]}
    predictions = []
    for i in range(images):
        gt["images"].append({"id": 10 * (images - i), "file_name": f"im{i}.jpg", "width": 256, "height": 192})
        for _ in range(int(rng.integers(0 if i == 0 else 1, 6))):
            x, y, w, h, cls = *rng.uniform(0, 150, 2), *rng.uniform(8, 60, 2), int(rng.integers(0, 4))  # class 5: never labelled
            ann = {"image_id": gt["images"][-1]["id"], "category_id": cls + 1, "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0}
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, **ann})
            noisy = [x, y, w, h] + rng.normal(0, 0.06, 4) * [w, h, w, h]
            predictions.append({"file_name": f"im{i}.jpg", "category_id": cls + 1, "bbox": noisy.tolist(), "score": rng.uniform(0.3, 1)})
        x, y = rng.uniform(0, 150, 2)  # a false positive per image, of any class
        predictions.append(
            {"file_name": f"im{i}.jpg", "category_id": int(rng.integers(1, 6)), "bbox": [x, y, 20, 20], "score": rng.uniform()}
        )
    rng.shuffle(predictions)  # Ultralytics writes them per batch; the records must not depend on the order
    return gt, predictions


def degraded(predictions: list[dict], seed: int = 1) -> list[dict]:
    """The same predictions with much noisier boxes: fewer matches at the high IoU thresholds of mAP50-95."""
    rng = np.random.default_rng(seed)
    return [{**p, "bbox": (np.array(p["bbox"]) + rng.normal(0, 0.2, 4) * np.array(p["bbox"])[[2, 3, 2, 3]]).tolist()} for p in predictions]


def test_detection_records_score_like_pycocotools():
    """COCO xywh -> xyxy, image ids, file names and category ids converted right: the same mAP as pycocotools."""
    gt, predictions = synthetic_coco()
    for preds in (predictions, degraded(predictions), []):
        records = evaluate.detection_records(gt, preds, n_classes=5)
        observed, coco = stats.mean_ap(records), evaluate.coco_scores(gt, preds)
        assert records.n_images == 40 and records.score.size == len(preds)
        assert observed.map50_95 == pytest.approx(coco["mAP50-95"], abs=1e-9) and observed.map50 == pytest.approx(coco["mAP50"], abs=1e-9)


def test_versus_baseline_against_itself_and_a_degraded_copy(params):
    cfg = parse(params)
    gt, predictions = synthetic_coco()
    baseline = evaluate.detection_records(gt, predictions, len(cfg.classes))
    same = evaluate.versus_baseline(baseline, evaluate.detection_records(gt, list(reversed(predictions)), len(cfg.classes)), cfg)
    assert same["map50_95"]["diff"] == same["map50_95"]["ci_low"] == same["map50_95"]["ci_high"] == 0
    assert same["verdict"] == "no detectable difference" and same["map50_95"]["detectable"] == 0
    worse = evaluate.versus_baseline(baseline, evaluate.detection_records(gt, degraded(predictions), len(cfg.classes)), cfg)
    assert worse["map50_95"]["ci_high"] < -cfg.evaluate.margin and worse["verdict"] == "keep baseline"
    assert worse["map50_95"]["detectable"] > 0 and worse["seconds"] < 10
    again = evaluate.versus_baseline(baseline, evaluate.detection_records(gt, degraded(predictions), len(cfg.classes)), cfg)
    assert {**again, "seconds": 0} == {**worse, "seconds": 0}  # seeded: the same inputs give the same interval


def test_user_errors_name_the_key_or_file(tmp_path):
    with pytest.raises(UserError, match=r"`evaluate.tta` must be true or false"):
        parse(eval_params(tta="yes"))
    with pytest.raises(UserError, match=r"unknown key `evaluate.ttta`; did you mean `tta`"):
        parse(eval_params(ttta=True))
    data = tmp_path / "data.yaml"
    data.write_text("train: images/train\nval: images/val\nnames: {0: a}\n")
    with pytest.raises(UserError, match=r"data.yaml: no `test` split"):
        evaluate.split_images(data, "test")


def counting(validator: type) -> type:
    """``validator`` that records the (dataset, model) of every checkpoint it scores (evaluate's work folders)."""

    class Counted(validator):
        scored: ClassVar[list[tuple[str, str]]] = []

        def init_metrics(self, model) -> None:
            Counted.scored.append(tuple(Path(self.save_dir).parts[-2:]))
            super().init_metrics(model)

    return Counted


def matrix_data(workspace: Path, root: Path, cfg) -> dict[str, Path]:
    """target (the workspace's), source (organized here, nothing trained on it) and pool (no `train` split)."""
    sources.run(cfg, "source", root / "raw_source")
    organize.run(cfg, "source", root / "raw_source", root / "source")
    data = yaml.safe_load((workspace / "organized/data.yaml").read_text())
    (root / "pool").mkdir()
    (root / "pool/data.yaml").write_text(yaml.safe_dump({k: v for k, v in data.items() if k != "train"}))
    return {**target_data(workspace), "source": root / "source/data.yaml", "pool": root / "pool/data.yaml"}


@pytest.mark.slow  # trains a model
def test_forgetting_matrix_scores_every_pair_once(workspace, tmp_path):
    """stage1 -> stage2 -> stage3 and baseline are one checkpoint and the ground-truth oracle scores them all alike:
    every drop is exactly 0 (CI contains 0) on a non-trivial score; stage3's reference on `source` is stage1."""
    params = eval_params(models=["stage3", "baseline"], split="train", datasets=["source", "target", "pool"])
    params["datasets"]["pool"] = params["datasets"]["target"]
    cfg = parse(params)
    models = two_names_for_one_checkpoint(workspace, tmp_path / "models")
    shutil.copytree(models / "stage3", models / "stage1")  # a reference outside `evaluate.models`
    validator = counting(GroundTruthValidator)
    results = evaluate.run(cfg, matrix_data(workspace, tmp_path, cfg), models, tmp_path / "work", validator=validator)
    # target's pairs are the verdict's, reused; stage1 is scored on source only, as stage3's reference there
    expected = [("target", "stage3"), ("target", "baseline"), ("source", "stage3"), ("source", "baseline"), ("source", "stage1")]
    assert validator.scored == expected
    matrix = results["forgetting"]
    assert list(matrix["datasets"]) == ["source", "target", "pool"]
    assert matrix["datasets"]["pool"] == {"skipped": "no `train` split in its data.yaml"}
    source, target = matrix["datasets"]["source"], matrix["datasets"]["target"]
    assert source["images"] == len(list((tmp_path / "source/images/train").iterdir())) and source["instances"] > 0
    assert list(source["models"]) == list(target["models"]) == ["stage3", "baseline"]
    drop = source["models"]["stage3"]
    assert drop["reference"] == "stage1" and drop["mAP50-95"] > 0.2
    for metric in ("drop_mAP50-95", "drop_mAP50"):
        assert drop[metric]["diff"] == 0 and drop[metric]["ci_low"] <= 0 <= drop[metric]["ci_high"]
    assert source["models"]["baseline"]["reference"] is None and source["models"]["baseline"]["note"] == "not trained on it"
    for name in ("stage3", "baseline"):  # trained on target: no drop, and the very score of the verdict's table
        assert target["models"][name]["reference"] == name and "drop_mAP50-95" not in target["models"][name]
        assert target["models"][name]["mAP50-95"] == pytest.approx(results[name]["coco_mAP50-95"], abs=2e-6)
    assert set(results) == {"stage3", "baseline", "forgetting", *cfg.evaluate.ensembles} and json.loads(json.dumps(results)) == results
    text = report.render(cfg, {}, results)
    assert text.index("## Verdict") < text.index("## Forgetting matrix")
    assert f"| model | source ({source['images']} train images) | target ({target['images']} train images) |" in text
    assert "| stage3 | " in text and "(+0.0 [+0.0, +0.0] vs stage1)" in text and "(not trained on it)" in text
    assert "Not scored: `pool`: no `train` split in its data.yaml." in text
    assert "Reading: `stage3` kept its mAP50-95 on `source` vs `stage1` within noise" in text
    # issue 12: the small metrics files and the heatmap rows carry the matrix's cells, nothing else of it
    rows = evaluate.model_metrics(results)
    assert {"stage3", "baseline"} <= set(rows) and rows["stage3"]["drop_mAP50-95"] == {"source": drop["drop_mAP50-95"]["diff"]}
    assert "drop_mAP50-95" not in rows["baseline"] and rows["stage3"]["mAP50-95"] == results["stage3"]["mAP50-95"]
    cells = forgetting.chart_rows(matrix)
    assert [(r["model"], r["dataset"]) for r in cells] == [(m, d) for d in ("source", "target") for m in ("stage3", "baseline")]
    assert cells[0] == {"model": "stage3", "dataset": "source", "map50_95": drop["mAP50-95"], "drop": drop["drop_mAP50-95"]["diff"]}
    assert all(r["drop"] is None for r in cells[1:])


def test_unscorable_datasets_say_why(tmp_path):
    data = tmp_path / "data.yaml"
    data.write_text("train: images/train\nval: images/val\nnames: {0: a}\n")
    assert evaluate.unscorable(data, "test") == "no `test` split in its data.yaml"
    data.write_text("train: images/train\ntest: images/test\nnames: {0: a}\n")
    (tmp_path / "images/test").mkdir(parents=True)
    assert evaluate.unscorable(data, "test") == "its `test` split holds no images"
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / "images/test" / name).write_bytes(b"")  # listed by name, never opened
    (tmp_path / "labels/test").mkdir(parents=True)
    (tmp_path / "labels/test/a.txt").write_text("")  # an image without boxes; b.jpg has no label file at all
    assert evaluate.unscorable(data, "test") == "its `test` split holds no labelled box (2 images): mAP is undefined"
    (tmp_path / "labels/test/b.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    assert evaluate.unscorable(data, "test") is None
    with pytest.raises(UserError, match=r"missing/data.yaml does not exist; run organize for that dataset first"):
        evaluate.unscorable(tmp_path / "missing/data.yaml", "test")
