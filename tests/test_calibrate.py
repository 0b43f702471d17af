"""calibrate: the fits lower the detection ECE of mis-scaled confidences, the tables keep their contract, thresholds
are the F1-optimal or recall-target ones of a known set, and the stage runs end to end on a real (tiny) model."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, repo_params, shrink
from stagetrain import calibrate
from stagetrain.config import parse
from stagetrain.errors import UserError
from test_evaluate import MODEL, trained_workspace

METHODS = ("isotonic", "platt", "temperature")


def misscaled(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detections whose true chance of being correct is ``p`` but whose confidence is overconfident: sigmoid(3 logit p)."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.02, 0.98, n)
    correct = rng.uniform(size=n) < p
    confidence = 1 / (1 + np.exp(-3 * np.log(p / (1 - p))))
    return confidence, correct, p


@pytest.mark.parametrize("method", METHODS)
def test_ece_falls_on_a_misscaled_set(method):
    """Fitted on one sample, judged on another: every method takes most of the miscalibration out."""
    val_conf, val_correct, _ = misscaled(4000, seed=0)
    test_conf, test_correct, _ = misscaled(4000, seed=1)
    x, y = calibrate.fit(val_conf, val_correct, method)
    before, _ = calibrate.reliability(test_conf, test_correct, 10)
    after, rows = calibrate.reliability(np.interp(test_conf, x, y), test_correct, 10)
    assert before > 0.08 and after < before / 3, (method, before, after)
    assert sum(r["count"] for r in rows) == 4000
    # the table contract: x strictly increasing from 0 to 1, y monotone in [0, 1]
    assert x[0] == 0 and x[-1] == 1 and (np.diff(x) > 0).all() and (np.diff(y) >= 0).all() and 0 <= y.min() <= y.max() <= 1


def test_a_calibrated_set_keeps_a_small_ece_and_none_is_the_identity():
    rng = np.random.default_rng(2)
    p = rng.uniform(0, 1, 5000)
    correct = rng.uniform(size=p.size) < p
    assert calibrate.reliability(p, correct, 10)[0] < 0.03
    x, y = calibrate.fit(p, correct, "none")
    assert np.allclose(np.interp(p, x, y), p)


def test_reliability_bins_by_hand():
    ece, rows = calibrate.reliability(np.array([0.05, 0.15, 0.95, 0.95]), np.array([0, 1, 1, 0]), 10)
    # bins 0 (0.05 vs 0), 1 (0.15 vs 1), 9 (0.95 vs 0.5): weights 1/4, 1/4, 2/4
    assert ece == pytest.approx(0.25 * 0.05 + 0.25 * 0.85 + 0.5 * 0.45)
    assert [(r["bin"], r["count"], r["accuracy"]) for r in rows] == [(0.05, 1, 0.0), (0.15, 1, 1.0), (0.95, 2, 0.5)]


SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
CORRECT = np.array([True, True, False, True, False])  # 4 ground-truth boxes: one never found


def test_f1_optimal_threshold_on_a_known_set():
    # t=0.9: P 1, R .25; 0.8: P 1, R .5; 0.7: P .667, R .5; 0.6: P .75, R .75 (F1 .75, the best); 0.5: P .6, R .75
    best = calibrate.f1_threshold(SCORES, CORRECT, 4)
    assert best.threshold == 0.6 and best.f1 == pytest.approx(0.75) and best.precision == pytest.approx(0.75)
    assert calibrate.f1_threshold(SCORES, CORRECT, 0) is None


def test_recall_target_threshold_is_the_highest_reaching_it():
    assert calibrate.recall_threshold(SCORES, CORRECT, 4, 0.5).threshold == 0.8
    assert calibrate.recall_threshold(SCORES, CORRECT, 4, 0.7).threshold == 0.6
    assert calibrate.recall_threshold(SCORES, CORRECT, 4, 1.0) is None  # one box is never detected


def test_tied_scores_are_one_threshold():
    points = calibrate.operating_points(np.array([0.5, 0.9, 0.5]), np.array([True, True, False]), 2)
    assert [(p.threshold, p.precision, p.recall) for p in points] == [(0.9, 1.0, 0.5), (0.5, pytest.approx(2 / 3), 1.0)]
    assert calibrate.at_threshold(np.array([0.5, 0.9, 0.5]), np.array([True, True, False]), 2, 0.5)["kept"] == 3


def test_raw_threshold_inverts_the_table():
    table = {"x": [0.0, 0.5, 1.0], "y": [0.0, 0.2, 0.8]}
    assert calibrate.raw_threshold(table, 0.5) == pytest.approx(0.75)
    assert calibrate.apply(table, np.array([calibrate.raw_threshold(table, 0.5)]))[0] == pytest.approx(0.5)
    assert calibrate.raw_threshold({"x": [0.0, 0.3, 1.0], "y": [0.0, 0.4, 0.4]}, 0.4) == pytest.approx(0.3)  # flat step: its start


def matched_set(seed: int = 0) -> calibrate.Matched:
    """Class 0 plentiful and overconfident, class 1 with 5 detections of 6 boxes, class 2 never detected; 5 classes."""
    conf, correct, _ = misscaled(600, seed)
    classes = np.r_[np.zeros(595, int), np.ones(5, int)]
    return calibrate.Matched(classes, conf, correct, np.array([int(correct[:595].sum()) + 20, 6, 3, 0, 0]))


def test_fallbacks_and_recall_targets_are_listed():
    params = shrink(repo_params())
    params["calibrate"] = {"method": "isotonic", "min_detections": 30, "thresholds": {"yellow_cone": {"recall": 0.99}}}
    cfg = parse(params)
    val = matched_set()
    tables, fallbacks = calibrate.fit_classes(cfg, val)
    assert tables["blue_cone"]["fit"] == "class" and tables["yellow_cone"]["fit"] == calibrate.POOLED
    assert len(fallbacks) == 4 and all("pooled fit" in line for line in fallbacks)
    chosen, notes = calibrate.choose_thresholds(cfg, val, tables)
    assert chosen["blue_cone"]["rule"] == "f1" and chosen["yellow_cone"]["rule"] == "recall >= 0.99"
    assert any(line.startswith("yellow_cone: recall target 0.99 unreachable") for line in notes)
    assert chosen["orange_cone"]["rule"] == "pooled f1" and any(line.startswith("orange_cone:") for line in notes)


def test_val_cross_validation_ranks_a_fit_above_none_on_a_misscaled_set():
    """The method comparison that uses val only: on overconfident detections every fit beats the identity."""
    cfg = parse(shrink(repo_params()))
    conf, correct, _ = misscaled(2000, seed=3)
    val = calibrate.Matched(np.zeros(conf.size, int), conf, correct, np.array([int(correct.sum()), 0, 0, 0, 0]))
    cv = calibrate.val_cross_validated_ece(cfg, val)
    assert set(cv) == set(calibrate.CV_METHODS)
    assert cv["none"] > 0.08 and all(cv[m] < cv["none"] / 2 for m in METHODS), cv
    assert cv == calibrate.val_cross_validated_ece(cfg, val)  # seeded split


def test_auto_fits_the_method_val_cross_validation_ranks_first():
    """`method: auto` reports and ships the method with the lowest val CV ECE; the test split plays no part."""
    params = shrink(repo_params())
    params["calibrate"] = {"method": "auto", "min_detections": 30}
    cfg = parse(params)
    val, test = matched_set(seed=0), matched_set(seed=1)
    result = calibrate.fit_and_report(cfg, "stage3", val, test)
    cv = result["detail"]["val_cv_ece"]
    best = min(cv, key=cv.get)
    assert result["calibration"]["method"] == result["detail"]["method"] == best != "none"
    assert result["detail"]["method_asked"] == "auto"
    params["calibrate"]["method"] = best
    assert calibrate.fit_and_report(parse(params), "stage3", val, test)["calibration"]["classes"] == result["calibration"]["classes"]
    other_test = calibrate.fit_and_report(cfg, "stage3", val, matched_set(seed=2))
    assert other_test["calibration"]["method"] == best  # another test split: the same choice


def test_config_validates_the_calibrate_section():
    params = shrink(repo_params())
    assert parse(params).calibrate.method == "auto"
    for block, message in (
        ({"method": "beta"}, r"`calibrate.method` is 'beta'"),
        ({"bins": 1}, r"`calibrate.bins` is 1"),
        ({"floor": 1.5}, r"`calibrate.floor` is 1.5"),
        ({"thresholds": "f2"}, r"`calibrate.thresholds` is 'f2'"),
        ({"thresholds": {"blue_con": {"recall": 0.7}}}, r"'blue_con' is not in `classes`; did you mean `blue_cone`"),
        ({"thresholds": {"blue_cone": {"recal": 0.7}}}, r"unknown key `calibrate.thresholds.blue_cone.recal`"),
        ({"thresholds": {"blue_cone": {"recall": 0}}}, r"`calibrate.thresholds.blue_cone.recall` is 0.0"),
        ({"min_detection": 3}, r"unknown key `calibrate.min_detection`; did you mean `min_detections`"),
    ):
        with pytest.raises(UserError, match=message):
            parse({**params, "calibrate": {**params["calibrate"], **block}})


@pytest.mark.slow  # trains a model
def test_calibrate_end_to_end_and_a_distorted_copy(tmp_path_factory, tmp_path):
    """The stage on a real (1-epoch) model: the deploy contract, flat metrics, plot rows; then its real val/test
    detections with confidences squashed towards 1 (conf ** 0.1): the fit brings the test ECE down."""
    workspace = trained_workspace(tmp_path_factory.getbasetemp() / "trained")
    params = shrink(repo_params())
    params["calibrate"] = {
        "method": "isotonic",
        "thresholds": {"blue_cone": {"recall": 0.05}},
        "bins": 10,
        "min_detections": 5,
        "floor": 0.0,
    }
    cfg = parse(params)
    weights, data = workspace / "models" / MODEL / "best.pt", workspace / "organized/data.yaml"
    result = calibrate.run(cfg, weights, data, tmp_path / "work")
    calibration, metrics = result["calibration"], result["metrics"]
    assert calibration["model"] == MODEL and set(calibration["classes"]) == set(cfg.classes) == set(calibration["thresholds"])
    for table in calibration["classes"].values():
        assert table["x"][0] == 0 and table["x"][-1] == 1 and np.all(np.diff(table["x"]) > 0) and np.all(np.diff(table["y"]) >= 0)
    assert set(metrics) == {"ece_before", "ece_after", "precision", "recall", "detections"} and metrics["detections"] > 0
    assert all(not isinstance(v, dict) for v in metrics.values())
    assert {row["which"] for row in result["reliability"]} == {"before", "after"}
    assert sum(row["count"] for row in result["reliability"] if row["which"] == "before") == metrics["detections"]
    json.dumps(result)  # every output is JSON

    val = calibrate.predictions(cfg, weights, data, "val", tmp_path / "again")
    test = calibrate.predictions(cfg, weights, data, "test", tmp_path / "again")
    x, y = calibrate.fit(val.score**0.1, val.correct, "isotonic")
    before, _ = calibrate.reliability(test.score**0.1, test.correct, 10)
    after, _ = calibrate.reliability(np.interp(test.score**0.1, x, y), test.correct, 10)
    assert before > 0.3 and after < before / 2, (before, after)


def test_stage_cli_names_a_missing_input(tmp_path):
    run = subprocess.run(
        [
            sys.executable,
            "stages/calibrate.py",
            "--weights",
            str(tmp_path / "none.pt"),
            "--data",
            "x",
            "--out",
            "o",
            "--metrics",
            "m",
            "--detail",
            "d",
        ],
        cwd=REPO,
        capture_output=True,
        check=False,
        text=True,
    )
    assert run.returncode == 2 and "none.pt does not exist" in run.stderr
