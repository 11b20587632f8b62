"""bench/wrk.py, the C load generator of the service benchmarks, against the real service: it replays what the Python
client sends (multipart and JSON requests answered 200, the same labels), counts what the server ran, and a run
whose requests fail raises instead of printing a fast row."""
from __future__ import annotations

import httpx
import pytest
from helpers import running_server

from bench.peers import base64_json, label_of
from bench.serve import multipart
from bench.wrk import Wrk, recorded


@pytest.fixture(scope="module")
def server(artifact, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with running_server({"SERVING_MODEL_DIR": str(artifact)}, log) as srv:
        yield srv


@pytest.fixture(scope="module")
def photos(data_dir) -> list[bytes]:
    return [p.read_bytes() for p in sorted((data_dir / "val").rglob("*.jpg"))[:4]]


@pytest.mark.parametrize("send", [multipart, base64_json("/predict_base64")], ids=["multipart", "json"])
def test_wrk_replays_the_python_clients_requests(server, photos, send):
    # the recorded bytes, sent as they are, get the answer the Python client gets
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for photo, r in zip(photos, recorded(send, photos)):
            replayed = client.post(r.path, content=r.body, headers={"Content-Type": r.content_type})
            assert label_of(replayed) == label_of(send(client, server.url, photo))
    with Wrk(send, photos) as generator:
        rate = generator.warm(server.url, 2)
        row = generator.measure(server.url, 2, 10, rate)
    assert row["requests"] > 0 and row["img_s"] > 0 and row["client_ms"] > 0
    # every request wrk counted was run, and at most the two it left in flight besides
    assert row["requests"] <= row["served"] <= row["requests"] + 2


def test_a_run_with_failing_requests_raises(server, photos):
    def not_an_image(client: httpx.Client, url: str, _: bytes) -> httpx.Response:
        return client.post(url + "/predict", files={"image": ("x.jpg", b"not an image", "image/jpeg")})

    with Wrk(not_an_image, photos[:1]) as generator, pytest.raises(RuntimeError, match="status"):
        generator.warm(server.url, 2)
