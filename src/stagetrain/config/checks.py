"""Small checks every section uses: keys, types, ranges and names, each failing as one clear UserError.

A message always starts with the params file and names the dotted key (``stages.stage2.lr0``), then
says what is wrong and how to fix it; where a name is misspelt it suggests the closest valid one.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any

from stagetrain.errors import UserError

# How a type reads in a message: `epochs` must be an integer, got a string 'ten'.
TYPE_WORDS = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "a mapping (key: value)",
    type(None): "null",
}
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # names that become paths and DVC stage names (train@<name>)


def where(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def describe(value: Any) -> str:
    """A value as a message quotes it: its kind, then its text (cut short)."""
    text = repr(value)
    return f"{TYPE_WORDS.get(type(value), type(value).__name__)} {text if len(text) <= 60 else text[:57] + '...'}"


def suggest(key: Any, options: list[str] | tuple[str, ...]) -> str | None:
    """``did you mean `a` or `b`?`` for the closest valid names, or None when nothing is close."""
    close = difflib.get_close_matches(str(key), [str(o) for o in options], n=3, cutoff=0.6)
    return "did you mean " + " or ".join(f"`{c}`" for c in close) + "?" if close else None


def check_keys(raw: Mapping[Any, Any], allowed: tuple[str, ...] | list[str], path: str, src: str) -> None:
    for key in raw:
        if key not in allowed:
            hint = suggest(key, allowed) or "valid keys: " + ", ".join(map(str, allowed))
            raise UserError(f"{src}: unknown key `{where(path, key)}`; {hint}")


def typed(value: Any, kinds: type | tuple[type, ...], at: str, src: str) -> Any:
    """``value`` when it is one of ``kinds`` (an int where a float is wanted becomes a float), else a UserError."""
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if float in kinds and int not in kinds and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        wanted = " or ".join(dict.fromkeys(TYPE_WORDS.get(k, k.__name__) for k in kinds))
        raise UserError(f"{src}: `{at}` must be {wanted}, got {describe(value)}")
    return value


def require(raw: Mapping[str, Any], key: str, kinds: type | tuple[type, ...], path: str, src: str) -> Any:
    if key not in raw:
        raise UserError(f"{src}: missing key `{where(path, key)}`; add it (see params.yaml in the repo for an example)")
    return typed(raw[key], kinds, where(path, key), src)


def section(raw: Mapping[str, Any], key: str, path: str, src: str) -> Mapping[str, Any]:
    """A mapping-valued key; ``null`` or a missing optional section is an error naming it."""
    return require(raw, key, dict, path, src)


def at_least(value: float, low: float, at: str, src: str, why: str = "", strict: bool = False) -> None:
    """Fail unless ``value >= low`` (``> low`` when ``strict``); ``why`` says what the key is for."""
    if value < low or strict and value == low:
        bound = f"{'>' if strict else '>='} {low}"
        raise UserError(f"{src}: `{at}` is {value!r}; use a value {bound}{f' ({why})' if why else ''}")


def one_of(value: Any, options: tuple[str, ...], at: str, src: str, why: str = "") -> None:
    if value not in options:
        hint = suggest(value, options)
        raise UserError(
            f"{src}: `{at}` is {value!r}; use one of {', '.join(options)}{f' ({why})' if why else ''}" + (f"; {hint}" if hint else "")
        )


def name(value: Any, at: str, src: str) -> str:
    """A dataset, stage or init name: it becomes a folder and a DVC stage name, so only ``[A-Za-z0-9_.-]``."""
    value = typed(value, str, at, src)
    if not NAME.match(value):
        raise UserError(f"{src}: `{at}` is {value!r}; a name becomes a folder and a DVC stage name: use letters, digits, `_`, `-`, `.`")
    return value


def str_list(raw: Mapping[str, Any], key: str, path: str, src: str, allow_empty: bool = False) -> tuple[str, ...]:
    """A list of distinct strings at ``path.key``, each item checked (a mapping or number in it is an error naming its index)."""
    items = require(raw, key, list, path, src)
    at = where(path, key)
    if not items and not allow_empty:
        raise UserError(f"{src}: `{at}` is empty; list at least one")
    out = tuple(typed(item, str, f"{at}[{i}]", src) for i, item in enumerate(items))
    repeated = sorted({item for item in out if out.count(item) > 1})
    if repeated:
        raise UserError(f"{src}: `{at}` repeats {', '.join(map(repr, repeated))}; list each once")
    return out
