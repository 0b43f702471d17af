"""The plots dashboard: global epochs along `from:` chains, the combined data files, and the real `dvc plots
show` / `dvc plots diff` page drawn offline from the repo's own dvc.yaml, templates and vendored vega."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO, dvc, repo_params, shrink
from stagetrain import forgetting, plots
from stagetrain.config import parse
from stagetrain.errors import UserError

SCHEDULE = {"stage1": 15, "stage2": 10, "stage3": 10, "baseline": 40}  # the repo's stages and their epochs
CHAIN = {"stage1": "base", "stage2": "stage1", "stage3": "stage2", "baseline": "base"}
MAX_CHARTS = 10


@pytest.fixture
def params() -> dict:
    """The repo's params, shrunk (its fixed-split datasets kept: other sections may need their pool)."""
    return shrink(repo_params())


def config(params: dict, epochs: dict[str, int] = SCHEDULE):
    """``params`` with the repo's four-stage graph (the `from:` chain of this module) and ``epochs``."""
    stages = {}
    for name, upstream in CHAIN.items():
        stages[name] = {"from": upstream, "teacher": upstream, "dataset": "target", "epochs": epochs[name], "freeze_level": 0}
    return parse({**params, "stages": stages, "evaluate": {**params["evaluate"], "models": ["stage3", "baseline"]}})


def write_live(live: Path, stage: str, epochs: int) -> None:
    """What train@<stage> leaves in metrics/<stage>/plots/metrics: one dvclive TSV per metric, step 0 = epoch 1."""
    curves = {
        "val/mAP50-95": lambda e: 0.01 * e,
        "val/mAP50": lambda e: 0.02 * e,
        "train/box_loss": lambda e: 2.0 / (e + 1),
        "train/cls_loss": lambda e: 3.0 / (e + 1),
        "train/dfl_loss": lambda e: 1.5 / (e + 1),
        "lr/pg0": lambda e: 0.01 * (1 - e / (epochs + 1)),
        "lr/pg2": lambda e: 0.1,  # the bias group: not the plotted lr
    }
    for name, curve in curves.items():
        path = live / stage / plots.LIVE_METRICS / f"{name}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        column = name.split("/")[1]
        path.write_text(f"step\t{column}\n" + "".join(f"{step}\t{curve(step)}\n" for step in range(epochs)))


def write_eval(folder: Path, scale: float = 1.0) -> None:
    """What evaluate leaves in metrics/eval: pr/<model>.json, confusion/<model>.json, forgetting.json."""
    for model, quality in (("stage3", 0.9 * scale), ("baseline", 0.7 * scale)):
        (folder / "pr").mkdir(parents=True, exist_ok=True)
        (folder / "confusion").mkdir(parents=True, exist_ok=True)
        pr = [{"recall": r / 100, "precision": min(1.0, quality + (1 - r / 100) * 0.2)} for r in range(101)]
        (folder / "pr" / f"{model}.json").write_text(json.dumps(pr))
        confusion = [{"actual": a, "predicted": a if i % 5 else "background"} for a in ("blue_cone", "yellow_cone") for i in range(20)]
        (folder / "confusion" / f"{model}.json").write_text(json.dumps(confusion))
    matrix = {  # eval.json's `forgetting` shape, turned into rows by evaluate's own code
        "datasets": {
            "source": {"models": {"stage3": {"mAP50-95": 0.41 * scale, "drop_mAP50-95": {"diff": -0.22}}, "baseline": {"mAP50-95": 0.2}}},
            "target": {"models": {"stage3": {"mAP50-95": 0.62 * scale}, "baseline": {"mAP50-95": 0.55 * scale}}},
        }
    }
    (folder / "forgetting.json").write_text(json.dumps(forgetting.chart_rows(matrix)))


