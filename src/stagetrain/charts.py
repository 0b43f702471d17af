"""The report's charts: PNG files under ``metrics/report/`` that ``metrics/report.md`` links relatively.

* ``schedule.png``: val mAP50-95 per epoch of every stage on one global epoch axis (a stage continues
  where its ``from:`` stage stopped; a stage trained on ``base`` starts at epoch 1, the baseline
  beside the chain), a vertical line where each chained stage begins;
* ``forgetting.png``: the forgetting matrix as a heatmap (test mAP50-95, the drop against the
  reference stage in each cell that has one);
* ``per_class.png``: per-class test AP50-95 bars of the evaluated models.

Drawn with matplotlib's Agg backend at a fixed size and dpi, without the ``Software`` tag that names
the matplotlib version: the same figures give the same bytes, so the repro check compares the PNGs
byte by byte like any other output.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from stagetrain import plots
from stagetrain.config import Config, EvaluateSpec

SIZE = (9.0, 4.8)  # inches
DPI = 100
SAVE = {"dpi": DPI, "format": "png", "metadata": {"Software": None}}  # no version tag: equal figures, equal bytes
FILES = {"schedule": "schedule.png", "forgetting": "forgetting.png", "per_class": "per_class.png"}


def schedule_rows(cfg: Config, live_root: Path) -> list[dict[str, Any]]:
    """Every stage's val mAP50-95 per epoch on the global epoch axis: ``{"global_epoch", "stage", "epoch", "map50_95"}``.

    The dashboard's own rows (``plots.stage_rows``), so the PNG and ``dvc plots show`` place each epoch alike;
    a stage without its dvclive log is a UserError naming the file.
    """
    return plots.stage_rows(cfg, live_root, {"map50_95": plots.EPOCHS_FROM})


def _figure(size: tuple[float, float] = SIZE):
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state; savefig renders with Agg

    fig = Figure(figsize=size, dpi=DPI)
    return fig, fig.add_subplot()


def draw_schedule(cfg: Config, rows: Sequence[Mapping[str, Any]], out: Path) -> None:
    """``schedule.png``: one line per stage on the global epoch axis, stage boundaries, the baseline dashed."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = _figure()
    colors = _colors(list(cfg.stages))
    for name in cfg.stages:
        points = [(r["global_epoch"], r["map50_95"]) for r in rows if r["stage"] == name]
        if not points:
            continue
        baseline = name == EvaluateSpec.BASELINE
        style = {"linestyle": "--", "color": "0.3"} if baseline else {"color": colors[name]}
        label = f"{name} (from {cfg.stages[name].upstream}, on {cfg.stages[name].dataset})"
        ax.plot(*zip(*points), marker="." if len(points) < 40 else None, label=label, **style)
        if cfg.stages[name].upstream in cfg.stages:
            start = points[0][0] - 0.5
            ax.axvline(start, color=colors[name], linewidth=0.8, linestyle=":")
            ax.annotate(name, (start, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -12), textcoords="offset points", fontsize=8)
    ax.set(xlabel="epoch along the schedule (a stage continues where its `from:` stage stopped)", ylabel="val mAP50-95")
    ax.set_title("Val mAP50-95 along the schedule", fontsize=11)
    ax.set_ylim(bottom=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if rows:
        ax.legend(fontsize=8, loc="lower right")
    _save(fig, out)


def draw_forgetting(rows: Sequence[Mapping[str, Any]], out: Path) -> None:
    """``forgetting.png``: models x datasets, colour = test mAP50-95 (0 to 1), the drop in points where there is one."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, ax = _figure((2.2 + 1.8 * max(len(datasets), 1), 1.6 + 0.6 * max(len(models), 1)))
    grid = [[float("nan")] * len(datasets) for _ in models]
    for r in rows:
        grid[models.index(r["model"])][datasets.index(r["dataset"])] = r["map50_95"]
    image = ax.imshow(grid, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    for r in rows:
        text = f"{r['map50_95']:.3f}" + ("" if r["drop"] is None else f"\n{r['drop'] * 100:+.1f} pt")
        dark = r["map50_95"] < 0.6
        ax.text(
            datasets.index(r["dataset"]),
            models.index(r["model"]),
            text,
            ha="center",
            va="center",
            fontsize=9,
            color="white" if dark else "black",
        )
    ax.set_xticks(range(len(datasets)), datasets)
    ax.set_yticks(range(len(models)), models)
    ax.set_xlabel("test split of dataset")
    ax.set_title("Test mAP50-95 (drop vs the stage that trained on it)", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.05)
    _save(fig, out)


def draw_per_class(evaluation: Mapping[str, Mapping[str, Any]], classes: Sequence[str], out: Path) -> None:
    """``per_class.png``: grouped bars, test AP50-95 per class, one bar per evaluated model."""
    models = [name for name, entry in evaluation.items() if "per_class" in entry]
    fig, ax = _figure()
    width = 0.8 / max(len(models), 1)
    colors = _colors(models)
    for i, name in enumerate(models):
        values = [evaluation[name]["per_class"].get(c, {}).get("AP50-95", 0.0) for c in classes]
        xs = [k - 0.4 + width * (i + 0.5) for k in range(len(classes))]
        ax.bar(xs, values, width, label=name, color="0.45" if name == EvaluateSpec.BASELINE else colors[name])
    ax.set_xticks(range(len(classes)), classes, fontsize=8)
    ax.set(ylabel="test AP50-95", ylim=(0, 1))
    ax.set_title("Per-class test AP50-95", fontsize=11)
    ax.grid(axis="y", alpha=0.3)
    if models:
        ax.legend(fontsize=8)
    _save(fig, out)


def _colors(names: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    return {name: palette(i % 10) for i, name in enumerate(names)}


def _save(fig, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, **SAVE)


class Charts(NamedTuple):
    folder: Path  # where the PNG files are
    files: dict[str, str]  # chart (schedule, forgetting, per_class) -> its file, relative to ``folder``

    def linked_from(self, where: Path) -> Charts:
        """The same charts with each file named relative to ``where`` (report.md's folder): markdown's relative links."""
        links = {name: Path(os.path.relpath(self.folder / file, where)).as_posix() for name, file in self.files.items()}
        return Charts(where, links)


def draw_all(
    cfg: Config,
    live_root: Path,
    evaluation: Mapping[str, Mapping[str, Any]],
    forgetting_rows: Sequence[Mapping[str, Any]],
    out_dir: Path,
) -> Charts:
    """Every chart into ``out_dir`` (replacing what an earlier run left there); the matrix's and the per-class
    chart only when there is data for them (no dataset scored, no per-class AP)."""
    for old in out_dir.glob("*.png") if out_dir.is_dir() else ():
        old.unlink()
    draw_schedule(cfg, schedule_rows(cfg, live_root), out_dir / FILES["schedule"])
    files = {"schedule": FILES["schedule"]}
    if forgetting_rows:
        draw_forgetting(forgetting_rows, out_dir / FILES["forgetting"])
        files["forgetting"] = FILES["forgetting"]
    if any("per_class" in entry for entry in evaluation.values()):
        draw_per_class(evaluation, cfg.classes, out_dir / FILES["per_class"])
        files["per_class"] = FILES["per_class"]
    return Charts(out_dir, files)
