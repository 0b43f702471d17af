"""The report's verdict and test table, rendered from hand-written eval.json entries (rendering is pure formatting).

The verdict follows the 95% interval of Δ test mAP50-95 (model - baseline) against `evaluate.margin`:
adopt above +margin, keep the baseline below -margin (and name the stage that lost ground), else no
detectable difference: prefer the simpler baseline, quoting the smallest difference the split can detect.
After the verdict comes the forgetting matrix: a model x dataset table, skipped datasets, and one line reading it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from stagetrain import charts, forgetting, plots, stats
from stagetrain.config import parse
from stagetrain.errors import UserError
from stagetrain.report import export_lines, forgetting_lines, render, verdict


def _versus(diff: float, low: float, high: float, margin: float = 0.01, detectable: float = 0.015) -> dict:
    """A `vs_baseline` entry as evaluate writes it, its verdict taken by the stats module itself."""
    decision = stats.verdict(low, high, margin)
    metric = {"baseline": 0.3, "model": 0.3 + diff, "diff": diff, "ci_low": low, "ci_high": high}
    metric |= {"se": detectable / 1.96, "detectable": detectable, "detectable_80_power": detectable * 1.43}
    return {
        "direction": "model - baseline",
        "images": 45,
        "resamples": 1000,
        "seed": 0,
        "confidence": 0.95,
        "margin": margin,
        "map50_95": metric,
        "map50": {**metric, "diff": 2 * diff, "ci_low": 2 * low, "ci_high": 2 * high},
        "verdict": str(decision.decision),
        "sentence": decision.sentence,
    }


def _eval(versus: dict | None, baseline: bool = True) -> dict:
    stage3 = {"mAP50": 0.6, "mAP50-95": 0.3, "precision": 0.5, "recall": 0.5, "coco_mAP50-95": 0.31}
    if versus is not None:
        stage3["vs_baseline"] = versus
    evaluation = {"stage3": stage3}
    if baseline:
        evaluation["baseline"] = {"mAP50": 0.6, "mAP50-95": 0.3, "precision": 0.5, "recall": 0.5, "coco_mAP50-95": 0.31}
    return evaluation


def _stages(*val):
    return {name: {"mAP50": v, "epochs_run": 1, "seconds": 1.0} for name, v in zip(("stage1", "stage2", "stage3", "baseline"), val)}


def test_adopt_when_the_whole_interval_clears_the_margin(params):
    text = verdict(parse(params), _stages(0.6, 0.7, 0.8, 0.7), _eval(_versus(0.05, 0.03, 0.07)))
    assert text.startswith("**Adopt `stage3`**") and "more than the 1.0 pt margin" in text
    assert "Δ test mAP50-95 +5.0 pt, 95% CI [+3.0, +7.0] pt" in text


def test_a_significant_gain_inside_the_margin_is_no_detectable_difference(params):
    text = verdict(parse(params), _stages(0.6, 0.7, 0.8, 0.7), _eval(_versus(0.006, 0.002, 0.009)))
    assert text.startswith("**No detectable difference** between `stage3` and `baseline`: prefer the simpler model, `baseline`")
    assert "the whole interval lies within ±1.0 pt" in text
    assert "smallest difference these 45 test images can detect is 1.5 pt (2.1 pt to find it 80% of the time)" in text


def test_a_wide_interval_asks_for_more_test_images(params):
    text = verdict(parse(params), _stages(0.6, 0.7, 0.8, 0.7), _eval(_versus(0.01, -0.04, 0.06, detectable=0.05)))
    assert text.startswith("**No detectable difference**") and "too wide" in text and "more test images" in text
    assert "can detect is 5.0 pt" in text


def test_keep_baseline_names_the_stage_that_lost_ground(params):
    text = verdict(parse(params), _stages(0.9, 0.6, 0.65, 0.8), _eval(_versus(-0.2, -0.25, -0.15)))
    assert text.startswith("**Keep `baseline`**: `stage3` is worse by more than the 1.0 pt margin")
    assert "95% CI [-25.0, -15.0] pt" in text
    assert "Val mAP50 fell from `stage1` to `stage2` by 30.0 points" in text


def test_the_margin_comes_from_eval_json(params):
    """The same interval, another margin: eval.json records the margin its verdict was taken with."""
    text = verdict(parse(params), _stages(0.6, 0.7, 0.8, 0.7), _eval(_versus(0.05, 0.03, 0.07, margin=0.04)))
    assert text.startswith("**No detectable difference**") and "4.0 pt" in text


def test_no_baseline_no_verdict(params):
    skipped = {"skipped": "`baseline` is not in `evaluate.models`: no comparison made"}
    evaluation = _eval(skipped, baseline=False)
    assert verdict(parse(params), _stages(0.6, 0.7, 0.8, 0.7), evaluation).startswith("No verdict: add the single-stage `baseline`")
    text = render(parse(params), _stages(0.6, 0.7, 0.8, 0.7), evaluation)
    assert "| stage3 | 0.600 | 0.300 | 0.500 | 0.500 | 0.310 | - | - | - |" in text and "paired bootstrap" not in text


def test_an_eval_json_without_a_comparison_says_rerun(params):
    text = verdict(parse(params), _stages(0.6, 0.7, 0.8, 0.7), _eval(None))
    assert text == "No verdict for `stage3`: eval.json holds no comparison with the baseline; rerun evaluate."


def test_table_shows_the_difference_its_interval_and_the_detectable_difference(params):
    text = render(parse(params), _stages(0.6, 0.7, 0.8, 0.7), _eval(_versus(0.05, 0.03, 0.07)))
    for name in ("stage1", "stage2", "stage3", "baseline"):
        assert f"| {name} |" in text
    assert "+10.0 pt" in text  # val: stage3 against baseline
    assert "| Δ mAP50-95 vs baseline (95% CI), pt | Δ mAP50 vs baseline (95% CI), pt | detectable Δ mAP50-95, pt |" in text
    assert "| stage3 | 0.600 | 0.300 | 0.500 | 0.500 | 0.310 | +5.0 [+3.0, +7.0] | +10.0 [+6.0, +14.0] | ±1.5 |" in text
    assert "| baseline | 0.600 | 0.300 | 0.500 | 0.500 | 0.310 | - | - | - |" in text
    assert "paired bootstrap 95% interval over the 45 test images (1000 resamples, seed 0)" in text
    assert "(1.96 × the bootstrap standard error)" in text
    assert text.rstrip().endswith(verdict(parse(params), _stages(0.6, 0.7, 0.8, 0.7), _eval(_versus(0.05, 0.03, 0.07))))


def hand_matrix(drop: dict) -> dict:
    """A `forgetting` entry as evaluate writes it: stage3 lost `drop` on source, pool skipped."""
    cell = {"mAP50-95": 0.4, "mAP50": 0.7, "reference": "stage1", "reference_mAP50-95": 0.5, "drop_mAP50-95": drop, "drop_mAP50": drop}
    return {
        "split": "test",
        "direction": "model - reference",
        "resamples": 1000,
        "seed": 0,
        "confidence": 0.95,
        "seconds": 1.0,
        "datasets": {
            "source": {
                "images": 150,
                "instances": 900,
                "models": {"stage3": cell, "baseline": {"mAP50-95": 0.05, "mAP50": 0.1, "reference": None, "note": "not trained on it"}},
            },
            "target": {
                "images": 300,
                "instances": 1500,
                "models": {
                    "stage3": {"mAP50-95": 0.45, "mAP50": 0.8, "reference": "stage3", "note": forgetting.TRAINED_HERE},
                    "baseline": {"mAP50-95": 0.44, "mAP50": 0.8, "reference": "baseline", "note": forgetting.TRAINED_HERE},
                },
            },
            "pool": {"skipped": "no `test` split in its data.yaml"},
        },
    }


def test_report_table_skips_and_reading():
    lines = forgetting_lines(hand_matrix({"diff": -0.1, "ci_low": -0.13, "ci_high": -0.07}))
    assert lines[:4] == [
        "## Forgetting matrix",
        "",
        "| model | source (150 test images) | target (300 test images) |",
        "| --- | --- | --- |",
    ]
    assert "| stage3 | 0.400 (-10.0 [-13.0, -7.0] vs stage1) | 0.450 (trained on it) |" in lines
    assert "| baseline | 0.050 (not trained on it) | 0.440 (trained on it) |" in lines
    assert "Not scored: `pool`: no `test` split in its data.yaml." in lines
    assert lines[-1] == "Reading: `stage3` lost 10.0 pt mAP50-95 on `source` vs `stage1` (0.500 → 0.400, 95% CI [-13.0, -7.0] pt)."
    gained = forgetting_lines(hand_matrix({"diff": 0.02, "ci_low": 0.01, "ci_high": 0.03}))[-1]
    assert gained.startswith("Reading: `stage3` gained 2.0 pt mAP50-95 on `source` vs `stage1`")
    noise = forgetting_lines(hand_matrix({"diff": -0.01, "ci_low": -0.03, "ci_high": 0.01}))[-1]
    assert noise.startswith("Reading: `stage3` kept its mAP50-95 on `source` vs `stage1` within noise (-1.0 pt;")


def test_report_places_the_matrix_after_the_verdict_and_keeps_it_out_of_the_model_tables(params):
    cfg = parse(params)
    entry = {"mAP50": 0.6, "mAP50-95": 0.3, "precision": 0.5, "recall": 0.5, "coco_mAP50-95": 0.31}
    evaluation = {"baseline": entry, "forgetting": hand_matrix({"diff": -0.1, "ci_low": -0.13, "ci_high": -0.07})}
    text = render(cfg, {}, evaluation)
    assert text.index("## Verdict") < text.index("## Forgetting matrix") and "| forgetting |" not in text
    assert "No verdict: `evaluate.models` holds only the baseline." in text  # the matrix is no candidate
    assert "Reading: `stage3` lost 10.0 pt" in text and text.endswith("\n")


# ---- charts (issue 12): PNG files under metrics/report/, linked relatively from report.md ------------------


def _curves(root: Path, epochs: dict[str, int]) -> None:
    """dvclive's val mAP50-95 TSV of each stage as train@<stage> leaves it (step 0 = the first epoch)."""
    for stage, n in epochs.items():
        tsv = root / stage / plots.LIVE_METRICS / f"{plots.EPOCHS_FROM}.tsv"
        tsv.parent.mkdir(parents=True, exist_ok=True)
        tsv.write_text("step\tmAP50-95\n" + "".join(f"{step}\t{0.1 + 0.02 * step}\n" for step in range(n)))


