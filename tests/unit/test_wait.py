"""modelyard._wait.wait_until: the one polling loop of the serving code."""

from __future__ import annotations

import time

import pytest

from modelyard._wait import wait_until


def test_returns_true_as_soon_as_the_condition_holds():
    calls = iter([False, False, True])
    started = time.monotonic()
    assert wait_until(lambda: next(calls), timeout_s=5.0, interval_s=0.01)
    assert time.monotonic() - started < 1.0


def test_returns_false_at_the_deadline_after_checking_at_least_once():
    calls = []
    assert not wait_until(lambda: calls.append(1) or False, timeout_s=0.0, interval_s=0.01)
    assert calls == [1]
    started = time.monotonic()
    assert not wait_until(lambda: False, timeout_s=0.1, interval_s=0.02)
    assert 0.1 <= time.monotonic() - started < 1.0


def test_stop_ends_the_wait_early_and_errors_propagate():
    assert not wait_until(lambda: False, timeout_s=10.0, interval_s=0.01, stop=lambda: True)

    def dead() -> bool:
        raise RuntimeError("the process died")

    with pytest.raises(RuntimeError, match="died"):
        wait_until(dead, timeout_s=10.0, interval_s=0.01)
