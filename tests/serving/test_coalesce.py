"""The Coalescer alone, on a real event loop: shared calls, answers routed to their request, errors, cancellation."""
from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from contract.errors import RequestError
from serving.coalesce import Coalescer


class SlowModel:
    """Answers row i of its input with the input's own pixel value (and the classes it was asked to map), after
    `seconds`; records every call."""

    def __init__(self, seconds: float = 0.05, fail_on: int | None = None) -> None:
        self.seconds, self.fail_on = seconds, fail_on
        self.calls: list[int] = []
        self.counted: list[list[bool]] = []  # per call, which images are predictions (Coalescer.run's counted)
        self.running = self.most_running = 0

    async def __call__(self, pixels: np.ndarray, maps: np.ndarray,
                       counted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.calls.append(len(pixels))
        self.counted.append(counted.tolist())
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(self.seconds)
            if self.fail_on is not None and self.fail_on in pixels[:, 0, 0, 0]:
                raise RuntimeError("model refused")
            return pixels[:, 0, 0, :1].astype(np.float32), maps
        finally:
            self.running -= 1


def images(*values: int) -> np.ndarray:
    return np.stack([np.full((4, 4, 3), v, np.uint8) for v in values])


def test_concurrent_requests_share_calls_and_get_their_own_rows():
    model = SlowModel()

    async def main():
        c = Coalescer(model, max_batch_size=8, max_in_flight=2)
        return await asyncio.gather(*(c.run(images(i, i + 100)) for i in range(20)))

    answers = asyncio.run(main())
    for i, (logits, _) in enumerate(answers):
        assert logits[:, 0].tolist() == [i, i + 100]
    assert sum(model.calls) == 40
    assert len(model.calls) < 20 and max(model.calls) <= 8, model.calls
    assert model.most_running == 2


def test_a_lone_request_leaves_at_once():
    model = SlowModel(seconds=0.0)

    async def main():
        c = Coalescer(model, max_batch_size=32, max_in_flight=2)
        start = time.perf_counter()
        for _ in range(20):
            await c.run(images(1))
        return (time.perf_counter() - start) / 20

    assert asyncio.run(main()) < 0.005  # no timer: nothing waits for company
    assert model.calls == [1] * 20


def test_a_request_larger_than_a_batch_goes_in_parts_and_comes_back_in_order():
    model = SlowModel()

    async def main():
        return await Coalescer(model, max_batch_size=4, max_in_flight=1).run(images(*range(10)))

    assert asyncio.run(main())[0][:, 0].tolist() == list(range(10))
    assert model.calls == [4, 4, 2]


def test_an_error_reaches_the_requests_of_its_call_only():
    model = SlowModel(fail_on=3)

    async def main():
        c = Coalescer(model, max_batch_size=1, max_in_flight=2)
        results = await asyncio.gather(*(c.run(images(i)) for i in range(6)), return_exceptions=True)
        return results, await c.run(images(7))

    results, after = asyncio.run(main())
    assert [isinstance(r, RuntimeError) for r in results] == [False, False, False, True, False, False]
    assert after[0][0, 0] == 7  # the coalescer keeps serving after a failed call


def test_a_cancelled_request_leaves_the_others_unharmed():
    model = SlowModel()

    async def main():
        c = Coalescer(model, max_batch_size=8, max_in_flight=1)
        first = asyncio.ensure_future(c.run(images(1)))  # in flight
        await asyncio.sleep(0)
        gone = asyncio.ensure_future(c.run(images(2)))  # waiting
        kept = asyncio.ensure_future(c.run(images(3)))
        await asyncio.sleep(0)
        gone.cancel()
        return await first, await kept, gone.cancelled()

    first, kept, cancelled = asyncio.run(main())
    assert first[0][0, 0] == 1 and kept[0][0, 0] == 3 and cancelled
    assert model.calls == [1, 1]  # the cancelled request's image was never sent


@pytest.mark.parametrize("in_flight", [1, 3])
def test_calls_in_flight_never_exceed_the_setting(in_flight):
    model = SlowModel(seconds=0.01)

    async def main():
        c = Coalescer(model, max_batch_size=2, max_in_flight=in_flight)
        await asyncio.gather(*(c.run(images(i)) for i in range(30)))

    asyncio.run(main())
    assert model.most_running == in_flight


def test_a_request_waiting_past_the_budget_is_answered_503_then():
    """max_wait: a request queued behind a long run is refused when its budget runs out, not when the run ends; the
    request in the run is unaffected."""
    model = SlowModel(seconds=0.5)

    async def main():
        c = Coalescer(model, max_batch_size=8, max_in_flight=1, max_wait=0.1)
        first = asyncio.ensure_future(c.run(images(1)))
        await asyncio.sleep(0.01)
        start = time.perf_counter()
        with pytest.raises(RequestError, match="max_latency_ms") as refused:
            await c.run(images(2))
        waited = time.perf_counter() - start
        return await first, refused.value, waited

    (logits, _), refused, waited = asyncio.run(main())
    assert logits[:, 0].tolist() == [1]
    assert refused.status == 503 and refused.reason == "overloaded"
    assert 0.09 < waited < 0.3, waited
    assert model.calls == [1], "the refused request must not run"


def test_without_combining_every_request_runs_alone():
    model = SlowModel(seconds=0.01)

    async def main():
        c = Coalescer(model, max_batch_size=4, max_in_flight=1, combine=False)
        return await asyncio.gather(*(c.run(images(i, i, i)) for i in range(6)))

    answers = asyncio.run(main())
    assert [a[0][:, 0].tolist() for a in answers] == [[i, i, i] for i in range(6)]
    assert model.calls == [3] * 6


def test_requests_asking_for_different_heatmaps_share_a_run():
    """/predict (no maps), /explain of the top two, and of a named class: one call, each request its own columns
    first, the narrower padded with -1 (the top class)."""
    model = SlowModel()

    async def main():
        c = Coalescer(model, max_batch_size=8, max_in_flight=1)
        busy = asyncio.ensure_future(c.run(images(0)))
        await asyncio.sleep(0)
        answers = await asyncio.gather(c.run(images(1)), c.run(images(2, 3), np.array([[-1, -2], [-1, -2]])),
                                       c.run(images(4), np.array([[5]])))
        return [await busy, *answers]

    answers = asyncio.run(main())
    assert model.calls == [1, 4]
    assert [a[0][:, 0].tolist() for a in answers] == [[0], [1], [2, 3], [4]]
    assert answers[1][1].tolist() == [[-1, -1]]
    assert answers[2][1].tolist() == [[-1, -2], [-1, -2]]
    assert answers[3][1].tolist() == [[5, -1]]


class Lanes:
    """Two models as run_mode adaptive wires them: `solo` (every thread) and `lane` (one thread each); records which
    ran each call and whether the solo ever overlapped another call."""

    def __init__(self) -> None:
        self.solo, self.lane = SlowModel(seconds=0.02), SlowModel(seconds=0.02)
        self.overlapped = False

    def wrap(self, model: SlowModel):
        async def call(pixels, maps, counted):
            other = self.lane if model is self.solo else self.solo
            self.overlapped |= other.running > 0 or (model is self.solo and model.running > 0)
            return await model(pixels, maps, counted)
        return call


def test_a_lone_request_runs_solo_and_queued_ones_share_the_lanes():
    lanes = Lanes()

    async def main():
        c = Coalescer(lanes.wrap(lanes.lane), max_batch_size=32, max_in_flight=2, solo=lanes.wrap(lanes.solo))
        lone = [await c.run(images(i)) for i in range(3)]  # one client: nothing else waits
        crowd = await asyncio.gather(*(c.run(images(i)) for i in range(20)))
        return lone, crowd

    lone, crowd = asyncio.run(main())
    assert [a[0][0, 0] for a in lone] == [0, 1, 2] and [a[0][0, 0] for a in crowd] == list(range(20))
    assert lanes.solo.calls[:3] == [1, 1, 1]  # every lone request, and at most the crowd's first
    assert len(lanes.solo.calls) <= 4 and sum(lanes.lane.calls) >= 19
    assert lanes.lane.most_running == 2  # under load the lanes run side by side
    assert not lanes.overlapped  # a solo run has the worker to itself


def test_each_call_takes_its_share_of_the_queue():
    """16 images waiting and two lanes: a call takes the waiting images over the lanes (8), the next half of what is
    left, and so on (guided self-scheduling), side by side; never one call of 16 with a lane idle beside it."""
    lanes = Lanes()

    async def main():
        c = Coalescer(lanes.wrap(lanes.lane), max_batch_size=32, max_in_flight=2, solo=lanes.wrap(lanes.solo))
        first = asyncio.ensure_future(c.run(images(99)))  # the lone request: solo, the others queue behind it
        await asyncio.sleep(0)
        await asyncio.gather(first, *(c.run(images(i)) for i in range(16)))

    asyncio.run(main())
    assert lanes.solo.calls == [1]
    assert lanes.lane.calls == [8, 4, 2, 1, 1], lanes.lane.calls
    assert lanes.lane.most_running == 2


def test_a_lone_image_is_not_alone_while_other_requests_decode():
    """12 MP photos under load reach the queue one at a time while others still decode: those runs take one thread
    (a solo run's spinning threads would take the cores the decoding needs); once nothing decodes, solo again."""
    lanes = Lanes()

    async def main():
        c = Coalescer(lanes.wrap(lanes.lane), max_batch_size=32, max_in_flight=2, solo=lanes.wrap(lanes.solo))
        with c.decoding():  # another request's photo is being decoded meanwhile
            await c.run(images(1))
        await c.run(images(2))

    asyncio.run(main())
    assert lanes.lane.calls == [1] and lanes.solo.calls == [1]


def test_uncounted_images_share_a_call_and_are_marked_per_image():
    """An occlusion map's hidden copies (counted=False) ride in the same run as a real request; the call is told
    which images are predictions, image by image, so the metrics count only those."""
    model = SlowModel()

    async def main():
        c = Coalescer(model, max_batch_size=8, max_in_flight=1)
        first = asyncio.ensure_future(c.run(images(0)))  # runs alone; the next two wait and share a call
        await asyncio.sleep(0.01)
        return await asyncio.gather(first, c.run(images(1, 2), counted=False), c.run(images(3)))
    answers = asyncio.run(main())
    assert model.calls == [1, 3]
    assert model.counted == [[True], [False, False, True]]
    assert [a[0][:, 0].tolist() for a in answers] == [[0], [1, 2], [3]]


def test_a_split_request_joins_parts_from_calls_of_different_map_widths():
    """A request larger than max_batch_size goes as parts; each part may share a call with requests asking for more
    heatmaps (the call padded to the widest). Its answer has its own columns, however its parts were padded (a
    request asking for none, as an occlusion map's copies, gets none): before, joining the parts failed, a 500."""
    model = SlowModel()

    async def main():
        c = Coalescer(model, max_batch_size=3, max_in_flight=1)
        first = asyncio.ensure_future(c.run(images(0)))  # runs alone while the others queue
        await asyncio.sleep(0.01)
        return await asyncio.gather(first, c.run(images(1, 2, 3, 4), np.array([[-1]] * 4)),
                                    c.run(images(9), np.array([[-1, -2, -3]])), c.run(images(5, 6, 7, 8)),
                                    c.run(images(10), np.array([[-1, -2]])))
    _, one_map, three, no_maps, _ = asyncio.run(main())
    # calls: [0]; [1,2,3] (width 1); [4] + [9] (width 3); [5,6,7] (width 0); [8] + [10] (width 2)
    assert model.calls == [1, 3, 2, 3, 2]
    assert one_map[0][:, 0].tolist() == [1, 2, 3, 4] and one_map[1].tolist() == [[-1]] * 4
    assert no_maps[0][:, 0].tolist() == [5, 6, 7, 8] and no_maps[1].shape == (4, 0)
    assert three[1].tolist() == [[-1, -2, -3]]
