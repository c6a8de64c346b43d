"""Unit tier: no servers, no Ray. ``ray.init`` raises here, as in Ray Serve's own unit tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch):
    try:
        import ray
    except ImportError:
        return

    def _refuse(*args, **kwargs):
        raise RuntimeError("unit tests must not start Ray; put this test under tests/integration")

    monkeypatch.setattr(ray, "init", _refuse)
