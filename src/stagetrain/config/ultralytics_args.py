"""Ultralytics train arguments in params: known names, their types and ranges, and the ones the pipeline owns.

Names, defaults and types come from Ultralytics' own ``cfg/default.yaml`` (read as text, without
importing Ultralytics, so loading params stays fast). The ranges mirror Ultralytics' ``check_cfg``
(fractions in [0, 1], minimum counts), stricter where a value is legal there but trains nothing
(``lr0: 0``); a contract test compares them with the installed Ultralytics.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from types import MappingProxyType
from typing import Any

import yaml

from stagetrain import ultra
from stagetrain.config.checks import at_least, check_keys, describe, typed, where
from stagetrain.errors import UserError

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
# Fractions Ultralytics checks against [0, 1] (its CFG_FRACTION_KEYS, less `fraction`, which also takes counts).
FRACTIONS = (
    "dropout", "cls_pw", "momentum", "weight_decay", "warmup_momentum", "warmup_bias_lr", "hsv_h", "hsv_s", "hsv_v", "translate",
    "perspective", "flipud", "fliplr", "bgr", "mosaic", "mixup", "cutmix", "copy_paste", "erasing", "conf", "iou", "multi_scale", "dlam",
)  # fmt: skip
# Learning rates: a fraction too, but 0 trains nothing, so > 0.
RATES = ("lr0", "lrf")
# Integer counts and their minimum (Ultralytics' CFG_INT_MIN, plus counts it leaves unchecked).
INT_MIN = {
    "epochs": 1,
    "patience": 0,
    "nbs": 1,
    "max_det": 1,
    "mask_ratio": 1,
    "vid_stride": 1,
    "close_mosaic": 0,
    "workers": 0,
    "save_period": -1,
}
# Gains and angles that are >= 0.
NON_NEGATIVE = ("warmup_epochs", "box", "cls", "dfl", "degrees", "shear")
TYPE_NAMES = {
    "bool": (bool,),
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "list": (list,),
    "tuple": (list,),
    "optional": (type(None),),
}


@cache
def _default_yaml() -> str:
    """The text of Ultralytics' ``cfg/default.yaml``, found without importing Ultralytics."""
    return ultra.default_yaml_path().read_text()


@cache
def ultralytics_defaults() -> Mapping[str, Any]:
    """Ultralytics' default train/val arguments."""
    return MappingProxyType(yaml.safe_load(_default_yaml()))


@cache
def _comments() -> Mapping[str, tuple[tuple[type, ...], str]]:
    """``{argument: (accepted types, description)}`` from the ``# (bool | str) what it does`` comments of default.yaml.

    The default value's type alone is too strict: ``cache: False`` also takes 'ram' or 'disk', ``amp`` 'bf16'.
    """
    out = {}
    for line in _default_yaml().splitlines():
        match = re.match(r"(\w+):.*?# \(([^)]*)\)\s*(.*)", line)
        if match:
            words = re.findall(r"[a-z]+", re.sub(r"\[[^]]*\]", "", match[2]))  # list[int] -> list
            kinds = tuple(dict.fromkeys(k for w in words for k in TYPE_NAMES.get(w, ())))
            out[match[1]] = (kinds, match[3].strip())
    return MappingProxyType(out)


def ultralytics_arg_types() -> Mapping[str, tuple[type, ...]]:
    """The types each Ultralytics argument accepts."""
    return MappingProxyType({key: kinds for key, (kinds, _) in _comments().items()})


def _why(key: str) -> str:
    return _comments().get(key, ((), ""))[1]


def check_range(key: str, value: Any, at: str, src: str) -> None:
    """Fail when an Ultralytics argument is out of the range it trains with (see the module docstring)."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if key in RATES or key in FRACTIONS:
        at_least(value, 0, at, src, _why(key), strict=key in RATES)
        if value > 1:
            raise UserError(f"{src}: `{at}` is {value!r}; use a value in [0, 1] ({_why(key)})")
    elif key in INT_MIN:
        at_least(value, INT_MIN[key], at, src, _why(key))
    elif key in NON_NEGATIVE:
        at_least(value, 0, at, src, _why(key))
    elif key == "batch" and not (value == -1 or value >= 1 and isinstance(value, int) or 0 < value < 1):
        raise UserError(f"{src}: `{at}` is {value!r}; use an integer >= 1, -1 (AutoBatch) or a fraction in (0, 1) of GPU memory")
    elif key == "time":
        at_least(value, 0, at, src, "max hours to train", strict=True)


def _device(value: Any, at: str, src: str) -> Any:
    """'auto', 'cpu', 'mps', 0, '0,1' or [0, 1]: resolved at train time."""
    ok = isinstance(value, (str, int)) and not isinstance(value, bool) or value is None
    ok = ok or isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    if not ok:
        raise UserError(f"{src}: `{at}` is {describe(value)}; use auto, cpu, a GPU index (0) or a list of GPU indices ([0, 1]) for DDP")
    return value


def ultralytics_args(raw: Mapping[str, Any], path: str, src: str, own: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check that every key not in ``own`` is an Ultralytics argument of the right type and range."""
    defaults = ultralytics_defaults()
    out = {}
    for key, value in raw.items():
        if key in own:
            continue
        at = where(path, key)
        if key in RESERVED_ARGS:
            raise UserError(f"{src}: `{at}` is set by the pipeline; use {RESERVED_ARGS[key]}")
        if key not in defaults:
            check_keys({key: None}, [*own, *(k for k in defaults if k not in RESERVED_ARGS)], path, src)
        if key == "optimizer" and value == "auto":
            raise UserError(f"{src}: `{at}: auto` ignores lr0; name one (SGD, AdamW, ...)")
        if key == "device":
            out[key] = _device(value, at, src)
            continue
        declared = ultralytics_arg_types().get(key)
        if declared and value is not None:
            value = typed(value, declared, at, src)
        elif defaults[key] is not None and value is not None:
            default = defaults[key]
            kinds = (int, float) if isinstance(default, (int, float)) and not isinstance(default, bool) else type(default)
            value = typed(value, kinds, at, src)
        check_range(key, value, at, src)
        out[key] = value
    return out