def test_schedule_rows_continue_each_stage_where_its_from_stage_stopped(tmp_path, params):
    params["stages"] = {name: params["stages"][name] for name in ("stage1", "stage2", "stage3", "baseline")}
    cfg = parse(params)
    _curves(tmp_path, {"stage1": 3, "stage2": 2, "stage3": 2, "baseline": 4})
    rows = charts.schedule_rows(cfg, tmp_path)
    placed = {(r["stage"], r["epoch"]): r["global_epoch"] for r in rows}
    assert [placed["stage1", e] for e in (1, 2, 3)] == [1, 2, 3] and [placed["stage2", e] for e in (1, 2)] == [4, 5]
    assert [placed["stage3", e] for e in (1, 2)] == [6, 7] and [placed["baseline", e] for e in (1, 4)] == [1, 4]  # from base: epoch 1
    assert next(r["map50_95"] for r in rows if r["stage"] == "stage2" and r["epoch"] == 2) == pytest.approx(0.12)
    (tmp_path / "stage2" / plots.LIVE_METRICS / f"{plots.EPOCHS_FROM}.tsv").unlink()
    with pytest.raises(UserError, match=r"stage2/plots/metrics/val/mAP50-95.tsv does not exist: train@stage2 logs it"):
        charts.draw_all(cfg, tmp_path, {}, [], tmp_path / "charts")


