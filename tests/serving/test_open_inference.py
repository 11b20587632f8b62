"""The Open Inference Protocol (KServe V2 / Triton) routes, spoken by the real clients to the real `bentoml serve`:
tritonclient.http and KServe's own InferenceRESTClient, against /predict's answers on the same photos."""
from __future__ import annotations

import asyncio
import base64
import json
import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from helpers import running_server
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput
from tritonclient.utils import InferenceServerException

from contract.card import load_card
from contract.errors import RequestError
from contract.preprocess import preprocess
from serving import oip

pytestmark = pytest.mark.slow
NAME = "bees-isvc"  # as an InferenceService would name it: not model.json's name


@pytest.fixture(scope="module")
def server(artifact, tmp_path_factory):
    env = {"SERVING_MODEL_DIR": str(artifact), "SERVING_V2_MODEL_NAME": NAME, "SERVING_MAX_TOP_K": "5",
           "SERVING_MAX_REQUEST_BYTES": "2000000"}
    with running_server(env, tmp_path_factory.mktemp("serve") / "serve.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def card(artifact):
    return load_card(artifact)


@pytest.fixture(scope="module")
def photos(data_dir) -> list[bytes]:
    return [p.read_bytes() for c in ("ants", "bees") for p in sorted((data_dir / "val" / c).iterdir())[:3]]


@pytest.fixture(scope="module")
def expected(server, photos):
    """/predict's answers: (top-1 labels, probabilities in class order)."""
    labels, probs = [], []
    for blob in photos:
        r = httpx.post(server.url + "/predict", files={"image": ("x.jpg", blob, "image/jpeg")},
                       data={"top_k": "5"}, timeout=60).json()
        labels.append(r["label"])
        probs.append({t["label"]: t["probability"] for t in r["top_k"]})
    return labels, probs


@pytest.fixture(scope="module")
def client(server):
    c = triton.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=60)
    yield c
    c.close()


def as_matrix(probs: list[dict], classes: list[str]) -> np.ndarray:
    return np.array([[p[c] for c in classes] for p in probs])


def scrape(url) -> str:
    return httpx.get(url + "/metrics").text


def metric(text: str, name: str, **labels) -> float:
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if re.match(name + r"(\{|\s)", line) and all(w in line for w in want))


# ---- tritonclient.http -------------------------------------------------------------------------------------------
def test_tritonclient_health_and_metadata(client, card):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(NAME) and client.is_model_ready(NAME, card.version)
    assert not client.is_model_ready(NAME, "no-such-version") and not client.is_model_ready(card.name)
    meta = client.get_model_metadata(NAME)
    assert meta["name"] == NAME and meta["versions"] == [card.version]
    s, c = card.image_size, len(card.classes)
    assert {(t["name"], t["datatype"], tuple(t["shape"])) for t in meta["inputs"]} == {
        ("image", "BYTES", (-1,)), ("images", "UINT8", (-1, s, s, 3))}
    assert {(t["name"], t["datatype"], tuple(t["shape"])) for t in meta["outputs"]} == {
        ("probabilities", "FP32", (-1, c)), ("labels", "BYTES", (-1, -1)),
        ("heatmaps", "FP32", (-1, -1, -1, -1)), ("heatmap_labels", "BYTES", (-1, -1))}
    server_meta = client.get_server_metadata()
    assert {"binary_tensor_data", "classification"} <= set(server_meta["extensions"])


def test_tritonclient_binary_jpegs_equal_predict(client, card, photos, expected):
    image = triton.InferInput("image", [len(photos)], "BYTES")
    image.set_data_from_numpy(np.array(photos, dtype=np.object_), binary_data=True)
    result = client.infer(NAME, [image], outputs=[triton.InferRequestedOutput("probabilities", binary_data=True),
                                                  triton.InferRequestedOutput("labels", binary_data=True)])
    probs = result.as_numpy("probabilities")
    assert probs.dtype == np.float32 and probs.shape == (len(photos), len(card.classes))
    np.testing.assert_allclose(probs, as_matrix(expected[1], card.classes), atol=1e-6)
    assert [b.decode() for b in result.as_numpy("labels")[:, 0]] == expected[0]
    assert result.get_response()["model_version"] == card.version


