"""BentoML's adaptive batching without its millisecond poll while a batch runs.

BentoML 1.4.39 (pinned in pyproject) runs one batch at a time per batchable API. While one runs and a call waits, its
CorkDispatcher's controller wakes every millisecond (`asyncio.sleep(TICKET_INTERVAL)`) to ask whether the batch is
done: with the HTTP-facing service keeping two Model calls in flight, that is about 80 wake-ups per onnxruntime run
on a CPU node, each a trip around the Model's event loop and a context switch on the cores onnxruntime is using
(measured: the Model's event loop 0.66-0.70 core-ms per image with two calls in flight, 0.34 with one; 4-5.6
voluntary context switches per image against 0.8-1.0).

`EventDrivenDispatcher` makes the same decisions as BentoML's controller, in the same order, with one change: where
BentoML polls because a batch is running, it sleeps until that batch ends, a new call arrives, or the moment
BentoML's own rules would cancel the oldest waiting call (its latency budget spent), whichever comes first.
"""
from __future__ import annotations

import asyncio
import logging
import time

from _bentoml_impl.server import app as bentoml_app
from bentoml._internal.marshal.dispatcher import CorkDispatcher, NonBlockSema

log = logging.getLogger("bentoml.serving")


class SignallingSema(NonBlockSema):
    """BentoML's batch semaphore, which also says when a batch has ended."""

    def __init__(self, count: int, released: asyncio.Event):
        super().__init__(count)
        self.released = released

    def release(self) -> None:
        super().release()
        self.released.set()


class EventDrivenDispatcher(CorkDispatcher):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._changed = asyncio.Event()  # a batch ended or a call arrived: the controller decides again
        self._sema = SignallingSema(1, self._changed)

    async def inbound_call(self, data):
        self._changed.set()  # before the call is queued, with no await between: the controller sees both at once
        return await super().inbound_call(data)

    async def _wait_for_change(self, timeout: float) -> None:
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout=max(timeout, self.TICKET_INTERVAL))
        except TimeoutError:
            pass

    async def controller(self) -> None:
        """BentoML 1.4.39's CorkDispatcher.controller, but for the wait while a batch runs."""
        try:  # BentoML's warm-up and optimizer training: the first 11 calls, as BentoML does them
            await self.train_optimizer(self.optimizer.N_SKIPPED_SAMPLE, self.optimizer.N_SKIPPED_SAMPLE + 6, 1)
            for calls, batch in ((6, 1), (5, 2), (3, 3)):
                await self.train_optimizer(calls, 1, batch)
                self.optimizer.trigger_refresh()
        except Exception:  # BentoML's own choice: serve with untrained parameters
            log.exception("Error training optimizer")

        while True:
            try:
                async with self._wake_event:  # block until there's any request in queue
                    await self._wake_event.wait_for(self._queue.__len__)
                n = len(self._queue)
                dt, decay = self.TICKET_INTERVAL, 0.95
                now = time.time()
                w0 = now - self._queue[0].enqueue_time  # the wait of the first call
                wn = now - self._queue[-1].enqueue_time  # the wait of the last call
                a, b = self.optimizer.o_a, self.optimizer.o_b
                latency_0 = w0 + a * n + b  # the first call's latency if its batch began now
                if n > 1 and latency_0 >= self.max_latency:
                    self._queue.popleft().future.cancel()
                    continue
                if self._sema.is_locked():
                    if n == 1 and w0 >= self.max_latency:
                        self._queue.popleft().future.cancel()
                        continue
                    # BentoML polls here every TICKET_INTERVAL; nothing above can change before a batch ends, a
                    # call arrives, or the first call's budget runs out
                    await self._wait_for_change(self.max_latency - (w0 if n == 1 else latency_0))
                    continue
                if n < self.max_batch_size and n * (wn + dt + (a or 0)) <= self.optimizer.wait * decay:
                    await asyncio.sleep(self.TICKET_INTERVAL)  # waiting for a fuller batch: BentoML's poll
                    continue
                self._sema.acquire()
                self._loop.create_task(self.outbound_call(tuple(self._get_inputs())))
            except Exception:  # BentoML's own choice: one bad batch must not stop the dispatcher
                log.exception("Error processing batch requests")


def wait_instead_of_polling() -> None:
    """Every batchable API of the services built after this call gets the event-driven dispatcher."""
    bentoml_app.CorkDispatcher = EventDrivenDispatcher