def _png(path: Path) -> Image.Image:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.load()
        return image.convert("RGB")


def test_report_embeds_three_charts_that_are_real_pngs_and_byte_stable(tmp_path, params):
    """Charts from hand-written figures: valid PNGs with content, linked from report.md by relative paths that resolve,
    and the same bytes when drawn again (the repro check compares them byte by byte)."""
    params["stages"] = {name: params["stages"][name] for name in ("stage1", "stage2", "stage3", "baseline")}
    cfg = parse(params)
    _curves(tmp_path / "metrics", {"stage1": 3, "stage2": 2, "stage3": 2, "baseline": 4})
    evaluation = _eval(_versus(0.05, 0.03, 0.07))
    for name, scale in (("stage3", 0.8), ("baseline", 0.5)):
        evaluation[name]["per_class"] = {c: {"AP50": scale, "AP50-95": scale * (i + 1) / 6} for i, c in enumerate(cfg.classes)}
    matrix = hand_matrix({"diff": -0.1, "ci_low": -0.13, "ci_high": -0.07})
    rows = forgetting.chart_rows(matrix)
    assert rows[0] == {"model": "stage3", "dataset": "source", "map50_95": 0.4, "drop": -0.1} and len(rows) == 4
    drawn = charts.draw_all(cfg, tmp_path / "metrics", evaluation, rows, tmp_path / "metrics/report")
    assert set(drawn.files) == {"schedule", "forgetting", "per_class"}
    for file in drawn.files.values():
        image = _png(tmp_path / "metrics/report" / file)
        assert image.width >= 400 and image.height >= 200
        assert len(image.getcolors(maxcolors=1 << 20)) > 50  # lines, bars, text: not a blank canvas
    assert _png(tmp_path / "metrics/report/schedule.png").size == (900, 480)
    again = charts.draw_all(cfg, tmp_path / "metrics", evaluation, rows, tmp_path / "again")
    assert all((tmp_path / "metrics/report" / f).read_bytes() == (tmp_path / "again" / f).read_bytes() for f in again.files.values())

    text = render(cfg, _stages(0.6, 0.7, 0.8, 0.7), {**evaluation, "forgetting": matrix}, None, drawn.linked_from(tmp_path / "metrics"))
    links = re.findall(r"!\[[^\]]+\]\(([^)]+)\)", text)
    assert links == ["report/schedule.png", "report/per_class.png", "report/forgetting.png"]
    assert all((tmp_path / "metrics" / link).is_file() for link in links)
    assert text.index("report/schedule.png") < text.index("## Test split") < text.index("report/per_class.png") < text.index("## Verdict")
    assert text.index("## Forgetting matrix") < text.index("report/forgetting.png")


