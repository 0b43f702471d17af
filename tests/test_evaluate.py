"""evaluate on real (tiny) checkpoints: metrics, the pycocotools cross-check, TTA, and the dvc plots rows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from conftest import repo_params, shrink
from stagetrain import evaluate
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
    params = shrink(repo_params())
    params["evaluate"].update(models=[MODEL], **evaluate_keys)
    return params


def label_lines(labels: Path) -> int:
    return sum(len([line for line in f.read_text().splitlines() if line.strip()]) for f in labels.glob("*.txt"))


@pytest.mark.slow  # trains a model
def test_real_model_metrics_cross_check_and_plots(workspace, tmp_path):
    cfg = parse(eval_params())
    results = evaluate.run(cfg, workspace / "organized/data.yaml", workspace / "models", tmp_path / "work", tmp_path / "plots")
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

    def update_metrics(self, preds: list[dict], batch: dict) -> None:
        generator = torch.Generator().manual_seed(self.seen)
        oracle = []
        for si in range(len(preds)):
            gt = self._prepare_batch(si, batch)
            n, size = len(gt["cls"]), float(max(gt["imgsz"]))
            wh = (gt["bboxes"][:, 2:] - gt["bboxes"][:, :2]).repeat(1, 2)
            boxes = gt["bboxes"] + 0.05 * wh * torch.randn(
                n, 4, generator=generator
            )  # IoUs spread over 0.5-0.95: mAP50-95 well below mAP50
            cls = gt["cls"].clone()
            wrong = torch.rand(n, generator=generator) < 0.2
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
    m = evaluate.run(cfg, workspace / "organized/data.yaml", workspace / "models", tmp_path / "work", validator=GroundTruthValidator)[MODEL]
    assert 0.2 < m["mAP50-95"] < 0.8 and m["mAP50"] > 0.3
    assert abs(m["coco_mAP50-95"] - m["mAP50-95"]) <= 0.01
    assert abs(m["coco_mAP50"] - m["mAP50"]) <= 0.02


class RecordingValidator(evaluate.EvalValidator):
    augment: ClassVar[list[bool]] = []

    def init_metrics(self, model) -> None:
        RecordingValidator.augment.append(bool(self.args.augment))
        super().init_metrics(model)


@pytest.mark.slow  # trains a model
def test_tta_reaches_the_validator(workspace, tmp_path):
    cfg = parse(eval_params(tta=True))
    m = evaluate.run(cfg, workspace / "organized/data.yaml", workspace / "models", tmp_path / "work", validator=RecordingValidator)[MODEL]
    assert RecordingValidator.augment == [True] and m["tta"] is True


def test_user_errors_name_the_key_or_file(tmp_path):
    with pytest.raises(UserError, match=r"`evaluate.tta` must be true or false"):
        parse(eval_params(tta="yes"))
    with pytest.raises(UserError, match=r"unknown key `evaluate.ttta`; did you mean `tta`"):
        parse(eval_params(ttta=True))
    data = tmp_path / "data.yaml"
    data.write_text("train: images/train\nval: images/val\nnames: {0: a}\n")
    with pytest.raises(UserError, match=r"data.yaml: no `test` split"):
        evaluate.split_images(data, "test")
