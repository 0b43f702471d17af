"""Reading the organized layout that organize writes: the image files of one split of a ``data.yaml``."""

from __future__ import annotations

from pathlib import Path

import yaml

from stagetrain import ultra
from stagetrain.errors import UserError


def split_images(data_yaml: Path, split: str) -> list[Path]:
    """Image files of ``split`` in an organized ``data.yaml`` (whose paths are relative to its folder)."""
    data = yaml.safe_load(data_yaml.read_text())
    if split not in data:
        raise UserError(f"{data_yaml}: no `{split}` split; rerun organize or set `evaluate.split` to one of train, val, test")
    root = data_yaml.parent / data["path"] if data.get("path") else data_yaml.parent
    folder = root / data[split]
    images = sorted(p for p in folder.iterdir() if p.suffix.lower().lstrip(".") in ultra.IMG_FORMATS) if folder.is_dir() else []
    if not images:
        raise UserError(f"{data_yaml}: the `{split}` split ({folder}) holds no images; rerun organize")
    return images