def test_charts_without_data_are_left_out_of_the_report(tmp_path, params):
    params["stages"] = {name: params["stages"][name] for name in ("stage1", "stage2", "stage3", "baseline")}
    cfg = parse(params)
    _curves(tmp_path, {"stage1": 2, "stage2": 2, "stage3": 2, "baseline": 2})
    (tmp_path / "charts").mkdir()
    (tmp_path / "charts/per_class.png").write_bytes(b"stale")  # an earlier run's chart must not outlive its data
    drawn = charts.draw_all(cfg, tmp_path, _eval(None), [], tmp_path / "charts")
    assert set(drawn.files) == {"schedule"} and [p.name for p in (tmp_path / "charts").iterdir()] == ["schedule.png"]
    text = render(cfg, {}, _eval(None), None, drawn.linked_from(tmp_path))
    assert re.findall(r"!\[[^\]]+\]\(([^)]+)\)", text) == ["charts/schedule.png"]


def test_flat_export_json_gives_the_export_table():
    """metrics/export.json as flat `<format>_<figure>` keys (issue 12): one row per format, skipped ones with why."""
    export = {"model": "stage3", "pytorch_map50": 0.7, "onnx_matched": 1.0, "onnx_max_conf_delta": 0.0012, "onnx_map50_delta": -0.0004}
    export |= {"onnx_latency_ratio_160": 0.61, "onnx_latency_ratio_640": 0.55, "engine_skipped": "no CUDA device"}
    lines = export_lines(export)
    assert lines[1] == "## Export of `stage3` (metrics/export.json; detail in models/export/)"
    assert "| onnx | 100.0% | 0.0012 | -0.04 pt | 0.61× @ 160 px, 0.55× @ 640 px |" in lines
    assert "| engine | skipped: no CUDA device | - | - | - |" in lines and not any(line.startswith("| openvino") for line in lines)
