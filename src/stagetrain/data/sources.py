"""download@<dataset>: bring a dataset's raw files into ``data/raw/<dataset>``."""

from __future__ import annotations

import shutil
from pathlib import Path

from stagetrain.config import Config, ConfigError
from stagetrain.data import synthetic


def run(cfg: Config, dataset: str, out_dir: Path) -> dict:
    """Fetch or generate ``dataset`` into ``out_dir`` (replaced) and return a summary."""
    spec = cfg.datasets[dataset]
    if spec.kind != "synthetic":
        raise ConfigError(
            f"{cfg.source}: `datasets.{dataset}.kind: {spec.kind}` is not available in this version; "
            "use `kind: synthetic` (roboflow and local sources are tracked in issue 3)"
        )
    if out_dir.exists():
        shutil.rmtree(out_dir)
    options = spec.options
    return synthetic.generate(out_dir, cfg.seed, options["domain"], options["images"], options["size"], cfg.classes)
