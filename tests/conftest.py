"""Shared fixtures: the repo's own params, shrunk for tests (tiny images, 1 epoch, CPU)."""

from __future__ import annotations

import pytest

from stagetrain.repro import REPO, copy_repo, repo_params, shrink  # noqa: F401  (one implementation, shared with `make repro-check`)


@pytest.fixture
def params() -> dict:
    """A fresh, shrunk copy of the repo's params.yaml (mutate freely)."""
    return shrink(repo_params())
