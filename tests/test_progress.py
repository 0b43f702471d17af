"""Progress output: one summary line per phase in a log, a live bar on a terminal, one line per training epoch."""

from __future__ import annotations

import io
import math
import re
import time

import pytest

from stagetrain import progress
from stagetrain.config import parse
from stagetrain.data import organize, sources
from stagetrain.train import checkpoint, runner

RATE = r"\([\d,]+ img/s\)"


class Terminal(io.StringIO):
    """A stream that says it is a terminal (no file descriptor: the width check is skipped)."""

    def isatty(self) -> bool:
        return True


def test_download_and_organize_print_one_summary_line_per_phase(tmp_path, params, capsys):
    cfg = parse(params)  # target: 40 synthetic images, split by organize, near-duplicate search on
    sources.run(cfg, "target", tmp_path / "raw")
    organize.run(cfg, "target", tmp_path / "raw", tmp_path / "organized", workers=2)
    lines = capsys.readouterr().err.splitlines()  # pytest's capture is not a terminal: lines, not bars
    assert not any("\r" in line or "%|" in line for line in lines)
    for phase in (
        "download@target: render",
        "organize@target: check images",
        "organize@target: link copies and near-duplicates",
        "organize@target: write",
    ):
        matching = [line for line in lines if line.startswith(f"{phase}:")]
        assert len(matching) == 1, (phase, lines)
        assert re.fullmatch(rf"{re.escape(phase)}: 40 img in \d+\.\d s {RATE}", matching[0]), matching[0]
    assert not any(line.startswith("organize@target: check pool/") for line in lines)  # no pool: nothing to say


def test_a_phase_that_fails_says_where_it_stopped():
    out = io.StringIO()
    with pytest.raises(RuntimeError), progress.phase("organize@x: check images", total=10, stream=out) as counting:
        counting.update(3)
        raise RuntimeError("boom")
    assert re.fullmatch(r"organize@x: check images: stopped after 3 img of 10 img in \d+\.\d s\n", out.getvalue())


def test_a_long_phase_adds_few_lines(monkeypatch):
    """Heartbeats in a log come after 1x, 2x, 4x, ... the first interval: logarithmic in the phase's length."""
    monkeypatch.setattr(progress, "FIRST_HEARTBEAT_S", 0.01)
    out = io.StringIO()
    started = time.perf_counter()
    for _ in progress.track(range(200), "hash", stream=out):
        time.sleep(0.001)
    elapsed = time.perf_counter() - started
    lines = out.getvalue().splitlines()
    heartbeats = [line for line in lines if "so far" in line]
    assert 2 <= len(heartbeats) <= 1 + math.log2(elapsed / 0.01), lines
    assert re.fullmatch(r"hash: \d+ img of 200 img so far, \d+ s \([\d,]+ img/s\), ~\d+ s left", heartbeats[0])
    assert re.fullmatch(rf"hash: 200 img in \d+\.\d s {RATE}", lines[-1])


def test_a_terminal_gets_a_bar_and_no_summary_line():
    out = Terminal()
    for _ in progress.track(range(5), "hash", stream=out):
        pass
    text = out.getvalue()
    assert "\r" in text and "5/5" in text and "img/s" in text  # tqdm redraws in place
    assert "hash: 5 img in" not in text


def test_bytes_and_empty_phases():
    assert progress.amount(12_345_678, "B") == "12.3 MB" and progress.amount(999, "B") == "999 B"
    assert progress.amount(1270.4, "img") == "1,270 img"
    out = io.StringIO()
    assert list(progress.track([], "check pool/", stream=out)) == [] and out.getvalue() == ""


def test_epoch_line_reads_like_the_issue():
    losses = {"train/box_loss": 1.234, "train/cls_loss": 0.98, "train/dfl_loss": 1.1}
    scores = {"val/mAP50-95": 0.4121, "val/mAP50": 0.7014, "val/precision": 0.5}
    assert (
        runner.epoch_line("train@stage2", 3, 10, losses, scores, 12.34)
        == "train@stage2 epoch 3/10 box 1.234 cls 0.980 dfl 1.100 val mAP50-95 0.412 mAP50 0.701 (12.3 s)"
    )


@pytest.mark.slow  # trains a model: 2 epochs of 28 tiny images (~25 s)
def test_training_prints_one_line_per_epoch_named_after_the_stage(tmp_path, params, capsys, monkeypatch):
    params["stages"]["stage2"]["epochs"] = 2
    cfg = parse(params)
    sources.run(cfg, "target", tmp_path / "raw")
    organize.run(cfg, "target", tmp_path / "raw", tmp_path / "organized")
    checkpoint.build_base(cfg, tmp_path / "base.pt")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    runner.run(
        cfg, "stage2", tmp_path / "organized/data.yaml", tmp_path / "base.pt", tmp_path / "out", tmp_path / "live", tmp_path / "work"
    )
    captured = capsys.readouterr()
    epochs = [line for line in captured.err.splitlines() if line.startswith("train@stage2 epoch")]
    number = r"\d+\.\d{3}"
    for n, line in enumerate(epochs, 1):  # Ultralytics' extra on_fit_epoch_end of its final evaluation adds no line
        assert re.fullmatch(
            rf"train@stage2 epoch {n}/2 box {number} cls {number} dfl {number} val mAP50-95 {number} mAP50 {number} \(\d+\.\d s\)", line
        )
    assert len(epochs) == 2, captured.err
    assert "%|" not in captured.out + captured.err  # Ultralytics' per-batch bars stay quiet (YOLO_VERBOSE=false)