def test_global_epochs_follow_the_from_chain(params, tmp_path):
    cfg = config(params)
    for stage, epochs in SCHEDULE.items():
        write_live(tmp_path, stage, epochs)
    assert plots.epoch_offsets(cfg, tmp_path) == {"stage1": 0, "stage2": 15, "stage3": 25, "baseline": 0}
    rows = plots.stage_rows(cfg, tmp_path, plots.SCHEDULE)
    spans = {s: [r["global_epoch"] for r in rows if r["stage"] == s] for s in SCHEDULE}
    assert spans["stage1"] == list(range(1, 16)) and spans["stage2"] == list(range(16, 26))
    assert spans["stage3"] == list(range(26, 36)) and spans["baseline"] == list(range(1, 41))
    first_of_stage3 = next(r for r in rows if r["stage"] == "stage3")
    assert first_of_stage3 == {"global_epoch": 26, "stage": "stage3", "epoch": 1, "val_map50_95": 0.0, "val_map50": 0.0}


def test_an_early_stopped_stage_moves_its_successors(params, tmp_path):
    cfg = config(params)
    for stage, epochs in {**SCHEDULE, "stage1": 12}.items():  # stage1 stopped early (patience) after 12 of 15
        write_live(tmp_path, stage, epochs)
    assert plots.epoch_offsets(cfg, tmp_path) == {"stage1": 0, "stage2": 12, "stage3": 22, "baseline": 0}


def test_run_writes_one_table_per_chart_and_lists_leftovers(params, tmp_path):
    cfg = config(params)
    live, out = tmp_path / "metrics", tmp_path / "out"
    for stage, epochs in {**SCHEDULE, "old_stage": 3}.items():  # a stage since removed from params.yaml
        write_live(live, stage, epochs)
    write_eval(live / "eval")
    (out).mkdir()
    (out / "stale.json").write_text("[]")
    summary = plots.run(cfg, live, live / "eval", out)
    assert sorted(p.name for p in out.iterdir()) == sorted(plots.OUTPUTS)
    assert summary["ignored_live_folders"] == ["old_stage"] and summary["pr_models"] == ["baseline", "stage3"]
    assert summary["rows"]["schedule.json"] == sum(SCHEDULE.values()) and summary["rows"]["pr.json"] == 202
    lr = json.loads((out / "lr.json").read_text())
    assert {r["stage"] for r in lr} == set(SCHEDULE) and lr[0]["lr"] == pytest.approx(0.01)  # pg0, not the bias group's 0.1
    assert set(json.loads((out / "confusion.json").read_text())[0]) == {"model", "actual", "predicted"}


def test_a_missing_log_names_the_stage_to_run(params, tmp_path):
    cfg = config(params)
    write_live(tmp_path, "stage1", 15)
    with pytest.raises(UserError, match=r"stage2/plots/metrics/val/mAP50-95\.tsv does not exist.*dvc repro train@stage2"):
        plots.epoch_offsets(cfg, tmp_path)


def test_the_page_template_is_the_vendored_builds_inlined():
    """plots/template.html is rebuilt from plots/vendor/ (python -m stagetrain.plots), whose files match its README."""
    vendor = REPO / "plots/vendor"
    assert (REPO / "plots/template.html").read_text(encoding="utf8") == plots.page_template(vendor)
    readme = (vendor / "README.md").read_text()
    for name in plots.VENDOR:
        digest = hashlib.sha256((vendor / name).read_bytes()).hexdigest()
        assert digest in readme, f"{name}: sha256 {digest} is not the one plots/vendor/README.md lists"
        assert (vendor / f"LICENSE.{name.removesuffix('.min.js')}").exists()


def test_train_logs_are_tracked_but_not_drawn():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    train = stages["train"]["do"]
    assert "plots" not in train and "metrics/${key}/plots/metrics" in train["outs"]
    assert "plots" not in stages["evaluate"] and {"metrics/eval/pr", "metrics/eval/confusion"} <= set(stages["evaluate"]["outs"])


