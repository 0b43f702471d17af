"""Shared fixtures: the repo's own params, shrunk for tests (tiny images, 1 epoch, CPU)."""

from __future__ import annotations

import pytest

from stagetrain.tools.repo import REPO, copy_repo, dvc, repo_params, shrink, shrunk_copy  # noqa: F401  (shared with `make repro-check`)


@pytest.fixture
def params() -> dict:
    """A fresh, shrunk copy of the repo's params.yaml (mutate freely); synthetic datasets in the flat
    ``images: N`` form that organize splits by ratio (end-to-end tests call ``shrink`` for the repo's own form)."""
    return shrink(repo_params(), flat=True)
