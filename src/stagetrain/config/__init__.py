"""Typed, validated, frozen view of ``params.yaml``.

Every stage reads the params file once through :func:`load`. Validation happens before any work:
an unknown key, a wrong type or range, a ``from:`` naming no stage, a cycle, or a dataset nobody
defined is one :class:`~stagetrain.errors.UserError` that names the key and, where possible, the
closest valid one.

Modules: ``schema`` (the dataclasses), ``checks`` (key/type/range helpers), ``ultralytics_args``
(Ultralytics' own arguments), ``datasets``, ``stages``, ``graph`` (the stage graph), ``load``.
"""

from stagetrain.config.checks import suggest
from stagetrain.config.graph import tracked_weights
from stagetrain.config.load import load, parse, read_yaml
from stagetrain.config.schema import (
    BASE,
    SPLITS,
    Config,
    DatasetSpec,
    DistillSpec,
    EvaluateSpec,
    ExportSpec,
    OrganizeSpec,
    StageSpec,
)
from stagetrain.config.ultralytics_args import ultralytics_arg_types, ultralytics_defaults

__all__ = [
    "BASE",
    "SPLITS",
    "Config",
    "DatasetSpec",
    "DistillSpec",
    "EvaluateSpec",
    "ExportSpec",
    "OrganizeSpec",
    "StageSpec",
    "load",
    "parse",
    "read_yaml",
    "suggest",
    "tracked_weights",
    "ultralytics_arg_types",
    "ultralytics_defaults",
]
