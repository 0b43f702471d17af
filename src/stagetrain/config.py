"""Typed, validated, frozen view of ``params.yaml``.

Every stage reads the params file once through :func:`load`. Validation happens before any work:
an unknown key, a wrong type, a ``from:`` naming no stage, a cycle, or a dataset nobody defined is
one :class:`ConfigError` that names the key and, where possible, the closest valid one.
"""

from __future__ import annotations

import difflib
import importlib.util
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import yaml

from stagetrain.data import synthetic


class ConfigError(Exception):
    """A problem the user can fix in their params or inputs; the message says where and how."""


# Keys of ours inside a stage block; everything else must be an Ultralytics train argument.
STAGE_KEYS = ("from", "teacher", "dataset", "freeze_level", "distill", "loss_weights")
# dvc.yaml's template reads these for every stage (DVC templating has no optional keys): `teacher` is a
# DVC dependency of the stage, so a stage that does not distil names its own `from` there.
REQUIRED_STAGE_KEYS = ("from", "teacher", "dataset")
DISTILL_KINDS = ("logit", "feature")
LOSS_TERMS = ("box", "cls", "dfl")  # Ultralytics' detection loss gains, set per stage by `loss_weights`
# Ultralytics arguments the pipeline sets itself; the value says which param to use instead.
RESERVED_ARGS = {
    "data": "the stage's `dataset:` key",
    "model": "`model.arch` (or the stage's `from:`)",
    "imgsz": "`model.imgsz`",
    "seed": "the top-level `seed`",
    "freeze": "`freeze_level` (2 = head only trains, 1 = backbone frozen, 0 = nothing frozen)",
    "project": "nothing: outputs go to models/<stage>",
    "name": "nothing: outputs go to models/<stage>",
    "exist_ok": "nothing: outputs go to models/<stage>",
    "resume": "nothing: resume is automatic",
    "mode": "nothing",
    "task": "nothing: stagetrain trains detectors",
    "distill_model": "the stage's `teacher:` with `distill: {kind: feature}`",
    "dis": "`distill.lambda` (with `kind: feature`)",
}
BASE = "base"  # the pseudo-stage that holds the initial weights (models/base/best.pt)
DATASET_KINDS = ("synthetic", "roboflow", "local")
SPLITS = ("train", "val", "test")


@cache
def _ultralytics_default_yaml() -> str:
    """The text of Ultralytics' ``cfg/default.yaml``, found without importing Ultralytics."""
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("ultralytics is not installed: run `make install` (or `pip install -r requirements.txt`)")
    return (Path(next(iter(spec.submodule_search_locations))) / "cfg" / "default.yaml").read_text()


@cache
def ultralytics_defaults() -> Mapping[str, Any]:
    """Ultralytics' default train/val arguments."""
    return MappingProxyType(yaml.safe_load(_ultralytics_default_yaml()))


@cache
def ultralytics_arg_types() -> Mapping[str, tuple[type, ...]]:
    """The types each Ultralytics argument accepts, from the ``# (bool | str)`` comments of its default.yaml.

    The default value's type alone is too strict: ``cache: False`` also takes 'ram' or 'disk', ``amp`` 'bf16'.
    """
    import re

    names = {"bool": (bool,), "str": (str,), "int": (int,), "float": (int, float), "list": (list,), "tuple": (list,), "optional": (type(None),)}
    out = {}
    for line in _ultralytics_default_yaml().splitlines():
        match = re.match(r"(\w+):.*?# \(([^)]*)\)", line)
        if match:
            words = re.findall(r"[a-z]+", re.sub(r"\[[^]]*\]", "", match[2]))  # list[int] -> list
            out[match[1]] = tuple(dict.fromkeys(k for w in words for k in names.get(w, ())))
    return MappingProxyType(out)


