"""Integration tier: the CLI in real subprocesses, real Lightning DDP, Ray, MLflow stores and servers."""

from __future__ import annotations

from pathlib import Path

import pytest

from any_models import SharedModels
from modelyard.data import DataConfig
from modelyard.data import run as make_snapshot


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> Path:
    """A data store with a 3,000-row `transactions` snapshot, shared read-only by the tests."""
    root = tmp_path_factory.mktemp("data") / "store"
    make_snapshot(DataConfig(dataset="transactions", rows=3000, seed=0, store=str(root)))
    return root


@pytest.fixture(scope="session")
def any_models(tmp_path_factory) -> SharedModels:
    """``any_models("text" | "images" | "sensors")``: that workload's small model, trained and exported
    by the CLI the first time a test of the session asks for it (any_models.py); read-only for tests."""
    return SharedModels(tmp_path_factory.mktemp("any_models"))
