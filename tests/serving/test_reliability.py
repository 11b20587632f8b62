"""Hostile input, load, shutdown and broken models, against the real `bentoml serve` over real HTTP (issue 10).

Every request here must get an answer below 500, and every error answer must say what was wrong.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from helpers import SHARED, running_server
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bench import soak
from contract.card import load_card
from serving import oip
from serving.launch import Server

pytestmark = pytest.mark.slow
FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "200")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def server(artifact, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with running_server({"SERVING_MODEL_DIR": str(artifact), "SERVING_MAX_REQUEST_BYTES": "2000000"}, log) as srv:
        yield srv
    log = log.read_text()
    answers_5xx = [line for line in log.splitlines() if "(status=5" in line]
    assert not answers_5xx, answers_5xx[:5]  # the access log: every request of the module, the Model's included


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def card(artifact):
    return load_card(artifact)


@pytest.fixture(scope="module")
def photo(data_dir) -> bytes:
    return sorted((data_dir / "val" / "ants").iterdir())[0].read_bytes()


def answered(r: httpx.Response) -> httpx.Response:
    assert r.status_code < 500, f"{r.status_code} for {r.request.method} {r.request.url}: {r.text[:300]}"
    if r.status_code >= 400:
        assert r.text.strip(), f"{r.status_code} without a message"
    return r


def is_error_with_message(r: httpx.Response) -> bool:
    """JSON errors name the problem ({"error", "message"} from our code, {"error"} from BentoML's validation)."""
    if r.headers.get("content-type", "").startswith("application/json"):
        return len(r.text) > 20 and ('"message"' in r.text or '"error"' in r.text)
    return bool(r.text.strip())


# ---- property-based fuzzing (hypothesis) ------------------------------------------------------------------------
@FUZZ
@given(body=st.binary(max_size=4096), name=st.text(max_size=40), ctype=st.sampled_from(
    ["image/jpeg", "image/png", "application/octet-stream", "text/plain", ""]))
def test_fuzz_arbitrary_bytes_as_an_upload(client, body, name, ctype):
    r = answered(client.post("/predict", files={"image": (name or "x", body, ctype)}))
    assert r.status_code in (400, 413, 415, 422) and is_error_with_message(r)


@FUZZ
@given(data=st.data())
def test_fuzz_damaged_real_photos(client, photo, data):
    blob = bytearray(photo)
    for _ in range(data.draw(st.integers(0, 12))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    blob = bytes(blob[:data.draw(st.integers(0, len(blob)))])
    r = answered(client.post("/predict", files={"image": ("x.jpg", blob, "image/jpeg")}))
    if r.status_code == 200:  # a damaged JPEG can still decode; then the answer must be a real prediction
        assert r.json()["label"] in ("ants", "bees") and 0 <= r.json()["confidence"] <= 1
    else:
        assert r.status_code in (400, 413, 415) and is_error_with_message(r)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                    | st.text(max_size=30),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)


@FUZZ
@given(endpoint=st.sampled_from(["/predict_base64", "/predict_base64_batch", "/explain_base64",
                                  "/explain_base64_batch", "/feedback", "/model_info"]),
       body=st.one_of(JSON, st.fixed_dictionaries({"image": JSON},
                                                  optional={"top_k": JSON, "label": JSON, "format": JSON}),
                      st.fixed_dictionaries({"images": st.lists(st.text(max_size=40), max_size=3)},
                                            optional={"top_k": JSON, "label": JSON, "format": JSON}),
                      st.fixed_dictionaries({"predicted": JSON, "actual": JSON})))
def test_fuzz_json_bodies(client, endpoint, body):
    r = answered(client.post(endpoint, json=body))
    assert r.status_code in (200, 400, 415, 422), r.text


@FUZZ
@given(endpoint=st.sampled_from(["/predict", "/predict_batch", "/predict_base64", "/explain", "/explain_batch",
                                  "/feedback"]),
       ctype=st.sampled_from(["application/json", "multipart/form-data", "multipart/form-data; boundary=xyz",
                              "application/x-www-form-urlencoded", "text/plain", "image/jpeg"]),
       body=st.binary(max_size=512))
def test_fuzz_raw_bodies_and_content_types(client, endpoint, ctype, body):
    r = answered(client.post(endpoint, content=body, headers={"content-type": ctype}))
    assert r.status_code in (400, 404, 413, 415, 422), r.text


@FUZZ
@given(route=st.sampled_from(["/predict", "/explain"]), top_k=st.text(max_size=12),
       extra=st.dictionaries(st.sampled_from(["label", "format"]) | st.text(min_size=1, max_size=10),
                             st.sampled_from(["ants", "png", "grid"]) | st.text(max_size=20), max_size=2))
@example(route="/explain", top_k="1", extra={"label": "ants", "format": "png"})
def test_fuzz_form_fields(client, photo, route, top_k, extra):
    """/predict's form fields, and /explain's (`label`, `format` besides)."""
    r = answered(client.post(route, files={"image": ("x.jpg", photo, "image/jpeg")},
                             data={"top_k": top_k, **extra}))
    if r.status_code == 200:
        assert 1 <= len(r.json()["top_k"]) <= 2
        assert route == "/predict" or r.json()["heatmaps"]
    else:
        assert r.status_code in (400, 422) and is_error_with_message(r)


# ---- the Open Inference Protocol's binary tensor extension (hypothesis) ------------------------------------------
def _binary_infer(photo: bytes, data) -> tuple[bytes, dict]:
    """A V2 binary request with one thing wrong, or several: header length, element lengths, sizes, datatype."""
    elements = oip.pack_bytes([photo[:data.draw(st.integers(0, len(photo)))]])
    tail = elements[:data.draw(st.integers(0, len(elements)))]
    size = data.draw(st.one_of(st.just(len(tail)), st.integers(-3, len(tail) + 10), st.text(max_size=4)))
    item = {"name": data.draw(st.sampled_from(["image", "images", "x"])),
            "datatype": data.draw(st.sampled_from(["BYTES", "UINT8", "FP32", "bytes", ""])),
            "shape": data.draw(st.one_of(st.just([1]), st.lists(st.integers(-2, 70), max_size=4))),
            "parameters": {"binary_data_size": size}}
    header = json.dumps({"inputs": [item]}).encode()
    header = header[:data.draw(st.integers(0, len(header)))] if data.draw(st.booleans()) else header
    length = data.draw(st.one_of(st.just(str(len(header))), st.integers(-5, len(header) + len(tail) + 5).map(str),
                                 st.text(max_size=5)))
    return header + tail, {"inference-header-content-length": length}


@FUZZ
@given(data=st.data())
def test_fuzz_v2_binary_bodies(client, card, photo, data):
    body, headers = _binary_infer(photo, data)
    try:
        r = client.post(f"/v2/models/{card.name}/infer", content=body, headers=headers)
    except (httpx.LocalProtocolError, UnicodeEncodeError):  # a header value that is not legal HTTP: not sent
        return
    answered(r)
    if r.status_code == 200:  # only a well-formed request of one whole photo can succeed
        assert r.json()["outputs"][0]["name"] == "probabilities"
    else:
        assert r.status_code in (400, 413), (r.status_code, r.text)
        if r.headers["content-type"] == "application/json":  # else the HTTP server's own parser refused the header
            assert set(r.json()) == {"error"} and r.json()["error"], (r.status_code, r.text)


# ---- schema-driven fuzzing of the OpenAPI documents (schemathesis) -----------------------------------------------
def _schemathesis(args: list[str], har: Path) -> list[dict]:
    run = subprocess.run([str(Path(sys.executable).parent / "st"), "run", *args, "--checks", "not_a_server_error",
                          "--seed", "7", "--workers", "1", "--report", "har", "--report-har-path", str(har)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:]
    entries = json.loads(har.read_text())["log"]["entries"]
    assert max(e["response"]["status"] for e in entries) < 500
    silent = [e for e in entries if e["response"]["status"] >= 400 and not e["response"]["content"].get("text")]
    assert not silent, f"{len(silent)} error answers without a message"
    return entries


def test_schemathesis_finds_no_server_error(server, tmp_path):
    entries = _schemathesis([server.url + "/docs.json", "--max-examples", "40"], tmp_path / "run.har")
    assert len(entries) >= 200, f"schemathesis sent only {len(entries)} requests"


def test_schemathesis_open_inference_protocol(server, card, tmp_path):
    """The protocol's own OpenAPI document, its ${MODEL_NAME} / ${MODEL_VERSION} placeholders made this model's."""
    doc = yaml.safe_load((SHARED / "schemas" / "open_inference_rest.yaml").read_text())
    paths = {}
    for path, item in doc["paths"].items():
        item.pop("parameters", None)
        paths[path.replace("${MODEL_NAME}", card.name).replace("${MODEL_VERSION}", card.version)] = item
    doc["paths"] = paths
    schema = tmp_path / "open_inference_rest.json"
    schema.write_text(json.dumps(doc))
    entries = _schemathesis([str(schema), "--url", server.url, "--max-examples", "60"], tmp_path / "run.har")
    infer = [e for e in entries if e["request"]["url"].endswith("/infer")]
    assert len(infer) >= 40, f"schemathesis sent only {len(infer)} inference requests"
    assert any(e["request"]["url"].endswith("/health/ready") for e in entries)


# ---- soak ------------------------------------------------------------------------------------------------------
def test_soak_64_clients_60_seconds(server, data_dir):
    images = sorted((data_dir / "val").rglob("*.jpg"))[:32]
    r = soak.soak(server.url, server.proc.pid, images, ["ants", "bees"], clients=64, seconds=60, max_requests=40_000)
    print("\n" + soak.table(r))
    assert r["requests"] >= 1000, r
    assert r["server_errors_any"] == 0 and r["bad_not_4xx"] == 0, r["by_kind_status"]
    assert r["warmup_server_errors"] == 0, r
    assert not any("without message" in k for k in r["by_kind_status"]), r["by_kind_status"]
    assert r["workers_replaced"] == 0
    # Bounded: once warmed up (memory levelled off), 60 s of this traffic may not add more than 10 %.
    assert r["rss_after_mb"] <= 1.10 * r["rss_before_mb"], f"server memory still growing: {r}"


# ---- graceful shutdown -----------------------------------------------------------------------------------------
def test_sigterm_finishes_in_flight_requests_after_readiness_goes_false(artifact, data_dir, tmp_path):
    srv = Server({"SERVING_MODEL_DIR": str(artifact), "SERVING_DRAIN_SECONDS": "0.2"}, tmp_path / "serve.log")
    photos = sorted((data_dir / "val" / "bees").iterdir())[:40]
    files = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in photos]
    results = []

    def heavy():  # 40 images per request, 8 at once: seconds of work queued when SIGTERM arrives
        results.append(httpx.post(srv.url + "/predict_batch", files=files, timeout=120).status_code)

    try:
        assert srv.wait_ready()
        threads = [threading.Thread(target=heavy) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        srv.terminate()
        first = httpx.get(srv.url + "/readyz", timeout=5)
        late = httpx.post(srv.url + "/predict", files={"image": photos[0].open("rb")}, timeout=60)
        for t in threads:
            t.join()
        code = srv.proc.wait(60)
    finally:
        srv.stop()
    log = (tmp_path / "serve.log").read_text()
    assert first.status_code == 503, "readiness must turn false as soon as SIGTERM arrives"
    assert late.status_code == 200, "a request that still arrives while draining is answered"
    assert results == [200] * 8, f"in-flight requests lost on SIGTERM: {results}"
    assert code == 0 and "drained (0.0 request(s) still in flight)" in log


# ---- missing, corrupt or mismatched model ------------------------------------------------------------------------
def _rehash(folder: Path) -> None:
    card = json.loads((folder / "model.json").read_text())
    card["sha256"] = hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest()
    (folder / "model.json").write_text(json.dumps(card))


def _edit_card(folder: Path, **changes) -> None:
    card = json.loads((folder / "model.json").read_text())
    card.update(changes)
    (folder / "model.json").write_text(json.dumps(card))


BROKEN = {
    "missing": (lambda d: shutil.rmtree(d), "model artifact incomplete"),
    "wrong_sha256": (lambda d: _edit_card(d, sha256="0" * 64), "does not match model.json"),
    "corrupt_onnx": (lambda d: ((d / "model.onnx").write_bytes(b"\x08\x07garbage" * 1000), _rehash(d)),
                     "model.onnx rejected"),
    "class_count": (lambda d: _edit_card(d, classes=["ants", "bees", "wasps"]),
                    "outputs 2 logits but model.json lists 3 classes"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_model_never_becomes_ready_and_says_why(artifact, tmp_path, photo, case):
    bad = tmp_path / "model"
    shutil.copytree(artifact, bad)
    spoil, reason = BROKEN[case]
    spoil(bad)
    log = tmp_path / "serve.log"
    srv = Server({"SERVING_MODEL_DIR": str(bad)}, log)
    try:
        srv.wait_up()
        deadline = time.monotonic() + 60  # the load's verdict, not a fixed wait: it is final once logged
        while "service stays unready" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert httpx.get(srv.url + "/readyz").status_code == 503
        r = httpx.post(srv.url + "/predict", files={"image": ("x.jpg", photo, "image/jpeg")}, timeout=30)
        assert r.status_code == 503 and "no model loaded" in r.json()["message"]
    finally:
        srv.stop()
    text = log.read_text()
    assert "service stays unready" in text and reason in text, text[-2000:]
