"""Read ``params.yaml`` (YAML errors and repeated keys named with their line) and build the frozen :class:`Config`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from stagetrain import ultra
from stagetrain.config import calibration, datasets, graph, stages
from stagetrain.config import select as select_rounds
from stagetrain.config.checks import at_least, check_keys, name, one_of, require, section, str_list, suggest, typed
from stagetrain.config.schema import (
    BASE,
    EXPORT_FORMATS,
    ON_BAD,
    SPLITS,
    TOP_LEVEL_KEYS,
    Config,
    EvaluateSpec,
    ExportSpec,
    OrganizeSpec,
    ParitySpec,
)
from stagetrain.errors import UserError

MAX_NEAR_DUPLICATES = 64  # a quarter of the perceptual hash's bits: beyond it, different images start to match


class _StrictLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys silently; a repeated key in params is a mistake, named with its line."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise UserError(f"{self.name}:{line}: key `{key}` repeats the one on line {seen[key]}; keep one")
            seen[key] = line
        return super().construct_mapping(node, deep)


def read_yaml(path: Path) -> Any:
    """Parse a YAML file; a syntax error or a repeated key is a UserError naming the file and line."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"{path}: not found; run from the repo root or pass --params") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot be read as a text file ({err.__class__.__name__}); pass a params YAML file") from None
    loader = _StrictLoader(text)
    loader.name = str(path)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        place = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise UserError(f"{place}: not valid YAML: {err.problem or err.context}; fix the syntax there") from None
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML: {err}") from None
    finally:
        loader.dispose()


def _classes(raw: Mapping[str, Any], src: str) -> tuple[str, ...]:
    classes = str_list(raw, "classes", "", src)
    for i, cls in enumerate(classes):
        if not cls.strip() or cls != cls.strip():
            raise UserError(f"{src}: `classes[{i}]` is {cls!r}; a class name is non-empty, with no leading or trailing spaces")
    return classes


def _organize(raw: Mapping[str, Any], src: str) -> OrganizeSpec:
    organize = section(raw, "organize", "", src)
    check_keys(organize, ("split", "on_bad", "dedupe", "near_duplicates"), "organize", src)
    fractions = require(organize, "split", dict, "organize", src)
    check_keys(fractions, SPLITS, "organize.split", src)
    split = {k: typed(v, float, f"organize.split.{k}", src) for k, v in fractions.items()}
    if set(split) != set(SPLITS) or abs(sum(split.values()) - 1) > 1e-6 or min(split.values()) <= 0:
        raise UserError(f"{src}: `organize.split` needs train, val and test fractions > 0 that sum to 1, got {split}")
    on_bad = require(organize, "on_bad", str, "organize", src)
    one_of(on_bad, ON_BAD, "organize.on_bad", src, "skip leaves bad files out and lists them in the report")
    dedupe = require(organize, "dedupe", bool, "organize", src)
    near = organize.get("near_duplicates")
    near = 0 if near is None else typed(near, int, "organize.near_duplicates", src)  # null = off, as 0
    if not 0 <= near <= MAX_NEAR_DUPLICATES:
        raise UserError(
            f"{src}: `organize.near_duplicates` is {near}; use 0 (off) to {MAX_NEAR_DUPLICATES} bits: resized or re-encoded "
            "copies sit within ~24 of the 256 hash bits, different images ~128 apart"
        )
    if near and not dedupe:
        raise UserError(
            f"{src}: `organize.near_duplicates: {near}` needs `organize.dedupe: true`; set near_duplicates to 0 or dedupe to true"
        )
    return OrganizeSpec(MappingProxyType(split), on_bad, dedupe, near)