def test_tritonclient_classification_extension(client, card, photos, expected):
    image = triton.InferInput("image", [len(photos), 1], "BYTES")
    image.set_data_from_numpy(np.array(photos, dtype=np.object_).reshape(-1, 1), binary_data=True)
    k = len(card.classes)
    result = client.infer(NAME, [image], outputs=[triton.InferRequestedOutput("probabilities", class_count=k)])
    rows = result.as_numpy("probabilities")
    assert rows.shape == (len(photos), k)
    for row, label, probs in zip(rows, *expected):
        parsed = [s.decode().split(":") for s in row]
        assert parsed[0][2] == label
        for value, index, name in parsed:
            assert card.classes[int(index)] == name and abs(float(value) - probs[name]) < 1e-6
        assert [float(v) for v, _, _ in parsed] == sorted((float(v) for v, _, _ in parsed), reverse=True)


def test_tritonclient_preprocessed_uint8_batch(client, card, photos, expected):
    """The `images` input skips decoding: pixels made with contract.preprocess give /predict's answers."""
    pixels = np.stack([preprocess(b, card.spec, 40_000_000) for b in photos])
    images = triton.InferInput("images", list(pixels.shape), "UINT8")
    images.set_data_from_numpy(pixels, binary_data=True)
    result = client.infer(NAME, [images], outputs=[triton.InferRequestedOutput("probabilities", binary_data=True)])
    np.testing.assert_allclose(result.as_numpy("probabilities"), as_matrix(expected[1], card.classes), atol=1e-6)


def test_tritonclient_heatmaps_are_explains(server, client, card, photos):
    """The optional heatmap outputs: the maps of the top two classes, binary, equal to /explain's grids."""
    image = triton.InferInput("image", [2], "BYTES")
    image.set_data_from_numpy(np.array(photos[:2], dtype=np.object_), binary_data=True)
    result = client.infer(NAME, [image], outputs=[
        triton.InferRequestedOutput("heatmaps", binary_data=True), triton.InferRequestedOutput("heatmap_labels")],
        parameters={"top_k": 2})
    maps, labels = result.as_numpy("heatmaps"), result.as_numpy("heatmap_labels")
    assert maps.dtype == np.float32 and maps.shape[:2] == (2, 2) and labels.shape == (2, 2)
    for blob, row, names in zip(photos[:2], maps, labels):
        explained = httpx.post(server.url + "/explain", files={"image": ("x.jpg", blob, "image/jpeg")},
                               data={"top_k": "2"}, timeout=60).json()
        assert [n.decode() for n in names] == [h["label"] for h in explained["heatmaps"]]
        for heatmap, m in zip(explained["heatmaps"], row):
            np.testing.assert_allclose(heatmap["grid"], m / m.max() if m.max() > 0 else m, atol=1e-3)


def test_tritonclient_sees_the_protocol_errors(client, photos):
    image = triton.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_), binary_data=True)
    with pytest.raises(InferenceServerException, match="not an image") as bad:
        client.infer(NAME, [image])
    assert bad.value.status() == "400"
    image.set_data_from_numpy(np.array(photos[:1], dtype=np.object_), binary_data=True)
    with pytest.raises(InferenceServerException, match="unknown model") as unknown:
        client.infer("no-such-model", [image])
    assert unknown.value.status() == "404"