def _where(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def suggest(key: str, options: list[str] | tuple[str, ...]) -> str | None:
    """``did you mean `a` or `b`?`` for the closest valid names, or None when nothing is close."""
    close = difflib.get_close_matches(str(key), [str(o) for o in options], n=3, cutoff=0.6)
    return "did you mean " + " or ".join(f"`{c}`" for c in close) + "?" if close else None


def _check_keys(raw: Mapping[str, Any], allowed: tuple[str, ...] | list[str], path: str, src: str) -> None:
    for key in raw:
        if key not in allowed:
            hint = suggest(key, allowed) or "valid keys: " + ", ".join(map(str, allowed))
            raise ConfigError(f"{src}: unknown key `{_where(path, str(key))}`; {hint}")


def _require(raw: Mapping[str, Any], key: str, kinds: type | tuple[type, ...], path: str, src: str) -> Any:
    if key not in raw:
        raise ConfigError(f"{src}: missing key `{_where(path, key)}`; add it (see params.yaml in the repo for an example)")
    return _typed(raw[key], kinds, _where(path, key), src)


def _typed(value: Any, kinds: type | tuple[type, ...], where: str, src: str) -> Any:
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if float in kinds and int not in kinds and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise ConfigError(f"{src}: `{where}` must be {names}, got {type(value).__name__} {value!r}")
    return value


def _section(raw: Mapping[str, Any], key: str, src: str) -> Mapping[str, Any]:
    return _require(raw, key, dict, "", src)


def _ultralytics_args(raw: Mapping[str, Any], path: str, src: str, own: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check that every key not in ``own`` is an Ultralytics argument of the right type."""
    defaults = ultralytics_defaults()
    out = {}
    for key, value in raw.items():
        if key in own:
            continue
        if key in RESERVED_ARGS:
            raise ConfigError(f"{src}: `{_where(path, key)}` is set by the pipeline; use {RESERVED_ARGS[key]}")
        if key not in defaults:
            _check_keys({key: None}, [*own, *(k for k in defaults if k not in RESERVED_ARGS)], path, src)
        default = defaults[key]
        if key == "optimizer" and value == "auto":
            raise ConfigError(f"{src}: `{_where(path, key)}: auto` ignores lr0; name one (SGD, AdamW, ...)")
        if key == "device":
            out[key] = value  # 'auto', 'cpu', 0, '0,1' or a list: resolved at train time
            continue
        declared = ultralytics_arg_types().get(key)
        if declared and value is not None:
            value = _typed(value, declared, _where(path, key), src)
        elif default is not None and value is not None:
            kinds = (int, float) if isinstance(default, (int, float)) and not isinstance(default, bool) else type(default)
            value = _typed(value, kinds, _where(path, key), src)
        out[key] = value
    return out


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    kind: str
    options: Mapping[str, Any]  # the block named by `kind` (synthetic / roboflow / local)
    class_map: Mapping[str, str | None]


@dataclass(frozen=True)
class DistillSpec:
    kind: str  # logit: class-score and DFL-bin KL against the teacher's outputs; feature: Ultralytics' built-in
    weight: float  # `lambda`: scales the distillation loss (for `feature`, Ultralytics' `dis`)
    temperature: float  # softens both distributions (logit only)


@dataclass(frozen=True)
class StageSpec:
    name: str
    upstream: str  # `from:` in params: another stage's name or `base`
    dataset: str
    freeze_level: int
    train_args: Mapping[str, Any]  # effective Ultralytics arguments: `train` defaults, then stage keys
    teacher: str = ""  # `teacher:`; meaningful only with `distill` (else it equals `from`)
    distill: DistillSpec | None = None


@dataclass(frozen=True)
class Config:
    seed: int
    classes: tuple[str, ...]
    datasets: Mapping[str, DatasetSpec]
    organize_split: Mapping[str, float]
    organize_on_bad: str
    organize_dedupe: bool
    model_arch: str
    imgsz: int
    inits: Mapping[str, str]  # extra starting points: name -> model yaml or .pt (built by init@<name>)
    stages: Mapping[str, StageSpec]
    evaluate_dataset: str
    evaluate_split: str
    evaluate_models: tuple[str, ...]
    evaluate_tta: bool  # test-time augmentation (Ultralytics `augment=True`) in the test-split evaluation
    export_model: str
    export_formats: tuple[str, ...]
    export_half: bool
    export_int8: bool
    export_opset: int | None  # None: Ultralytics picks (18 with torch 2.14)
    export_dynamic: bool  # dynamic batch and image size in the ONNX graph
    export_simplify: bool  # onnxslim graph simplification
    source: str = "params.yaml"


def _dataset(name: str, raw: Any, src: str) -> DatasetSpec:
    path = f"datasets.{name}"
    raw = _typed(raw, dict, path, src)
    _check_keys(raw, ("kind", *DATASET_KINDS, "class_map"), path, src)
    kind = _require(raw, "kind", str, path, src)
    if kind not in DATASET_KINDS:
        raise ConfigError(f"{src}: `{path}.kind` is {kind!r}; use one of {', '.join(DATASET_KINDS)}")
    options = _require(raw, kind, dict, path, src)
    if kind == "synthetic":
        _check_keys(options, ("images", "size", "domain"), f"{path}.synthetic", src)
        for key in ("images", "size"):
            if _require(options, key, int, f"{path}.synthetic", src) < 1:
                raise ConfigError(f"{src}: `{path}.synthetic.{key}` must be >= 1")
        domain = _require(options, "domain", str, f"{path}.synthetic", src)
        if domain not in synthetic.DOMAINS:
            raise ConfigError(f"{src}: `{path}.synthetic.domain` is {domain!r}; use one of {', '.join(synthetic.DOMAINS)}")
    elif kind == "roboflow":
        where = f"{path}.roboflow"
        _check_keys(options, ("workspace", "project", "version", "format", "max_gib"), where, src)
        for key in ("workspace", "project"):
            slug = _require(options, key, str, where, src)
            if not slug.strip() or "/" in slug:
                raise ConfigError(
                    f"{src}: `{where}.{key}` is {slug!r}; use the slug in the dataset's URL app.roboflow.com/<workspace>/<project>/<version>"
                )
        if _require(options, "version", int, where, src) < 1:
            raise ConfigError(f"{src}: `{where}.version` must be >= 1 (the number at the end of the dataset's Roboflow URL)")
    else:
        where = f"{path}.local"
        _check_keys(options, ("path", "format", "max_gib"), where, src)
        if not _require(options, "path", str, where, src).strip():
            raise ConfigError(f"{src}: `{where}.path` is empty; name a dataset folder or a .zip/.tar.gz/.tgz/.tar file")
    if kind != "synthetic":
        # Formats organize reads. Roboflow's are its export ids (the SDK maps yolov5/yolov7 to yolov5pytorch/
        # yolov7pytorch); a local source names its layout, or `auto` lets organize detect it.
        formats = ("yolov8", "yolov5", "yolov7", "yolov9", "yolov11", "yolov12", "coco", "voc")
        formats = formats if kind == "roboflow" else ("auto", "roboflow", "yolo", "coco", "voc")
        options = {**options, "format": _typed(options.get("format", formats[0]), str, f"{where}.format", src)}
        if options["format"] not in formats:
            hint = suggest(options["format"], formats) or "use one of: " + ", ".join(formats)
            raise ConfigError(f"{src}: `{where}.format` is {options['format']!r}; {hint}")
        if "max_gib" in options and _typed(options["max_gib"], float, f"{where}.max_gib", src) <= 0:
            raise ConfigError(f"{src}: `{where}.max_gib` (the cap on the unpacked size, in GiB) must be > 0")
    class_map = _typed(raw.get("class_map") or {}, dict, f"{path}.class_map", src)
    return DatasetSpec(name, kind, MappingProxyType(dict(options)), MappingProxyType(dict(class_map)))


def _stage(name: str, raw: Any, defaults: Mapping[str, Any], src: str) -> StageSpec:
    path = f"stages.{name}"
    raw = _typed(raw, dict, path, src)
    if "teacher" not in raw:
        raise ConfigError(
            f"{src}: missing key `{path}.teacher`; every stage names one (DVC needs the key on every stage): "
            f"its `from` ({raw.get('from')!r}) unless it has a `distill:` block"
        )
    for key in REQUIRED_STAGE_KEYS:
        _require(raw, key, str, path, src)
    freeze_level = _typed(raw.get("freeze_level", 0), int, f"{path}.freeze_level", src)
    if freeze_level not in (0, 1, 2):
        raise ConfigError(f"{src}: `{path}.freeze_level` is {freeze_level}; use 0 (train all), 1 (backbone frozen) or 2 (head only)")
    args = {**defaults, **_ultralytics_args(raw, path, src, own=STAGE_KEYS), **_loss_weights(raw, path, src)}
    epochs = args.get("epochs", ultralytics_defaults()["epochs"])
    close_mosaic = args.get("close_mosaic", ultralytics_defaults()["close_mosaic"])
    if raw.get("mosaic") and close_mosaic >= epochs:
        raise ConfigError(
            f"{src}: `{path}.mosaic: {raw['mosaic']}` would never run: Ultralytics turns mosaic off for the last "
            f"close_mosaic ({close_mosaic}) of the stage's {epochs} epochs; set `{path}.close_mosaic` below {epochs} (e.g. 0)"
        )
    distill = _distill(raw.get("distill"), f"{path}.distill", src) if raw.get("distill") is not None else None
    return StageSpec(name, raw["from"], raw["dataset"], freeze_level, MappingProxyType(args), raw["teacher"], distill)


def _loss_weights(raw: Mapping[str, Any], path: str, src: str) -> dict[str, float]:
    weights = _typed(raw.get("loss_weights") or {}, dict, f"{path}.loss_weights", src)
    _check_keys(weights, LOSS_TERMS, f"{path}.loss_weights", src)
    out = {}
    for term, value in weights.items():
        if term in raw:
            raise ConfigError(f"{src}: `{path}.{term}` and `{path}.loss_weights.{term}` both set the {term} loss gain; keep one")
        out[term] = _typed(value, float, f"{path}.loss_weights.{term}", src)
        if out[term] < 0:
            raise ConfigError(f"{src}: `{path}.loss_weights.{term}` is {value}; use a gain >= 0 (0 turns the term off)")
    return out


def _distill(raw: Any, path: str, src: str) -> DistillSpec:
    raw = _typed(raw, dict, path, src)
    if "teacher" in raw:
        stage = path.rsplit(".", 1)[0]
        raise ConfigError(
            f"{src}: `{path}.teacher`: name the teacher as `{stage}.teacher` instead (a DVC dependency of the stage, "
            "so every stage carries that key; a stage that does not distil names its `from` there)"
        )
    _check_keys(raw, ("kind", "lambda", "temperature"), path, src)
    kind = _typed(raw.get("kind", "logit"), str, f"{path}.kind", src)
    if kind not in DISTILL_KINDS:
        raise ConfigError(f"{src}: `{path}.kind` is {kind!r}; use logit (output KL) or feature (Ultralytics' feature distillation)")
    weight = _typed(raw.get("lambda", 1.0), float, f"{path}.lambda", src)
    temperature = _typed(raw.get("temperature", 2.0), float, f"{path}.temperature", src)
    if weight < 0 or temperature <= 0:
        raise ConfigError(f"{src}: `{path}` needs lambda >= 0 and temperature > 0, got lambda {weight}, temperature {temperature}")
    if kind == "feature" and "temperature" in raw:
        raise ConfigError(f"{src}: `{path}.temperature` applies to `kind: logit` only; remove it for `kind: feature`")
    return DistillSpec(kind, weight, temperature)


def tracked_weights(src: str, name: str) -> bool:
    """True when ``models/<name>/best.pt`` is the user's DVC-tracked checkpoint (``dvc add``), a valid `from:`."""
    return (Path(src).parent / "models" / name / "best.pt.dvc").exists()


def _check_model_name(stages: Mapping[str, StageSpec], roots: set[str], src: str, where: str, name: str) -> None:
    if name not in roots and name not in stages and not tracked_weights(src, name):
        hint = suggest(name, [*sorted(roots), *stages]) or f"use one of: {', '.join([*sorted(roots), *stages])}"
        raise ConfigError(
            f"{src}: `{where}` names no stage: {name!r}; {hint} "
            f"(a fresh architecture: add it under `model.inits`; your own weights: `dvc add models/{name}/best.pt`)"
        )


def _check_chain(stages: Mapping[str, StageSpec], roots: set[str], src: str) -> None:
    for stage in stages.values():
        _check_model_name(stages, roots, src, f"stages.{stage.name}.from", stage.upstream)
    for start in stages:
        seen, name = [start], stages[start].upstream
        while name in stages:
            if name in seen:
                cycle = " -> ".join([*seen[seen.index(name) :], name])
                raise ConfigError(f"{src}: `stages.*.from` forms a cycle: {cycle}; one stage must start `from: {BASE}`")
            seen.append(name)
            name = stages[name].upstream
    for stage in stages.values():
        where = f"stages.{stage.name}.teacher"
        if stage.distill is None:
            if stage.teacher != stage.upstream:
                raise ConfigError(
                    f"{src}: `{where}` is {stage.teacher!r} but the stage has no `distill:` block; a stage that does not "
                    f"distil names its `from` ({stage.upstream!r}) as teacher (DVC reruns the stage when its teacher changes), "
                    f"or add `distill: {{kind: logit, lambda: 1.0, temperature: 2.0}}`"
                )
            continue
        _check_model_name(stages, roots, src, where, stage.teacher)
        if stage.teacher == stage.name or _descends_from(stages, stage.teacher, stage.name):
            raise ConfigError(f"{src}: `{where}: {stage.teacher}` is trained from this stage's own result; a teacher must come before its student")


def _descends_from(stages: Mapping[str, StageSpec], name: str, ancestor: str) -> bool:
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


def parse(raw: Any, src: str = "params.yaml") -> Config:
    """Validate a params mapping and return the frozen :class:`Config`."""
    raw = _typed(raw, dict, "<top level>", src)
    top = ("seed", "classes", "datasets", "organize", "model", "train", "stages", "evaluate", "export")
    _check_keys(raw, top, "", src)
    seed = _require(raw, "seed", int, "", src)
    classes = tuple(_require(raw, "classes", list, "", src))
    if not classes or not all(isinstance(c, str) for c in classes) or len(set(classes)) != len(classes):
        raise ConfigError(f"{src}: `classes` must be a non-empty list of distinct names")

    datasets = {name: _dataset(name, value, src) for name, value in _section(raw, "datasets", src).items()}
    organize = _section(raw, "organize", src)
    _check_keys(organize, ("split", "on_bad", "dedupe"), "organize", src)
    split = {k: _typed(v, float, f"organize.split.{k}", src) for k, v in _require(organize, "split", dict, "organize", src).items()}
    _check_keys(split, SPLITS, "organize.split", src)
    if set(split) != set(SPLITS) or abs(sum(split.values()) - 1) > 1e-6 or min(split.values()) <= 0:
        raise ConfigError(f"{src}: `organize.split` needs train, val and test fractions > 0 that sum to 1, got {split}")
    on_bad = _require(organize, "on_bad", str, "organize", src)
    if on_bad not in ("error", "skip"):
        raise ConfigError(f"{src}: `organize.on_bad` is {on_bad!r}; use `error` or `skip`")

    model = _section(raw, "model", src)
    _check_keys(model, ("arch", "imgsz", "inits"), "model", src)
    inits = {str(k): _typed(v, str, f"model.inits.{k}", src) for k, v in _typed(model.get("inits") or {}, dict, "model.inits", src).items()}
    train_defaults = _ultralytics_args(_section(raw, "train", src), "train", src)
    stages = {name: _stage(str(name), value, train_defaults, src) for name, value in _section(raw, "stages", src).items()}
    if BASE in stages:
        raise ConfigError(f"{src}: `stages.{BASE}` is reserved for the initial weights; rename that stage")
    for name in inits:
        if name == BASE or name in stages:
            raise ConfigError(f"{src}: `model.inits.{name}` clashes with {'the base' if name == BASE else 'a stage'} of that name; rename it")
    _check_chain(stages, {BASE, *inits}, src)

    evaluate = _section(raw, "evaluate", src)
    _check_keys(evaluate, ("dataset", "split", "models", "tta"), "evaluate", src)
    export = _section(raw, "export", src)
    _check_keys(export, ("model", "formats", "half", "int8", "opset", "dynamic", "simplify"), "export", src)
    opset = _typed(export.get("opset"), (int, type(None)), "export.opset", src)
    if opset is not None and opset < 11:
        raise ConfigError(f"{src}: `export.opset` is {opset}; use null (Ultralytics picks) or 11 or more (YOLO detectors need opset >= 11)")
    cfg = Config(
        seed=seed,
        classes=classes,
        datasets=MappingProxyType(datasets),
        organize_split=MappingProxyType(split),
        organize_on_bad=on_bad,
        organize_dedupe=_require(organize, "dedupe", bool, "organize", src),
        model_arch=_require(model, "arch", str, "model", src),
        imgsz=_require(model, "imgsz", int, "model", src),
        inits=MappingProxyType(inits),
        stages=MappingProxyType(stages),
        evaluate_dataset=_require(evaluate, "dataset", str, "evaluate", src),
        evaluate_split=_require(evaluate, "split", str, "evaluate", src),
        evaluate_models=tuple(_require(evaluate, "models", list, "evaluate", src)),
        evaluate_tta=_typed(evaluate.get("tta", False), bool, "evaluate.tta", src),
        export_model=_require(export, "model", str, "export", src),
        export_formats=tuple(_require(export, "formats", list, "export", src)),
        export_half=_require(export, "half", bool, "export", src),
        export_int8=_require(export, "int8", bool, "export", src),
        export_opset=opset,
        export_dynamic=_typed(export.get("dynamic", True), bool, "export.dynamic", src),
        export_simplify=_typed(export.get("simplify", True), bool, "export.simplify", src),
        source=src,
    )
    _check_references(cfg)
    return cfg


def _check_references(cfg: Config) -> None:
    src = cfg.source
    for where, name in [*((f"stages.{s.name}.dataset", s.dataset) for s in cfg.stages.values()), ("evaluate.dataset", cfg.evaluate_dataset)]:
        if name not in cfg.datasets:
            raise ConfigError(f"{src}: `{where}` names no dataset: {name!r}; define it under `datasets:` ({', '.join(cfg.datasets)})")
    if cfg.evaluate_split not in SPLITS:
        raise ConfigError(f"{src}: `evaluate.split` is {cfg.evaluate_split!r}; use one of {', '.join(SPLITS)}")
    for where, name in [*(("evaluate.models", m) for m in cfg.evaluate_models), ("export.model", cfg.export_model)]:
        if name not in cfg.stages:
            raise ConfigError(f"{src}: `{where}` names no stage: {name!r}; use one of {', '.join(cfg.stages)}")
    for fmt in cfg.export_formats:
        if fmt not in ("onnx", "engine"):
            raise ConfigError(f"{src}: `export.formats` has {fmt!r}; use onnx and/or engine")


def load(path: str | Path = "params.yaml") -> Config:
    """Read and validate a params file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; run from the repo root or pass --params") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return parse(raw, str(path))
