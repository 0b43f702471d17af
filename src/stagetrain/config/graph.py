"""The stage graph: every `from:` and `teacher:` names a stage, an init or tracked weights; no cycles; teachers come first."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from stagetrain.config.checks import suggest
from stagetrain.config.schema import BASE, Config, StageSpec
from stagetrain.errors import UserError


def tracked_weights(src: str, name: str) -> bool:
    """True when ``models/<name>/best.pt`` is the user's DVC-tracked checkpoint (``dvc add``), a valid `from:`."""
    return (Path(src).parent / "models" / name / "best.pt.dvc").exists()


def _check_model_name(stages: Mapping[str, StageSpec], roots: set[str], src: str, where: str, name: str) -> None:
    if name not in roots and name not in stages and not tracked_weights(src, name):
        hint = suggest(name, [*sorted(roots), *stages]) or f"use one of: {', '.join([*sorted(roots), *stages])}"
        raise UserError(
            f"{src}: `{where}` names no stage: {name!r}; {hint} "
            f"(a fresh architecture: add it under `model.inits`; your own weights: `dvc add models/{name}/best.pt`)"
        )


def _check_cycles(stages: Mapping[str, StageSpec], src: str) -> None:
    for start in stages:
        seen, name = [start], stages[start].upstream
        while name in stages:
            if name in seen:
                cycle = " -> ".join([*seen[seen.index(name) :], name])
                raise UserError(f"{src}: `stages.*.from` forms a cycle: {cycle}; one stage must start `from: {BASE}`")
            seen.append(name)
            name = stages[name].upstream


def _check_teachers(stages: Mapping[str, StageSpec], roots: set[str], src: str) -> None:
    for stage in stages.values():
        where = f"stages.{stage.name}.teacher"
        if stage.distill is None:
            if stage.teacher != stage.upstream:
                raise UserError(
                    f"{src}: `{where}` is {stage.teacher!r} but the stage has no `distill:` block; a stage that does not "
                    f"distil names its `from` ({stage.upstream!r}) as teacher (DVC reruns the stage when its teacher changes), "
                    f"or add `distill: {{kind: logit, lambda: 1.0, temperature: 2.0}}`"
                )
            continue
        _check_model_name(stages, roots, src, where, stage.teacher)
        if stage.teacher == stage.name or descends_from(stages, stage.teacher, stage.name):
            raise UserError(
                f"{src}: `{where}: {stage.teacher}` is trained from this stage's own result; a teacher must come before its student"
            )


def check_chain(stages: Mapping[str, StageSpec], roots: set[str], src: str) -> None:
    """Every `from:` resolves, the `from:` links form no cycle, and every teacher comes before its student."""
    for stage in stages.values():
        _check_model_name(stages, roots, src, f"stages.{stage.name}.from", stage.upstream)
    _check_cycles(stages, src)
    _check_teachers(stages, roots, src)


def descends_from(stages: Mapping[str, StageSpec], name: str, ancestor: str) -> bool:
    """True when stage ``name`` starts (through `from:` or a teacher) from ``ancestor``'s checkpoint."""
    todo, seen = [name], set()
    while todo:
        current = todo.pop()
        if current == ancestor:
            return True
        if current in seen or current not in stages:
            continue
        seen.add(current)
        todo += [stages[current].upstream, *([stages[current].teacher] if stages[current].distill else [])]
    return False


def check_references(cfg: Config) -> None:
    """Datasets and stages named by `stages.*.dataset`, `evaluate` and `export` exist."""
    src = cfg.source
    for where, name in [
        *((f"stages.{s.name}.dataset", s.dataset) for s in cfg.stages.values()),
        ("evaluate.dataset", cfg.evaluate.dataset),
    ]:
        if name not in cfg.datasets:
            hint = suggest(name, list(cfg.datasets))
            raise UserError(
                f"{src}: `{where}` names no dataset: {name!r}; define it under `datasets:` ({', '.join(cfg.datasets)})"
                + (f"; {hint}" if hint else "")
            )
    for where, name in [*(("evaluate.models", m) for m in cfg.evaluate.models), ("export.model", cfg.export.model)]:
        if name not in cfg.stages:
            hint = suggest(name, list(cfg.stages))
            raise UserError(
                f"{src}: `{where}` names no stage: {name!r}; use one of {', '.join(cfg.stages)}" + (f"; {hint}" if hint else "")
            )