# ---- KServe's own V2 REST client ---------------------------------------------------------------------------------
async def _kserve_infer(url: str, photos: list[bytes], binary: bool):
    if binary:
        image = InferInput("image", [len(photos)], "BYTES")
        image.set_data_from_numpy(np.array(photos, dtype=np.object_), binary_data=True)
    else:
        image = InferInput("image", [len(photos)], "BYTES", data=[base64.b64encode(b).decode() for b in photos])
    outputs = [RequestedOutput("probabilities", {"binary_data": binary}), RequestedOutput("labels")]
    request = InferRequest(NAME, [image], request_id="req-1", parameters={"top_k": 2}, request_outputs=outputs)
    async with InferenceRESTClient(RESTConfig(protocol="v2", timeout=60)) as kserve:
        health = (await kserve.is_server_live(url), await kserve.is_server_ready(url),
                  await kserve.is_model_ready(url, NAME))
        return health, await kserve.infer(url, request, model_name=NAME)


@pytest.mark.parametrize("binary", [False, True], ids=["json-base64", "binary"])
def test_kserve_client_equals_predict(server, card, photos, expected, binary):
    health, response = asyncio.run(_kserve_infer(server.url, photos, binary))
    assert health == (True, True, True)
    assert response.id == "req-1" and response.model_name == NAME
    out = {o.name: o for o in response.outputs}
    np.testing.assert_allclose(np.asarray(out["probabilities"].as_numpy(), dtype=np.float64),
                               as_matrix(expected[1], card.classes), atol=1e-6)
    labels = [[v.decode() if isinstance(v, bytes) else v for v in row] for row in out["labels"].as_numpy()]
    assert [row[0] for row in labels] == expected[0] and all(len(row) == 2 for row in labels)


# ---- the protocol over plain HTTP: errors, routes, metrics, batching ------------------------------------------------
def _json_request(blob: bytes, **extra) -> dict:
    return {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                        "data": [base64.b64encode(blob).decode()]}], **extra}


def test_routes_and_errors_follow_the_protocol(server, card, photos):
    base = server.url + "/v2"
    assert httpx.get(base + "/health/live").json() == {"live": True}
    assert httpx.get(base + "/health/ready").json() == {"ready": True}
    assert httpx.get(base + "/").json()["name"] == httpx.get(base).json()["name"]
    versioned = httpx.post(f"{base}/models/{NAME}/versions/{card.version}/infer", json=_json_request(photos[0]))
    assert versioned.status_code == 200 and versioned.json()["model_version"] == card.version
    cases = [  # (path, body, status, words the message must hold)
        (f"/models/{NAME}/versions/other/infer", _json_request(photos[0]), 404, "unknown version"),
        ("/models/other/infer", _json_request(photos[0]), 404, "unknown model"),
        (f"/models/{NAME}/infer", {"inputs": []}, 400, "one input"),
        (f"/models/{NAME}/infer", {"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["a"]}]},
         400, "unknown input"),
        (f"/models/{NAME}/infer", {"inputs": [{"name": "image", "shape": [1], "datatype": "FP32", "data": [1]}]},
         400, "datatype BYTES"),
        (f"/models/{NAME}/infer", {"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": ["QQ=="]}]},
         400, "shape says 2"),
        (f"/models/{NAME}/infer", {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["%%"]}]},
         400, "base64"),
        (f"/models/{NAME}/infer", {"inputs": [{"name": "images", "shape": [1, 5, 5, 3], "datatype": "UINT8",
                                               "data": [0] * 75}]}, 400, f"[N,{card.image_size},"),
        (f"/models/{NAME}/infer", _json_request(photos[0], outputs=[{"name": "logits"}]), 400, "unknown outputs"),
        (f"/models/{NAME}/infer", _json_request(photos[0], parameters={"top_k": 99}), 400, "top_k"),
        (f"/models/{NAME}/infer", {"inputs": [{"name": "image", "shape": [65], "datatype": "BYTES",
                                               "data": ["QQ=="] * 65}]}, 400, "between 1 and 64"),
        (f"/models/{NAME}/infer", "not json", 400, "not valid JSON"),
    ]
    for path, body, status, words in cases:
        content = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        r = httpx.post(base + path, content=content, headers={"content-type": "application/json"})
        assert r.status_code == status and words in r.json()["error"], (path, body, r.status_code, r.text)
        assert set(r.json()) == {"error"}
    too_big = httpx.post(f"{base}/models/{NAME}/infer", content=b"{" + b" " * 2_000_001 + b"}")
    assert too_big.status_code == 413