@pytest.fixture(scope="module")
def page_repo(tmp_path_factory):
    """A git + DVC repo with the repo's dvc.yaml, params, .dvc/config and plots/; the data written directly (no
    training), committed twice (the second revision's scores lower) for `dvc plots diff`."""
    root = tmp_path_factory.mktemp("page")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "plots", root / "plots", ignore=shutil.ignore_patterns("data"))
    git = ["git", "-c", "user.email=t@e", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    dvc(root, "init", "-q")
    shutil.copy(REPO / ".dvc/config", root / ".dvc/config")
    cfg = config(repo_params())
    for revision, scale in (("first", 1.0), ("second", 0.8)):
        for stage, epochs in SCHEDULE.items():
            write_live(root / "metrics", stage, epochs)
        write_eval(root / "metrics/eval", scale)
        write_reliability(root / "metrics/calibration/reliability.json", scale)
        plots.run(cfg, root / "metrics", root / "metrics/eval", root / "plots/data")
        subprocess.run(["git", "add", "-A", "-f", "."], cwd=root, check=True)
        subprocess.run([*git, "commit", "-qm", revision], cwd=root, check=True)
    return root


def write_reliability(path: Path, scale: float) -> None:
    """calibrate's plot rows: over-confident before (accuracy below confidence), near the diagonal after."""
    rows = [
        {"bin": b, "confidence": (b + 0.5) / 10, "accuracy": accuracy, "count": 10 * (b + 1), "which": which}
        for b in range(10)
        for which, accuracy in (("before", scale * (b + 0.5) / 20), ("after", (b + 0.5) / 10))
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows) + "\n")


def chart_ids(html: str) -> list[str]:
    return re.findall(r'<div id = "([^"]+)"', html)


def test_plots_show_draws_every_chart_offline(page_repo, tmp_path):
    dvc(page_repo, "plots", "show", "-o", str(tmp_path / "page"))
    html = (tmp_path / "page/index.html").read_text()
    assert not re.search(r"<script[^>]*\bsrc\s*=", html), "the page loads a script from elsewhere: it would be blank offline"
    assert "cdn." not in html
    assert html.count("<script>/* vega") == 3 and "vegaEmbed=" in html  # vega, vega-lite, vega-embed inline
    ids = chart_ids(html)
    defined = [next(iter(entry)) for entry in yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]]
    assert ids == defined and len(ids) <= MAX_CHARTS
    assert "stage3" in html and "global_epoch" in html and "map50_95" in html


def test_plots_diff_overlays_two_revisions(page_repo, tmp_path):
    dvc(page_repo, "plots", "diff", "HEAD~1", "HEAD", "-o", str(tmp_path / "page"))
    html = (tmp_path / "page/index.html").read_text()
    for chart in ("val_map50_95", "test_pr", "forgetting"):
        spec = html.split(f'<div id = "{chart}"')[1].split("</div>")[0]
        assert '"rev": "HEAD~1"' in spec and '"rev": "HEAD"' in spec, f"{chart}: one revision is missing"


@pytest.mark.slow
def test_headless_browser_draws_the_charts(page_repo, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium on PATH (apt-get install chromium) to render the page headless")
    pil = pytest.importorskip("PIL.Image", reason="Pillow reads the screenshot")
    dvc(page_repo, "plots", "show", "-o", str(tmp_path / "page"))
    shot = tmp_path / "page.png"
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}", "--window-size=1400,2200",
         "--virtual-time-budget=10000", (tmp_path / "page/index.html").as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    rgb = np.asarray(pil.open(shot).convert("RGB")).astype(int)
    coloured = int(((rgb.max(axis=2) - rgb.min(axis=2)) > 60).sum())  # lines and heatmaps; the page's text is grey
    assert coloured > 0.01 * rgb.shape[0] * rgb.shape[1], f"only {coloured} coloured pixels: the charts did not draw"
