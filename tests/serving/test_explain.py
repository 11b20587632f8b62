"""/explain over real HTTP from the real `bentoml serve`: /predict's answer plus heatmaps that are the served graph's,
as grids and as PNGs, for every input form; the same limits and errors as /predict; batched with /predict; counted.
And an artifact exported before heatmaps existed: a clear 409, /predict unaffected."""
from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import running_server, scrape, total
from PIL import Image

from contract.card import load_card
from contract.files import sha256_of
from contract.occlusion import occluded
from contract.preprocess import preprocess
from serving import heatmaps as render

pytestmark = pytest.mark.slow
MAX_BYTES = 2_000_000


@pytest.fixture(scope="module")
def server(artifact, tmp_path_factory):
    with running_server({"SERVING_ARTIFACTS_ROOT": str(artifact.parent.parent),
                         "SERVING_MODEL_NAME": artifact.parent.name, "SERVING_MAX_REQUEST_BYTES": str(MAX_BYTES),
                         "SERVING_PRECISION": "fp32"},
                        tmp_path_factory.mktemp("serve-explain") / "serve.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def photos(data_dir):
    return {c: sorted((data_dir / "val" / c).iterdir())[:4] for c in ("ants", "bees")}


def graph_heatmaps(artifact, data: bytes, asked: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """model.onnx run directly on the contract's pixels of these bytes: (heatmaps [M,h,w], classes mapped [M])."""
    card = load_card(artifact)
    pixels = preprocess(data, card.spec, 40_000_000)[None]
    session = ort.InferenceSession(str(artifact / "model.onnx"), providers=["CPUExecutionProvider"])
    _, _, maps, mapped = session.run(None, {"images": pixels, "heatmap_classes": np.array([asked])})
    return maps[0], mapped[0]


def test_explain_is_predict_plus_the_graphs_heatmaps(server, artifact, photos):
    photo = photos["bees"][0]
    predicted = httpx.post(server.url + "/predict", files={"image": photo.open("rb")}, data={"top_k": "2"},
                           timeout=60).json()
    r = httpx.post(server.url + "/explain", files={"image": photo.open("rb")}, data={"top_k": "2"}, timeout=60)
    assert r.status_code == 200, r.text
    explained = r.json()
    assert {k: explained[k] for k in ("label", "model", "version")} == \
        {k: predicted[k] for k in ("label", "model", "version")}
    assert explained["confidence"] == pytest.approx(predicted["confidence"], abs=1e-6)
    assert [t["label"] for t in explained["top_k"]] == [t["label"] for t in predicted["top_k"]]
    assert [t["probability"] for t in explained["top_k"]] == \
        pytest.approx([t["probability"] for t in predicted["top_k"]], abs=1e-6)
    maps, mapped = graph_heatmaps(artifact, photo.read_bytes(), [-1, -2])
    assert [h["label"] for h in explained["heatmaps"]] == [t["label"] for t in predicted["top_k"]]
    classes = load_card(artifact).classes
    assert [classes[c] for c in mapped] == [t["label"] for t in predicted["top_k"]]
    for heatmap, expected in zip(explained["heatmaps"], maps):
        grid = np.array(heatmap["grid"])
        assert grid.shape == expected.shape and heatmap["png"] is None
        np.testing.assert_allclose(grid, render.relative(expected), atol=1e-3)
        assert heatmap["peak"] == pytest.approx(float(expected.max()), rel=1e-4, abs=1e-6)
        assert grid.min() >= 0 and (grid.max() == 1 or heatmap["peak"] == 0)


def test_a_named_class_is_explained_too(server, artifact, photos):
    photo = photos["ants"][0]
    r = httpx.post(server.url + "/explain", files={"image": photo.open("rb")}, data={"top_k": "1", "label": "bees"},
                   timeout=60)
    assert r.status_code == 200, r.text
    answer = r.json()
    labels = [h["label"] for h in answer["heatmaps"]]
    assert labels == [answer["label"]] + (["bees"] if answer["label"] != "bees" else [])
    maps, _ = graph_heatmaps(artifact, photo.read_bytes(), [-1, 1])
    np.testing.assert_allclose(answer["heatmaps"][-1]["grid"], render.relative(maps[-1 if labels[-1] == "bees" else 0]),
                               atol=1e-3)
    r = httpx.post(server.url + "/explain", files={"image": photo.open("rb")}, data={"label": "wasps"}, timeout=60)
    assert r.status_code == 422 and r.json()["error"] == "unknown_class"
    assert "wasps" in r.json()["message"] and "ants" in r.json()["message"]


def test_png_is_the_heatmap_over_the_crop(server, artifact, photos):
    photo = photos["bees"][1]
    r = httpx.post(server.url + "/explain", files={"image": photo.open("rb")}, data={"top_k": "1", "format": "png"},
                   timeout=60)
    assert r.status_code == 200, r.text
    heatmap = r.json()["heatmaps"][0]
    assert heatmap["grid"] is None
    png = Image.open(io.BytesIO(base64.b64decode(heatmap["png"])))
    card = load_card(artifact)
    assert png.format == "PNG" and png.size == (card.image_size, card.image_size) and png.mode == "RGB"
    crop = preprocess(photo.read_bytes(), card.spec, 40_000_000)
    maps, _ = graph_heatmaps(artifact, photo.read_bytes(), [-1])
    assert np.array_equal(np.asarray(png), np.asarray(Image.open(io.BytesIO(render.overlay_png(crop, maps[0])))))



def test_png_heatmaps_a_request_are_bounded(server, photos):
    """max_heatmap_pngs (default 128): images x classes mapped, counted before any image is decoded; the grids of
    the same request are not bounded by it."""
    small = io.BytesIO()
    Image.open(photos["bees"][1]).resize((96, 96)).save(small, "JPEG")  # 64 of them under the 2 MB body limit here
    many = [("images", (f"{i}.jpg", small.getvalue(), "image/jpeg")) for i in range(64)]
    asked = {"format": "png", "top_k": "2"}
    r = httpx.post(server.url + "/explain_batch", files=many, data=asked | {"label": "ants"}, timeout=120)
    assert r.status_code == 413 and r.json()["error"] == "too_many_heatmaps", r.text
    assert "192 PNG heatmaps" in r.json()["message"] and "format=grid" in r.json()["message"]
    r = httpx.post(server.url + "/explain_batch", files=many, data=asked, timeout=120)  # 64 x 2: at the limit
    assert r.status_code == 200 and all(len(a["heatmaps"]) == 2 and a["heatmaps"][0]["png"] for a in r.json())
    r = httpx.post(server.url + "/explain_batch", files=many, data={"top_k": "2", "label": "ants"}, timeout=120)
    assert r.status_code == 200, r.text


def test_every_input_form_explains(server, photos):
    files = [photos["ants"][1], photos["bees"][2]]
    r = httpx.post(server.url + "/explain_batch", files=[("images", p.open("rb")) for p in files], timeout=60)
    assert r.status_code == 200, r.text
    batch = r.json()
    b64 = [base64.b64encode(p.read_bytes()).decode() for p in files]
    one = httpx.post(server.url + "/explain_base64", json={"image": b64[0]}, timeout=60).json()
    both = httpx.post(server.url + "/explain_base64_batch", json={"images": b64, "format": "png"}, timeout=60).json()
    assert one["label"] == batch[0]["label"] and one["heatmaps"] == batch[0]["heatmaps"]
    assert [a["label"] for a in both] == [a["label"] for a in batch]
    assert all(h["png"] for a in both for h in a["heatmaps"])


def test_explain_refuses_what_predict_refuses(server):
    bad = {"not an image": ({"image": ("x.jpg", b"not an image", "image/jpeg")}, {}),
           "over the byte limit": ({"image": ("x.bin", b"\0" * (MAX_BYTES + 1), "image/png")}, {}),
           "top_k 0": ({"image": ("x.jpg", b"x", "image/jpeg")}, {"top_k": "0"})}
    for case, (files, data) in bad.items():
        predict = httpx.post(server.url + "/predict", files=files, data=data, timeout=60)
        explain = httpx.post(server.url + "/explain", files=files, data=data, timeout=60)
        assert 400 <= predict.status_code < 500 and explain.status_code == predict.status_code, case
        assert explain.json()["error"] == predict.json()["error"], case
    r = httpx.post(server.url + "/explain", files={"image": ("x.jpg", b"x", "image/jpeg")}, data={"format": "svg"},
                   timeout=60)
    assert r.status_code == 400


def _thumbnail(photo, side: int = 96) -> bytes:
    out = io.BytesIO()
    Image.open(photo).convert("RGB").resize((side, side)).save(out, "JPEG", quality=90)
    return out.getvalue()


def test_explain_and_predict_share_runs_and_are_counted(server, photos):
    blobs = [_thumbnail(p) for p in photos["ants"] + photos["bees"]]
    alone = {i: httpx.post(server.url + "/explain", files={"image": ("x.jpg", b, "image/jpeg")}, timeout=60).json()
             for i, b in enumerate(blobs)}
    before = scrape(server.url)
    requests = [(i % len(blobs), "/explain" if i % 2 else "/predict") for i in range(96)]

    def one(job):
        i, route = job
        return httpx.post(server.url + route, files={"image": ("x.jpg", blobs[i], "image/jpeg")}, timeout=120)

    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(one, requests))
    assert [r.status_code for r in answers] == [200] * len(requests)
    after = scrape(server.url)

    def delta(metric, **labels):
        return total(after, metric, **labels) - total(before, metric, **labels)

    runs, images = delta("imgcls_batch_size_count"), delta("imgcls_batch_size_sum")
    assert images == len(requests) and runs < len(requests), f"{runs} runs for {len(requests)} images"
    explained = [(r.json(), alone[i]) for r, (i, route) in zip(answers, requests) if route == "/explain"]
    for got, expected in explained:  # batched with /predict's images, each still gets its own heatmaps
        assert got["label"] == expected["label"]
        np.testing.assert_allclose(got["heatmaps"][0]["grid"], expected["heatmaps"][0]["grid"], atol=2e-3)
    assert delta("imgcls_heatmaps_total", format="grid") == sum(len(g["heatmaps"]) for g, _ in explained)
    assert delta("bentoml_service_request_total", endpoint="/explain", http_response_code="200") == len(explained)
    assert delta("bentoml_service_request_duration_seconds_count", endpoint="/explain") == len(explained)


def test_occlusion_maps_are_the_probability_falls_and_not_predictions(server, artifact, photos):
    """method=occlusion: each cell of the graph's heatmap grid hidden in turn (contract.occlusion), the fall of the
    class's probability, computed here with onnxruntime on the same pixels; its hidden copies run batched but are
    not counted as predictions; a request over max_occlusion_images is refused with what to do."""
    photo = photos["ants"][2]
    before = scrape(server.url)
    r = httpx.post(server.url + "/explain", files={"image": photo.open("rb")},
                   data={"top_k": "1", "method": "occlusion"}, timeout=60)
    after = scrape(server.url)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["method"] == "occlusion"
    card = load_card(artifact)
    pixels = preprocess(photo.read_bytes(), card.spec, 40_000_000)
    session = ort.InferenceSession(str(artifact / "model.onnx"), providers=["CPUExecutionProvider"])
    cam, _ = graph_heatmaps(artifact, photo.read_bytes(), [-1])
    hidden = occluded(pixels, cam.shape[1:])
    probs = session.run(["probabilities"], {"images": np.concatenate([pixels[None], hidden])})[0]
    c = card.classes.index(answer["label"])
    fall = (probs[0, c] - probs[1:, c]).reshape(cam.shape[1:])  # signed: negative where hiding raises the class
    heatmap = answer["heatmaps"][0]
    assert heatmap["peak"] == pytest.approx(float(fall.max()), abs=1e-4)
    np.testing.assert_allclose(heatmap["grid"], render.relative(fall), atol=5e-3)
    assert total(after, "imgcls_predictions_total") - total(before, "imgcls_predictions_total") == 1
    assert total(after, "imgcls_batch_size_sum") - total(before, "imgcls_batch_size_sum") == 1 + len(hidden)
    assert total(after, "imgcls_heatmaps_total", method="occlusion") - \
        total(before, "imgcls_heatmaps_total", method="occlusion") == 1

    many = [("images", photo.open("rb")) for _ in range(3)]  # max_occlusion_images defaults to 2
    r = httpx.post(server.url + "/explain_batch", files=many, data={"method": "occlusion"}, timeout=60)
    assert r.status_code == 413 and r.json()["error"] == "too_many_images"
    assert "max_occlusion_images" in r.json()["message"] and "method=cam" in r.json()["message"]
    r = httpx.post(server.url + "/explain", files={"image": photo.open("rb")}, data={"method": "lime"}, timeout=60)
    assert r.status_code == 400


def without_heatmaps(artifact, folder):
    """A copy of the artifact whose graph is as exported before heatmaps: `images` in, logits and probabilities
    out."""
    model = onnx.load(str(artifact / "model.onnx"))
    g = model.graph
    keep = [o for o in g.output if o.name in ("logits", "probabilities")]
    del g.output[:]
    g.output.extend(keep)
    old = onnx.utils.Extractor(model).extract_model(["images"], ["logits", "probabilities"])
    version = folder / artifact.parent.name / artifact.name
    version.mkdir(parents=True)
    onnx.save(old, str(version / "model.onnx"))
    card = load_card(artifact)
    card.sha256, card.variants = sha256_of(version / "model.onnx"), {}
    card.write(version)
    (version.parent / "LATEST").write_text(version.name + "\n")
    return version


def test_a_model_without_heatmaps_says_so(artifact, photos, tmp_path):
    without_heatmaps(artifact, tmp_path / "artifacts")
    with running_server({"SERVING_ARTIFACTS_ROOT": str(tmp_path / "artifacts"),
                         "SERVING_MODEL_NAME": artifact.parent.name}, tmp_path / "serve.log") as srv:
        photo = photos["ants"][0]
        assert httpx.post(srv.url + "/predict", files={"image": photo.open("rb")}, timeout=60).status_code == 200
        r = httpx.post(srv.url + "/explain", files={"image": photo.open("rb")}, timeout=60)
        assert r.status_code == 409 and r.json()["error"] == "no_heatmaps", r.text
        assert "export it again" in r.json()["message"]