def test_v2_requests_are_counted_and_timed(server, photos):
    before = scrape(server.url)
    path = f"/v2/models/{NAME}/infer"
    for blob in photos[:2]:
        assert httpx.post(server.url + path, json=_json_request(blob)).status_code == 200
    assert httpx.post(server.url + path, json={"inputs": []}).status_code == 400
    after = scrape(server.url)

    def delta(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)
    route = "/v2/models/{name}/infer"  # labelled by route, not by URL (serving/stack.py): clients cannot add series
    assert delta("bentoml_service_request_total", endpoint=route, http_response_code="200") == 2
    assert delta("bentoml_service_request_total", endpoint=route, http_response_code="400") == 1
    assert delta("bentoml_service_request_duration_seconds_count", endpoint=route) == 3
    assert delta("imgcls_predictions_total") == 2 and delta("imgcls_confidence_count") == 2
    assert delta("imgcls_preprocess_seconds_count") == 2
    assert delta("imgcls_invalid_requests_total", reason="bad_request") == 1


def test_concurrent_v2_clients_form_batches(server, photos):
    before = scrape(server.url)

    def one(i: int) -> int:
        c = triton.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=60)
        image = triton.InferInput("image", [1], "BYTES")
        image.set_data_from_numpy(np.array([photos[i % len(photos)]], dtype=np.object_), binary_data=True)
        try:
            return c.infer(NAME, [image]).as_numpy("probabilities").shape[0]
        finally:
            c.close()

    with ThreadPoolExecutor(32) as pool:
        assert sum(pool.map(one, range(96))) == 96
    after = scrape(server.url)
    runs = metric(after, "imgcls_batch_size_count") - metric(before, "imgcls_batch_size_count")
    images = metric(after, "imgcls_batch_size_sum") - metric(before, "imgcls_batch_size_sum")
    assert images == 96 and runs < 96, f"{runs} onnxruntime runs for 96 images: no batch larger than one"


# ---- the codec alone ---------------------------------------------------------------------------------------------
def test_bytes_tensor_round_trip_and_truncation():
    items = [b"", b"\xff\xd8abc", bytes(range(256))]
    packed = oip.pack_bytes(items)
    assert oip.unpack_bytes(packed, 3, "image") == items
    for cut in (1, 5, len(packed) - 1):
        with pytest.raises(RequestError):
            oip.unpack_bytes(packed[:cut], 3, "image")
    with pytest.raises(RequestError, match="shape says 2"):
        oip.unpack_bytes(packed, 2, "image")


def test_binary_data_output_on_the_request_makes_every_output_binary():
    body = json.dumps({"id": "7", "parameters": {"binary_data_output": True, "top_k": 2},
                       "inputs": [{"name": "images", "shape": [2, 2, 2, 3], "datatype": "UINT8",
                                   "data": list(range(24))}]}).encode()
    req = oip.parse_infer(body, None, max_images=4, image_size=2)
    assert req.pixels.shape == (2, 2, 2, 3) and req.pixels[1, 1, 1, 2] == 23
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]], dtype=np.float32)
    out, headers = oip.encode_response("m", "1", req.id, oip.build_outputs(req, probs, ["a", "b", "c"], 5))
    n = int(headers[oip.HEADER_LENGTH])
    doc = json.loads(out[:n])
    assert doc["id"] == "7" and all("data" not in o for o in doc["outputs"])
    sizes = [o["parameters"]["binary_data_size"] for o in doc["outputs"]]
    assert sum(sizes) == len(out) - n
    assert np.array_equal(np.frombuffer(out[n:n + sizes[0]], "<f4").reshape(2, 3), probs)
    assert oip.unpack_bytes(out[n + sizes[0]:], 4, "labels") == [b"b", b"c", b"a", b"c"]
