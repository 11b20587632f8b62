"""Adaptive batching in the service's own process: the images of concurrent requests share one onnxruntime run.

Requests that arrive while a run is under way wait in a queue and leave together in the next run, up to
max_batch_size images: under load the batch grows with the queue, at low load a lone request leaves at once. Nothing
waits on a timer for a fuller batch, so there is no latency model to get wrong: the run itself is the wait. A part
still waiting `max_wait` seconds after it was queued is answered 503 at that moment (the service is over its latency
budget, max_latency_ms), so an overloaded node sheds load instead of queueing without bound.

With a `solo` call (run_mode adaptive, serving.settings), a request that finds nothing else waiting, no run under
way and no other request decoding (`decoding()`) goes alone through `solo` (onnxruntime on every thread of the
worker: the lowest latency for one image), and no other run starts until it ends; under load the calls are `infer`
(one onnxruntime thread each), up to max_in_flight at once, so the cores are shared between runs rather than
synchronised inside one. A call then takes its share of what waits (the waiting images over the lanes), not all of
it: one thread with the whole queue would keep those requests waiting for it while the other lanes finish and idle.
On a CPU an image costs about the same in a batch of 1 or 32 (bench/RESULTS.md), so the smaller calls cost no
throughput. While other requests decode, a lone image in the queue is not alone: a solo run's spinning threads would
take the cores the decoding needs (12 MP photos at c = 8-64: 0.88-0.97x the shared layout's img/s before this rule,
bench/RESULTS.md 2026-12-02).

A part may ask for heatmaps (`maps`: per image, the classes to map, training.cam's encoding); parts asking for
different numbers share a run all the same: the narrower are padded with -1 (the top class, a few hundred
multiply-adds an image) and each request reads only the columns it asked for.

A part may also be left out of the prediction metrics (`counted=False`): an occlusion map's hidden copies of a
picture (contract.occlusion) share runs with real requests, but they are not predictions anyone asked for, and
counting them would move the class shares and confidence that the drift and accuracy alerts watch.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import numpy as np

from contract.errors import RequestError

Outputs = tuple[np.ndarray, ...]  # row i of each belongs to image i
Infer = Callable[[np.ndarray, np.ndarray, np.ndarray], Awaitable[Outputs]]  # pixels, maps, counted (bool [N])


@dataclass
class Part:
    pixels: np.ndarray
    maps: np.ndarray  # int64 [n, M]: the classes to map per image; M = 0 asks for none
    future: asyncio.Future
    expiry: asyncio.TimerHandle | None
    counted: bool = True  # its predictions go into the metrics


def joined(answers: list[Outputs], width: int) -> Outputs:
    """The outputs of a request's parts, which may have run in calls of different map widths (each padded to its
    widest request): every output after the first (the probabilities) cut to the request's own `width` columns
    before they are joined; where it asked for none, empty."""
    n = sum(len(a[0]) for a in answers)
    out = [np.concatenate([a[0] for a in answers])]
    for column in zip(*(a[1:] for a in answers)):
        out.append(np.concatenate([o[:, :width] for o in column]) if width else
                   np.zeros((n, 0, *column[0].shape[2:]), column[0].dtype))
    return tuple(out)


def overloaded(max_wait: float) -> RequestError:
    return RequestError("overloaded", f"the request waited over {max_wait * 1000:.0f} ms (max_latency_ms) for the "
                        "model: this replica is over its load; retry later or add replicas", 503)


class Coalescer:
    """`await run(pixels, maps)` returns `infer(pixels, maps)`, computed in a call shared with other waiting
    requests.

    combine=False: every request is a call of its own (split at max_batch_size), for comparison. solo: the call for
    a request that arrives alone (see the module's docstring); None: every call is `infer`."""

    def __init__(self, infer: Infer, max_batch_size: int, max_in_flight: int, max_wait: float | None = None,
                 combine: bool = True, solo: Infer | None = None) -> None:
        self.infer = infer
        self.solo = solo
        self.solo_running = False
        self.decoding_requests = 0  # requests decoding now (decoding())
        self.max_batch_size = max_batch_size
        self.max_in_flight = max_in_flight
        self.max_wait = max_wait
        self.combine = combine
        self.waiting: deque[Part] = deque()
        self.in_flight: set[asyncio.Task] = set()  # strong references: the loop keeps only weak ones

    async def run(self, pixels: np.ndarray, maps: np.ndarray | None = None, counted: bool = True) -> Outputs:
        """Outputs for uint8 [N,S,S,3]; a request larger than max_batch_size goes as several parts. Outputs with
        map columns may have more columns than `maps` asked for (padding): read the first M. counted=False: not
        predictions (the module's docstring)."""
        loop = asyncio.get_running_loop()
        if maps is None:
            maps = np.zeros((len(pixels), 0), np.int64)
        parts = []
        for start in range(0, len(pixels), self.max_batch_size):
            future = loop.create_future()
            expiry = None if self.max_wait is None else loop.call_later(self.max_wait, self._expire, future)
            end = start + self.max_batch_size
            parts.append(Part(pixels[start:end], maps[start:end], future, expiry, counted))
        self.waiting.extend(parts)
        self._send()
        # gather: a part's error (503, a failed run) reaches its request; a cancelled request (client gone) leaves its
        # parts in their calls, whose other requests are unaffected
        answers = await asyncio.gather(*(p.future for p in parts))
        return answers[0] if len(answers) == 1 else joined(answers, maps.shape[1])

    @contextlib.contextmanager
    def decoding(self) -> Iterator[None]:
        """Around a request's decoding, before its `run`: counted, so that a solo call waits for a quiet worker."""
        self.decoding_requests += 1
        try:
            yield
        finally:
            self.decoding_requests -= 1

    def _expire(self, future: asyncio.Future) -> None:
        if not future.done():  # still queued: a part that left has its timer cancelled
            future.set_exception(overloaded(self.max_wait))

    def _send(self) -> None:
        while self.waiting and len(self.in_flight) < self.max_in_flight and not self.solo_running:
            alone = self.solo is not None and not (self.in_flight or self.decoding_requests) and len(self.waiting) == 1
            batch = self._take(self._share() if self.solo is not None and not alone else self.max_batch_size)
            if not batch:
                continue
            self.solo_running = alone
            task = asyncio.get_running_loop().create_task(self._call(batch, self.solo if alone else self.infer))
            self.in_flight.add(task)
            task.add_done_callback(self._done)

    def _share(self) -> int:
        """Images for the next call where calls run one thread each: the waiting ones spread over the lanes."""
        waiting = sum(len(p.pixels) for p in self.waiting)
        return min(self.max_batch_size, -(-waiting // self.max_in_flight))

    def _take(self, limit: int) -> list[Part]:
        """The next call's parts: the waiting ones in arrival order up to `limit` images, at least one part (one part
        where combine=False), skipping those cancelled or expired while they waited."""
        batch, size = [], 0
        while self.waiting and (not batch or size + len(self.waiting[0].pixels) <= limit):
            part = self.waiting.popleft()
            if part.expiry is not None:
                part.expiry.cancel()
            if not part.future.done():
                batch.append(part)
                size += len(part.pixels)
                if not self.combine:
                    break
        return batch

    async def _call(self, batch: list[Part], infer: Infer) -> None:
        width = max(p.maps.shape[1] for p in batch)
        maps = np.concatenate([np.pad(p.maps, ((0, 0), (0, width - p.maps.shape[1])), constant_values=-1)
                               for p in batch])
        try:
            counted = np.concatenate([np.full(len(p.pixels), p.counted) for p in batch])
            outputs = await infer(np.concatenate([p.pixels for p in batch]), maps, counted)
        except Exception as exc:  # every request of the call gets the error, as it would have alone
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        start = 0
        for p in batch:
            if not p.future.done():
                p.future.set_result(tuple(o[start:start + len(p.pixels)] for o in outputs))
            start += len(p.pixels)

    def _done(self, task: asyncio.Task) -> None:
        self.in_flight.discard(task)
        self.solo_running = False  # a solo call runs with nothing else in flight: this was it, or none ran
        self._send()