def _model(raw: Mapping[str, Any], src: str) -> tuple[str, int, dict[str, str]]:
    model = section(raw, "model", "", src)
    check_keys(model, ("arch", "imgsz", "inits"), "model", src)
    arch = require(model, "arch", str, "model", src)
    if not arch.strip():
        raise UserError(f"{src}: `model.arch` is empty; name an Ultralytics model yaml (yolov8n.yaml) or a weights/*.pt file")
    ultra.check_arch(arch, f"{src}: `model.arch: {arch}`")
    imgsz = require(model, "imgsz", int, "model", src)
    at_least(imgsz, 32, "model.imgsz", src, "train/val image size in pixels; the model's stride is 32")
    if imgsz % 32:
        raise UserError(
            f"{src}: `model.imgsz` is {imgsz}; Ultralytics would round it up to {imgsz + 32 - imgsz % 32} (the model stride is 32): "
            f"use {imgsz - imgsz % 32} or {imgsz + 32 - imgsz % 32}"
        )
    inits = {}
    for key, value in typed(model["inits"] if model.get("inits") is not None else {}, dict, "model.inits", src).items():
        inits[name(key, f"model.inits.{key}", src)] = typed(value, str, f"model.inits.{key}", src)
        ultra.check_arch(value, f"{src}: `model.inits.{key}: {value}`")
    return arch, imgsz, inits


def _evaluate(raw: Mapping[str, Any], src: str) -> EvaluateSpec:
    evaluate = section(raw, "evaluate", "", src)
    keys = ("dataset", "split", "models", "tta", "margin", "resamples", "datasets", "all_stages", "ensembles")
    check_keys(evaluate, keys, "evaluate", src)
    split = require(evaluate, "split", str, "evaluate", src)
    one_of(split, SPLITS, "evaluate.split", src)
    tta = typed(evaluate.get("tta", False), bool, "evaluate.tta", src)
    margin = typed(evaluate.get("margin", EvaluateSpec.margin), float, "evaluate.margin", src)
    if not 0 <= margin < 1:
        raise UserError(f"{src}: `evaluate.margin` is {margin!r}; use a value in [0, 1) (a test mAP50-95 difference: 0.01 = one point)")
    resamples = typed(evaluate.get("resamples", EvaluateSpec.resamples), int, "evaluate.resamples", src)
    at_least(resamples, 100, "evaluate.resamples", src, "bootstrap resamples behind each 95% interval; 1000 is plenty")
    dataset, models = require(evaluate, "dataset", str, "evaluate", src), str_list(evaluate, "models", "evaluate", src)
    all_stages = typed(evaluate.get("all_stages", False), bool, "evaluate.all_stages", src)
    if EvaluateSpec.FORGETTING in section(raw, "stages", "", src):
        raise UserError(
            f"{src}: `stages.{EvaluateSpec.FORGETTING}`: eval.json holds the forgetting matrix under that name; rename the stage"
        )
    stage_names = tuple(str(key) for key in section(raw, "stages", "", src))
    ensembles = calibration.ensembles(evaluate, stage_names, src)
    return EvaluateSpec(dataset, split, models, tta, margin, resamples, _matrix_datasets(raw, evaluate, src), all_stages, ensembles)


def _matrix_datasets(raw: Mapping[str, Any], evaluate: Mapping[str, Any], src: str) -> tuple[str, ...]:
    """`evaluate.datasets`: `all` (the default) = every dataset under `datasets:`, in that order; or a list of some of them."""
    known = tuple(str(name) for name in section(raw, "datasets", "", src))
    value = typed(evaluate.get("datasets", EvaluateSpec.ALL), (str, list), "evaluate.datasets", src)
    if isinstance(value, str):
        if value != EvaluateSpec.ALL:
            raise UserError(f"{src}: `evaluate.datasets` is {value!r}; use `{EvaluateSpec.ALL}` or a list of dataset names, e.g. [{value}]")
        return known
    names = str_list(evaluate, "datasets", "evaluate", src)
    for dataset in names:
        if dataset not in known:
            hint = suggest(dataset, list(known))
            raise UserError(
                f"{src}: `evaluate.datasets` names no dataset: {dataset!r}; use names defined under `datasets:` ({', '.join(known)})"
                + (f"; {hint}" if hint else "")
            )
    return names


