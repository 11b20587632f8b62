"""One Model call for the images of many concurrent requests of this process.

Without it, every request pays a hop to the Model service of its own (an HTTP request, pickling, the dispatcher's
bookkeeping: about 3.7 core-ms on the Model side alone, bench/RESULTS.md), although BentoML's dispatcher then runs
them together anyway. Here requests that arrive while earlier calls are in flight wait in a queue and leave together
in the next call, up to max_batch_size images. Nothing waits on a timer: an idle service sends a lone request at
once, so latency at low load is unchanged, and the adaptive part (how long to wait for a fuller batch) stays with
BentoML's dispatcher in the Model service, which still batches across API workers.
"""
from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

import numpy as np

Infer = Callable[[np.ndarray], Awaitable[np.ndarray]]


class Coalescer:
    """`await run(pixels)` returns `infer(pixels)`, computed in a call shared with other waiting requests."""

    def __init__(self, infer: Infer, max_batch_size: int, max_in_flight: int) -> None:
        self.infer = infer
        self.max_batch_size = max_batch_size
        self.max_in_flight = max_in_flight
        self.waiting: deque[tuple[np.ndarray, asyncio.Future]] = deque()
        self.in_flight: set[asyncio.Task] = set()  # strong references: the loop keeps only weak ones

    async def run(self, pixels: np.ndarray) -> np.ndarray:
        """Logits for uint8 [N,S,S,3]; a request larger than max_batch_size goes as several parts."""
        loop = asyncio.get_running_loop()
        parts = [loop.create_future() for _ in range(0, len(pixels), self.max_batch_size)]
        for i, future in enumerate(parts):
            self.waiting.append((pixels[i * self.max_batch_size:(i + 1) * self.max_batch_size], future))
        self._send()
        # gather: a part's error (503, dropped connection) reaches its request; a cancelled request (client gone)
        # leaves its parts in their calls, whose other requests are unaffected
        return np.concatenate(await asyncio.gather(*parts))

    def _send(self) -> None:
        while self.waiting and len(self.in_flight) < self.max_in_flight:
            batch = self._take()
            task = asyncio.get_running_loop().create_task(self._call(batch))
            self.in_flight.add(task)
            task.add_done_callback(self._done)

    def _take(self) -> list[tuple[np.ndarray, asyncio.Future]]:
        batch, size = [], 0
        while self.waiting and size + len(self.waiting[0][0]) <= self.max_batch_size:
            item = self.waiting.popleft()
            if not item[1].done():  # skip the parts of requests cancelled while waiting
                batch.append(item)
                size += len(item[0])
        return batch

    async def _call(self, batch: list[tuple[np.ndarray, asyncio.Future]]) -> None:
        if not batch:
            return
        try:
            logits = await self.infer(np.concatenate([pixels for pixels, _ in batch]))
        except Exception as exc:  # every request of the call gets the error, as it would have alone
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        start = 0
        for pixels, future in batch:
            if not future.done():
                future.set_result(logits[start:start + len(pixels)])
            start += len(pixels)

    def _done(self, task: asyncio.Task) -> None:
        self.in_flight.discard(task)
        self._send()
