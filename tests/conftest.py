"""Shared test configuration: the ``requires_gpu(n)`` marker and a per-test working directory."""

from __future__ import annotations

import os

import pytest


def _cuda_devices() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    available = None
    for item in items:
        marker = item.get_closest_marker("requires_gpu")
        if marker is None:
            continue
        needed = int(marker.args[0]) if marker.args else 1
        available = _cuda_devices() if available is None else available
        if available < needed:
            item.add_marker(pytest.mark.skip(reason=f"needs {needed} CUDA GPU(s), this machine has {available}"))


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run the test inside a fresh folder, with the embedded MLflow store there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for var in ("MODELYARD_JOB_DIR", "MODELYARD_MLFLOW_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    os.environ.setdefault("PYTHONHASHSEED", "0")
    return tmp_path
