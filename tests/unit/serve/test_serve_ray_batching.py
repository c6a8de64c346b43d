"""The model replica's queue-driven batcher (no Ray): who runs together, and that nothing waits on a clock.

The event loop's clock stands still here unless a test moves it, so a timed wait can never run out
on its own: a request that ran did so without waiting for any timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from modelyard.serve.ray.batching import Batcher


class _FrozenClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock moves only when a test advances it."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0

    def time(self) -> float:
        return self.now


def _run(scenario: Callable[[_FrozenClockLoop], Awaitable[Any]]) -> Any:
    loop = _FrozenClockLoop()
    try:
        return loop.run_until_complete(scenario(loop))
    finally:
        loop.close()


async def _turns(n: int = 20) -> None:
    """Let the loop run ``n`` times round without the clock moving."""
    for _ in range(n):
        await asyncio.sleep(0)


class _Model:
    """Records each batch; ``hold`` keeps the next batch running until ``release`` is set."""

    def __init__(self, fail_on: object = None) -> None:
        self.batches: list[list[Any]] = []
        self.hold = False
        self.release = asyncio.Event()
        self.fail_on = fail_on

    async def run(self, items: list[Any]) -> list[Any]:
        self.batches.append(list(items))
        if self.hold:
            self.hold = False
            await self.release.wait()
        if self.fail_on in items:
            raise ValueError(f"bad batch {items}")
        return [(item, len(items)) for item in items]


def test_a_lone_request_runs_at_once_without_waiting():
    async def scenario(loop: _FrozenClockLoop) -> None:
        model = _Model()
        batcher = Batcher(model.run, max_batch_size=32)
        task = asyncio.create_task(batcher.submit("a"))
        await _turns()
        assert model.batches == [["a"]]  # ran while the clock stood still: no timed wait
        assert task.done() and task.result() == ("a", 1)
        batcher.close()

    _run(scenario)


def test_requests_that_arrive_while_a_batch_runs_form_the_next_batch_together():
    async def scenario(loop: _FrozenClockLoop) -> None:
        model = _Model()
        model.hold = True
        batcher = Batcher(model.run, max_batch_size=32)
        first = asyncio.create_task(batcher.submit("a"))
        await _turns()
        assert model.batches == [["a"]]  # running, held
        queued = [asyncio.create_task(batcher.submit(x)) for x in "bcde"]
        await _turns()
        assert model.batches == [["a"]] and batcher.pending() == 4  # they wait for the model
        model.release.set()
        assert await first == ("a", 1)
        assert await asyncio.gather(*queued) == [(x, 4) for x in "bcde"]
        assert model.batches == [["a"], ["b", "c", "d", "e"]]
        batcher.close()

    _run(scenario)


def test_a_batch_holds_at_most_max_batch_size_rows_and_a_larger_request_runs_alone():
    async def scenario(loop: _FrozenClockLoop) -> None:
        model = _Model()
        model.hold = True
        batcher = Batcher(model.run, max_batch_size=4, rows=lambda item: item[1])
        first = asyncio.create_task(batcher.submit(("a", 1)))
        await _turns()
        items = [("b", 2), ("c", 2), ("d", 1), ("e", 3), ("f", 5), ("g", 1)]
        queued = [asyncio.create_task(batcher.submit(item)) for item in items]
        await _turns()
        model.release.set()
        await asyncio.gather(first, *queued)
        # In arrival order, while the rows fit; "f" (5 rows > 4) alone.
        assert model.batches == [[("a", 1)], [("b", 2), ("c", 2)], [("d", 1), ("e", 3)], [("f", 5)], [("g", 1)]]
        batcher.close()

    _run(scenario)


def test_an_error_fails_every_request_of_its_batch_and_the_batcher_goes_on():
    async def scenario(loop: _FrozenClockLoop) -> None:
        model = _Model(fail_on="b")
        model.hold = True
        batcher = Batcher(model.run, max_batch_size=8)
        first = asyncio.create_task(batcher.submit("a"))
        await _turns()
        failing = [asyncio.create_task(batcher.submit(x)) for x in "bc"]
        await _turns()
        model.release.set()
        assert await first == ("a", 1)
        outcomes = await asyncio.gather(*failing, return_exceptions=True)
        assert all(isinstance(o, ValueError) and "bad batch ['b', 'c']" in str(o) for o in outcomes), outcomes
        assert await batcher.submit("d") == ("d", 1)
        batcher.close()

    _run(scenario)


def test_a_request_cancelled_while_it_waits_is_not_run():
    async def scenario(loop: _FrozenClockLoop) -> None:
        model = _Model()
        model.hold = True
        batcher = Batcher(model.run, max_batch_size=8)
        first = asyncio.create_task(batcher.submit("a"))
        await _turns()
        gone, kept = asyncio.create_task(batcher.submit("b")), asyncio.create_task(batcher.submit("c"))
        await _turns()
        gone.cancel()
        await _turns()
        model.release.set()
        await first
        assert await kept == ("c", 1)
        assert gone.cancelled() and model.batches == [["a"], ["c"]]
        batcher.close()

    _run(scenario)


def test_max_wait_holds_a_batch_open_from_its_oldest_request_until_it_fills_or_the_wait_ends():
    async def scenario(loop: _FrozenClockLoop) -> None:
        model = _Model()
        batcher = Batcher(model.run, max_batch_size=3, max_wait_s=0.5)
        waiting = [asyncio.create_task(batcher.submit("a"))]
        await _turns()
        loop.now += 0.25
        waiting.append(asyncio.create_task(batcher.submit("b")))
        await _turns()
        assert model.batches == []  # the clock has not reached a's arrival + 0.5
        loop.now += 0.5
        await _turns()
        assert model.batches == [["a", "b"]]
        await asyncio.gather(*waiting)
        # A batch that fills to max_batch_size rows does not wait.
        full = [asyncio.create_task(batcher.submit(x)) for x in "cde"]
        await _turns()
        assert model.batches[1:] == [["c", "d", "e"]] and all(t.done() for t in full)
        batcher.close()

    _run(scenario)


def test_a_wrong_number_of_results_fails_the_batch_with_a_clear_error():
    async def scenario(loop: _FrozenClockLoop) -> None:
        async def short(items: list[str]) -> list[str]:
            return items[:-1]

        batcher = Batcher(short, max_batch_size=4)
        with pytest.raises(RuntimeError, match="returned 0 results for 1 requests"):
            await batcher.submit("a")
        batcher.close()

    _run(scenario)


@pytest.mark.parametrize(("kwargs", "words"), [({"max_batch_size": 0}, "max_batch_size 0 received"),
                                              ({"max_batch_size": 4, "max_wait_s": -1}, "max_wait_s -1 received")])
def test_bad_settings_are_refused(kwargs, words):
    async def run(items: list[int]) -> list[int]:
        return items

    with pytest.raises(ValueError, match=words):
        Batcher(run, **kwargs)


def test_the_model_replica_runs_requests_queued_behind_a_batch_as_one_batch_of_their_rows():
    """ModelVersion in process on the committed example model: while ONNX Runtime is held on its first
    batch, two requests of 2 and 3 rows queue; they run together as one batch of 5 rows and each gets
    its own rows back."""
    import threading
    from pathlib import Path

    import numpy as np

    from modelyard.serve.ray.models import ModelVersion, read_signature

    example = Path(__file__).resolve().parents[3] / "triton_models" / "example_fraud" / "1" / "model.onnx"
    replica = ModelVersion.func_or_class("fraud", "1", str(example), read_signature(str(example)), 8, 0.0)
    session, entered, release = replica.session, threading.Event(), threading.Event()

    class _Held:
        def __getattr__(self, name: str) -> Any:
            return getattr(session, name)

        def run(self, names: list[str], feed: dict[str, np.ndarray]) -> Any:
            entered.set()
            release.wait(timeout=30)  # bounded: a broken test must not hang the suite
            return session.run(names, feed)

    replica.session = _Held()
    rows = [np.full((n, 8), float(n), np.float32) for n in (1, 2, 3)]

    async def scenario() -> list[dict]:
        first = asyncio.create_task(replica.predict({"inputs": {"features": rows[0]}, "role": "stable"}))
        for _ in range(600):
            if entered.is_set():
                break
            await asyncio.sleep(0.05)
        assert entered.is_set(), "the first batch never reached ONNX Runtime"
        queued = [asyncio.create_task(replica.predict({"inputs": {"features": x}, "role": "stable"}))
                  for x in rows[1:]]
        await _turns()
        release.set()
        return await asyncio.wait_for(asyncio.gather(first, *queued), 30)

    answers = asyncio.run(scenario())
    assert [a["batch_size"] for a in answers] == [1, 5, 5]
    for answer, x in zip(answers, rows):
        # Each request's own rows (a batch may round differently from a lone run in the last bits).
        np.testing.assert_allclose(answer["outputs"]["logits"], session.run(["logits"], {"features": x})[0],
                                   rtol=1e-5, atol=1e-6)


def test_the_batcher_serves_again_on_a_new_event_loop_after_the_first_one_closed():
    model = _Model()
    batcher = Batcher(model.run, max_batch_size=4)
    assert asyncio.run(batcher.submit("a")) == ("a", 1)  # asyncio.run cancels the worker as it closes
    assert asyncio.run(batcher.submit("b")) == ("b", 1)
    assert model.batches == [["a"], ["b"]]


@pytest.mark.parametrize(("bound", "max_batch_size", "rows"), [(None, 8, 8), (4, 8, 4), (16, 8, 8)])
def test_the_model_replica_batches_at_most_max_batch_size_rows_and_the_signatures_batch_bound(
        bound, max_batch_size, rows):
    from dataclasses import replace
    from pathlib import Path

    from modelyard.serve.ray.models import ModelVersion, read_signature

    example = Path(__file__).resolve().parents[3] / "triton_models" / "example_fraud" / "1" / "model.onnx"
    signature = read_signature(str(example))
    if bound is not None:
        signature = replace(signature, bounds={"batch": bound})
    replica = ModelVersion.func_or_class("fraud", "1", str(example), signature, max_batch_size, 0.0)
    assert replica._batcher.max_batch_size == rows
