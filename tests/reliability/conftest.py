"""Reliability tier: faults, load, hostile input and access settings, each test bounded in time and
bound to 127.0.0.1. Every test records the figures it measured through the ``figures`` fixture;
``scripts/reliability_report.py`` renders them into ``docs/reliability.md``."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Where each test's figures land (one JSON file per test); CI and `make test` use the default.
FIGURES_DIR = Path(os.environ.get("MODELYARD_RELIABILITY_OUT", ROOT / "build" / "reliability"))


class Figures:
    """The measured figures of one test, written to ``FIGURES_DIR/<test>.json`` when it ends.

    ``record("failed requests", 0, bound="0 after one client retry")``: ``value`` is what was
    measured in this run, ``bound`` what the test asserts (text, as a reader would say it).
    """

    def __init__(self, nodeid: str, doc: str) -> None:
        self.nodeid, self.doc, self.items = nodeid, doc, []

    def record(self, name: str, value: Any, unit: str = "", bound: str = "", note: str = "") -> Any:
        self.items.append({"name": name, "value": value, "unit": unit, "bound": bound, "note": note})
        return value

    def write(self, outcome: str) -> None:
        FIGURES_DIR.mkdir(parents=True, exist_ok=True)
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.nodeid.split("tests/reliability/")[-1]).strip("_")
        (FIGURES_DIR / f"{stem}.json").write_text(json.dumps(
            {"test": self.nodeid, "doc": self.doc, "outcome": outcome, "figures": self.items}, indent=2, default=str))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item._reliability_outcome = report.outcome  # noqa: SLF001 - read by the figures fixture below
    return report


@pytest.fixture
def figures(request) -> Figures:
    """Record this test's figures; written (with the test's outcome) when the test ends."""
    doc = (request.node.function.__doc__ or "").strip().split("\n\n")[0]
    fig = Figures(request.node.nodeid, " ".join(doc.split()))
    yield fig
    fig.write(getattr(request.node, "_reliability_outcome", "error"))
