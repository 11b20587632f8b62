"""The event-driven batch dispatcher against BentoML's own, on a real event loop: the same batches and cancellations,
without a wake-up every millisecond while a batch runs."""
from __future__ import annotations

import asyncio
import time

import pytest
from bentoml._internal.marshal.dispatcher import CorkDispatcher
from bentoml.exceptions import ServiceUnavailable

from serving.dispatch import EventDrivenDispatcher

TRAINING_CALLS = 11  # BentoML's optimizer training: N_SKIPPED_SAMPLE + 6, then one call each at batch 1, 2 and 3


def overloaded():
    raise ServiceUnavailable("process is overloaded")


class Batches:
    """A batch function that answers each input with itself doubled; `seconds` per batch, changed at will."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.sizes: list[int] = []

    async def __call__(self, inputs):
        self.sizes.append(len(inputs))
        await asyncio.sleep(self.seconds)
        return [2 * x for x in inputs]


class CountingLocks:
    """Counts the controller's looks at the batch semaphore: one per turn of its loop."""

    def __init__(self, sema) -> None:
        self.sema, self.looks = sema, 0

    def __getattr__(self, name):
        return getattr(self.sema, name)

    def is_locked(self) -> bool:
        self.looks += 1
        return self.sema.is_locked()


async def trained(cls, max_latency_ms: int = 10_000):
    batches = cls(max_latency_ms, 64, fallback=overloaded, get_batch_size=lambda x: 1)
    fn = Batches()
    call = batches(fn)
    for i in range(TRAINING_CALLS):
        assert await call(i) == 2 * i
    return batches, fn, call


async def one_call_waiting_behind_a_batch(cls, batch_seconds: float, max_latency_ms: int = 10_000):
    """Call A runs for batch_seconds while call B waits: (B's answer or error, when A ended, when B ended, looks)."""
    batches, fn, call = await trained(cls, max_latency_ms)
    fn.seconds = batch_seconds
    batches._sema = locks = CountingLocks(batches._sema)
    ended = {}

    async def timed(name, x):
        try:
            return await call(x)
        except ServiceUnavailable as exc:
            return exc
        finally:
            ended[name] = time.perf_counter()

    a = asyncio.create_task(timed("a", 100))
    await asyncio.sleep(0.05)  # A's batch is running
    looks_before = locks.looks
    b = await timed("b", 200)
    assert await a == 200
    return b, ended["a"], ended["b"], locks.looks - looks_before, fn


@pytest.mark.parametrize("cls, most_looks", [(EventDrivenDispatcher, 5), (CorkDispatcher, None)])
def test_no_polling_while_a_batch_runs(cls, most_looks):
    b, a_end, b_end, looks, fn = asyncio.run(one_call_waiting_behind_a_batch(cls, batch_seconds=0.4))
    assert b == 400 and fn.sizes[-2:] == [1, 1]
    if most_looks is None:  # BentoML's: a look every millisecond, which is why serving.dispatch exists
        assert looks > 100, f"BentoML {cls.__name__} no longer polls ({looks} looks): serving.dispatch may go"
    else:
        assert looks <= most_looks


def test_the_waiting_call_starts_as_the_batch_ends():
    b, a_end, b_end, _, _ = asyncio.run(one_call_waiting_behind_a_batch(EventDrivenDispatcher, batch_seconds=0.3))
    assert b == 400
    assert 0.3 <= b_end - a_end < 0.3 + 0.1  # B's batch began when A's ended, not a poll later


def test_a_call_past_its_latency_budget_is_cancelled_while_the_batch_runs():
    """BentoML's rule: a lone waiting call whose wait reaches max_latency is answered 503 then, not when the batch
    in front of it ends."""
    b, a_end, b_end, _, _ = asyncio.run(
        one_call_waiting_behind_a_batch(EventDrivenDispatcher, batch_seconds=1.0, max_latency_ms=300))
    assert isinstance(b, ServiceUnavailable)
    assert b_end < a_end - 0.4


def test_calls_that_arrive_together_share_a_batch():
    async def scenario():
        _, fn, call = await trained(EventDrivenDispatcher)
        fn.seconds = 0.2
        first = asyncio.create_task(call(-1))
        await asyncio.sleep(0.05)
        answers = await asyncio.gather(*(call(i) for i in range(8)))  # all queued behind `first`
        await first
        return answers, fn.sizes[-2:]

    answers, sizes = asyncio.run(scenario())
    assert answers == [2 * i for i in range(8)]
    assert sizes == [1, 8]