def _export(raw: Mapping[str, Any], src: str) -> ExportSpec:
    export = section(raw, "export", "", src)
    check_keys(export, ("model", "formats", "half", "int8", "opset", "dynamic", "simplify", "conf", "iou", "parity"), "export", src)
    formats = str_list(export, "formats", "export", src)
    for i, fmt in enumerate(formats):
        one_of(fmt, EXPORT_FORMATS, f"export.formats[{i}]", src, "engine = TensorRT, built only with a CUDA GPU")
    opset = typed(export.get("opset"), (int, type(None)), "export.opset", src)
    if opset is not None and opset < 11:
        raise UserError(f"{src}: `export.opset` is {opset}; use null (Ultralytics picks) or 11 or more (YOLO detectors need opset >= 11)")
    return ExportSpec(
        model=require(export, "model", str, "export", src),
        formats=formats,
        half=require(export, "half", bool, "export", src),
        int8=require(export, "int8", bool, "export", src),
        opset=opset,
        dynamic=typed(export.get("dynamic", True), bool, "export.dynamic", src),
        simplify=typed(export.get("simplify", True), bool, "export.simplify", src),
        conf=_fraction(export, "conf", ExportSpec.conf, "export", src),
        iou=_fraction(export, "iou", ExportSpec.iou, "export", src),
        parity=_parity(export, src),
    )


def _fraction(raw: Mapping[str, Any], key: str, default: float, path: str, src: str) -> float:
    """An optional number in [0, 1] (a share, a confidence, an IoU)."""
    value = typed(raw.get(key, default), float, f"{path}.{key}", src)
    if not 0 <= value <= 1:
        raise UserError(f"{src}: `{path}.{key}` is {value}; use a number from 0 to 1")
    return value


def _parity(export: Mapping[str, Any], src: str) -> ParitySpec:
    parity = export.get("parity") or {}
    parity = typed(parity, dict, "export.parity", src)
    keys = tuple(f.name for f in dataclasses.fields(ParitySpec))
    check_keys(parity, keys, "export.parity", src)
    return ParitySpec(**{k: _fraction(parity, k, getattr(ParitySpec, k), "export.parity", src) for k in keys})


def parse(raw: Any, src: str = "params.yaml") -> Config:
    """Validate a params mapping and return the frozen :class:`Config`."""
    if raw is None:
        raise UserError(f"{src}: the file is empty; start from the params.yaml in the repo")
    raw = typed(raw, dict, "<top level>", src)
    check_keys(raw, TOP_LEVEL_KEYS, "", src)
    seed = require(raw, "seed", int, "", src)
    at_least(seed, 0, "seed", src, "seeds data generation, splits, weight init and training")
    classes = _classes(raw, src)
    sets = {str(key): datasets.dataset(key, value, classes, src) for key, value in section(raw, "datasets", "", src).items()}
    organize = _organize(raw, src)
    arch, imgsz, inits = _model(raw, src)
    train = stages.train_defaults(section(raw, "train", "", src), src)
    chain = stages.stages(section(raw, "stages", "", src), train, src)
    if BASE in chain:
        raise UserError(f"{src}: `stages.{BASE}` is reserved for the initial weights; rename that stage")
    for init in inits:
        if init == BASE or init in chain:
            raise UserError(f"{src}: `model.inits.{init}` clashes with {'the base' if init == BASE else 'a stage'} of that name; rename it")
    graph.check_chain(chain, {BASE, *inits}, src)
    cfg = Config(
        seed=seed,
        classes=classes,
        datasets=MappingProxyType(sets),
        organize=organize,
        model_arch=arch,
        imgsz=imgsz,
        inits=MappingProxyType(inits),
        stages=MappingProxyType(chain),
        evaluate=_evaluate(raw, src),
        export=_export(raw, src),
        source=src,
        select=select_rounds.rounds(raw, src),
        calibrate=calibration.calibrate(raw, classes, src),
    )
    graph.check_references(cfg)
    select_rounds.check_references(cfg)
    stages.check_replay(cfg)
    stages.check_data_loop(cfg)
    return cfg


def load(path: str | Path = "params.yaml") -> Config:
    """Read and validate a params file."""
    return parse(read_yaml(Path(path)), str(path))
