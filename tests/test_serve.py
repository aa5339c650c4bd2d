"""`fastclip serve`: the real server (uvicorn, on a free loopback port, in a thread) driven over HTTP with httpx.

Vectors are compared with the in-process runtime on the same tiny exported model; classify with torch's
own scoring over open_clip's encoders. Limits and load: test_serve_limits.py; the command: test_serve_cli.py.
"""

from __future__ import annotations

import asyncio
import functools
import io
import os
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
pytest.importorskip("starlette")
pytest.importorskip("prometheus_client")

from support.photos import SENTENCES  # noqa: E402
from support.serving import (NAME, TEST_LIMITS, assert_close, b64, batcher, data_uri, metric, png,  # noqa: E402
                             png_header_only, post, running, vectors, wait_until, wedged)
from support.serving import client, model, photos, reference, served  # noqa: E402,F401 - fixtures
from test_families import sigmoid_export  # noqa: E402,F401 - fixture: the tiny SigLIP-family export
from PIL import Image  # noqa: E402

from fastclip import CLIP, TextEmbedding  # noqa: E402
from fastclip.serve import Limits, ModelSource  # noqa: E402


# ------------------------------------------------------------------------------------ vectors


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_text_vectors_equal_in_process(client, reference, encoding):
    r = client.post("/v1/embeddings", json={"input": SENTENCES, "model": NAME, "encoding_format": encoding})
    assert_close(vectors(r), reference["texts"])
    assert r.json()["model"] == NAME
    one = client.post("/v1/embeddings", json={"input": SENTENCES[2]})  # a bare string, model implied
    assert_close(vectors(one), reference["texts"][2:3])


def test_image_vectors_equal_in_process(client, photos, reference):
    inputs = [data_uri(p) if i % 2 else b64(p) for i, p in enumerate(photos)]  # data URIs and bare base64
    r = client.post("/v1/embeddings", json={"input": inputs, "modality": "image", "encoding_format": "base64"})
    assert_close(vectors(r), reference["images"])


def test_concurrent_requests_are_merged_and_each_gets_its_own_rows(served, photos, reference):
    url, server = served
    before = merged_batches(url)

    async def main():
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            async def one(k: int):
                i = k % len(photos)
                if k % 3 == 2:
                    r = await c.post("/v1/embeddings", json={"input": [SENTENCES[i], SENTENCES[i + 1]]})
                    return "text", i, r
                r = await c.post("/v1/embeddings", json={"input": b64(photos[i]), "modality": "image"})
                return "image", i, r

            return await asyncio.gather(*(one(k) for k in range(24)))

    for kind, i, r in asyncio.run(main()):
        if kind == "image":
            assert_close(vectors(r), reference["images"][i : i + 1])
        else:
            assert_close(vectors(r), reference["texts"][i : i + 2])
    assert merged_batches(url) > before, "no batch held inputs of more than one request"


def merged_batches(url: str) -> float:
    """Image batches of more than one input so far (from /metrics; every request above sends one image)."""
    return (metric(url, "fastclip_batch_size_count", model=NAME, tower="image")
            - metric(url, "fastclip_batch_size_bucket", le="1.0", model=NAME, tower="image"))


# ----------------------------------------------------------------------------- what each input is


def inputs_counted(url: str) -> dict[tuple[str, str], float]:
    return {(tower, outcome): metric(url, "fastclip_inputs_total", model=NAME, tower=tower, outcome=outcome)
            for tower in ("image", "text", "unknown") for outcome in ("ok", "failed")}


def counted_since(url: str, before: dict) -> dict[tuple[str, str], float]:
    return {k: v - before[k] for k, v in inputs_counted(url).items() if v != before[k]}


def test_openai_clients_image_data_uri_is_an_image(served, client, photos, reference):
    """The body the OpenAI Python client sends for `embeddings.create(model=, input=[data URI])` (the client is
    not installed here: the same JSON by httpx): no "modality", encoding_format base64. It was answered with
    a text vector of the URI's characters (cosine -0.08 to the image's own) and counted as a text."""
    before = inputs_counted(served[0])
    r = client.post("/v1/embeddings", json={"model": NAME, "input": [data_uri(photos[2])], "encoding_format": "base64"})
    assert_close(vectors(r), reference["images"][2:3])
    assert counted_since(served[0], before) == {("image", "ok"): 1}


def test_one_request_mixes_texts_and_images_in_input_order(served, client, photos, reference):
    before = inputs_counted(served[0])
    inputs = [SENTENCES[0], data_uri(photos[1]), SENTENCES[2], data_uri(photos[3]), SENTENCES[4]]
    r = client.post("/v1/embeddings", json={"input": inputs})
    want = [reference["texts"][0], reference["images"][1], reference["texts"][2], reference["images"][3],
            reference["texts"][4]]
    assert_close(vectors(r), np.stack(want))
    assert counted_since(served[0], before) == {("image", "ok"): 2, ("text", "ok"): 3}


AMBIGUOUS = {
    "bare base64": (lambda photo: b64(photo), "base64 data without a data: prefix"),
    "data: of text": (lambda photo: "data:text/plain;base64," + b64(b"a photo of a cat"), "'text/plain', not image/"),
    "data: of bytes": (lambda photo: data_uri(photo, "application/octet-stream"), "'application/octet-stream'"),
    "data: untyped": (lambda photo: "data:;base64," + b64(photo), "'unknown', not image/"),
    "URL": (lambda photo: "https://example.com/cat.jpg", "an http(s) URL"),
}


@pytest.mark.parametrize("case", AMBIGUOUS)
def test_an_input_that_cannot_be_told_apart_is_400_naming_it(served, client, photos, reference, case):
    make, what = AMBIGUOUS[case]
    r = client.post("/v1/embeddings", json={"input": [SENTENCES[0], make(photos[0])]})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["index"] == 1 and err["message"].startswith("input 1: ") and what in err["message"], err
    assert '"modality"' in err["message"] and err["code"] == "invalid_input"
    # errors="skip": its row is null with the reason, the others are embedded; it is counted under no tower.
    before = inputs_counted(served[0])
    r = client.post("/v1/embeddings", json={"input": [SENTENCES[0], make(photos[0]), data_uri(photos[0])],
                                            "errors": "skip"})
    data = r.json()["data"]
    assert data[1]["embedding"] is None and what in data[1]["error"]
    assert_close(np.array([data[0]["embedding"], data[2]["embedding"]], np.float32),
                 np.stack([reference["texts"][0], reference["images"][0]]))
    assert counted_since(served[0], before) == {("text", "ok"): 1, ("image", "ok"): 1, ("unknown", "failed"): 1}


def test_texts_that_look_like_nothing_else_stay_texts(client, model):
    """Sentences with URLs or base64-looking words in them, short tokens: texts, as TextEmbedding embeds them."""
    texts = ["see https://example.com/cat.jpg for a cat", "dGhpcyBpcyBub3QgYW4gaW1hZ2U=", "data science",
             "a" * 63, "UPPER lower 12345"]
    with TextEmbedding(str(model)) as t:
        want = np.stack(list(t.embed(texts)))
    assert_close(vectors(client.post("/v1/embeddings", json={"input": texts})), want)


def test_explicit_modality_is_obeyed_as_before(client, model, photos, reference):
    uri = data_uri(photos[0])
    with TextEmbedding(str(model)) as t:
        want = next(t.embed([uri]))
    assert_close(vectors(client.post("/v1/embeddings", json={"input": [uri], "modality": "text"}))[0], want)
    r = client.post("/v1/embeddings", json={"input": [b64(photos[1]), uri], "modality": "image"})
    assert_close(vectors(r), reference["images"][[1, 0]])


def test_an_image_for_a_text_only_model_is_400_naming_it(model, photos):
    with running(model / "text") as (url, _):  # fastembed's layout: the text tower alone
        r = post(url, input=["a cat", data_uri(photos[0])])
        assert r.status_code == 400 and r.json()["error"]["index"] == 1, r.text
        assert "has no image tower" in r.json()["error"]["message"]
        r = post(url, input=["a cat"], modality="image")
        assert r.status_code == 400 and r.json()["error"]["param"] == "modality"


def test_classify_is_the_models_own_zero_shot(client, model, photos):
    labels = ["an astronaut", "a cat", "a cup of coffee", "a rocket"]
    r = client.post("/v1/classify", json={"input": [b64(p) for p in photos[:4]], "labels": labels,
                                          "template": "a picture of {}"})
    assert r.status_code == 200, r.text
    got = np.array([d["probs"] for d in r.json()["data"]], np.float32)
    with CLIP(str(model)) as clip:
        want = clip.classify(photos[:4], labels, template="a picture of {}")
    assert_close(got, want)
    assert [d["label"] for d in r.json()["data"]] == [labels[k] for k in want.argmax(1)]


def test_classify_skip_and_raise(client, model, photos):
    labels = ["a cat", "a rocket"]
    inputs = [b64(photos[1]), "not base64!", b64(b"not an image " * 10), b64(photos[3])]
    r = client.post("/v1/classify", json={"input": inputs, "labels": labels, "errors": "skip"})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["probs"] is None for d in data] == [False, True, True, False] and data[1]["error"] and data[2]["error"]
    with CLIP(str(model)) as clip:
        want = clip.classify([photos[1], photos[3]], labels)
    assert_close(np.array([data[0]["probs"], data[3]["probs"]], np.float32), want)
    r = client.post("/v1/classify", json={"input": inputs[2:], "labels": labels})
    assert r.status_code == 400 and r.json()["error"]["index"] == 0


@pytest.mark.parametrize("template", ["{:>999999999}", "{0.__class__}", "no placeholder", "{} and {}"])
def test_classify_refuses_format_strings(client, photos, template):
    r = client.post("/v1/classify", json={"input": [b64(photos[0])], "labels": ["a"], "template": template})
    assert r.status_code == 400 and r.json()["error"]["param"] == "template"


def test_classify_with_a_sigmoid_model_equals_torch(sigmoid_export, photos):
    """A SigLIP-family model (open_clip, random weights, init_logit_bias; exported by test_families' builder):
    /v1/classify answers torch's sigmoid(logit_scale * cos + logit_bias) over open_clip's own encoders and
    transform on the same JPEGs. Each label is scored alone: rows do not sum to 1."""
    import torch

    folder, model, transform, tokenizer = sigmoid_export
    labels = ["cat", "rocket", "astronaut", "cup of coffee", "microscope slide"]
    with running(folder) as (url, _):
        r = httpx.post(url + "/v1/classify", json={"input": [b64(p) for p in photos], "labels": labels}, timeout=60)
    assert r.status_code == 200, r.text
    got = np.array([d["probs"] for d in r.json()["data"]], np.float64)
    with torch.no_grad():
        image = model.encode_image(torch.stack([transform(Image.open(io.BytesIO(p))) for p in photos]), normalize=True)
        text = model.encode_text(tokenizer([f"a photo of a {x}." for x in labels]), normalize=True)
        want = torch.sigmoid(model.logit_scale.exp() * image @ text.T + model.logit_bias).numpy()
    # Measured max |got - want| 4.8e-7 (fp32 ONNX vs torch; probabilities 0.03-0.68): 5e-6 leaves 10x. Rows sum
    # to 1 +- 0.09 at the closest, where a softmax would make every one sum to 1.
    np.testing.assert_allclose(got, want, rtol=0, atol=5e-6)
    assert np.abs(got.sum(1) - 1).min() > 0.05
    assert [d["label"] for d in r.json()["data"]] == [labels[k] for k in want.argmax(1)]


# ---------------------------------------------------------------------------------- bad input


def test_bad_image_is_400_naming_its_index(client, photos):
    corrupt = b"\xff\xd8\xff\xe0" + os.urandom(400)  # decodes in a worker, fails there
    r = client.post("/v1/embeddings", json={"input": [b64(photos[0]), b64(corrupt), b64(photos[1])],
                                            "modality": "image"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["index"] == 1 and err["message"].startswith("input 1:") and err["code"] == "invalid_input"
    r = client.post("/v1/embeddings", json={"input": [b64(photos[0]), "%%%not base64"], "modality": "image"})
    assert r.status_code == 400 and r.json()["error"]["index"] == 1 and "base64" in r.json()["error"]["message"]
    r = client.post("/v1/embeddings", json={"input": ["fine", 42]})
    assert r.status_code == 400 and r.json()["error"]["index"] == 1


def test_skip_returns_every_other_row(client, photos, reference):
    corrupt = b"this is not an image " * 20
    inputs = [b64(photos[0]), b64(corrupt), "!!", b64(photos[1]), b64(png_header_only(40000, 40000))]
    r = client.post("/v1/embeddings", json={"input": inputs, "modality": "image", "errors": "skip"})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["embedding"] is None for d in data] == [False, True, True, False, True]
    assert_close(np.array([data[0]["embedding"], data[3]["embedding"]], np.float32), reference["images"][:2])
    assert "not a recognised image format" in data[1]["error"]
    assert "base64" in data[2]["error"]
    assert "MAX_IMAGE_PIXELS" in data[4]["error"]  # the runtime's decode bound: no 1.6 G pixel decode


def test_runtime_decode_bounds_apply(client):
    bomb = client.post("/v1/embeddings", json={"input": b64(png_header_only(40000, 40000)), "modality": "image"})
    assert bomb.status_code == 400 and "decompression bomb" in bomb.json()["error"]["message"]
    strip = png(Image.new("RGB", (1, 60000), (200, 30, 90)))  # 224 x 13.4 M pixels if resized naively
    t = time.monotonic()
    r = client.post("/v1/embeddings", json={"input": b64(strip), "modality": "image"})
    assert r.status_code == 200 and time.monotonic() - t < 10


@pytest.mark.parametrize("body,param", [
    ({"input": []}, "input"), ({}, "input"), ({"input": {"a": 1}}, "input"),
    ({"input": "x", "modality": "audio"}, "modality"), ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
    ({"input": "x", "errors": "ignore"}, "errors"), ({"input": "x", "dimensions": 7}, "dimensions"),
])
def test_bad_fields_are_400(client, body, param):
    r = client.post("/v1/embeddings", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_malformed_json_is_400_without_traceback(client):
    for raw in (b"{bad", b"", b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000, b"[1, 2]"):
        r = client.post("/v1/embeddings", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400, (raw[:10], r.text)
        assert "Traceback" not in r.text and "File \"" not in r.text


def test_unknown_model_404_and_missing_route_json(client):
    r = client.post("/v1/embeddings", json={"input": "x", "model": "nope"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert client.get("/v2/anything").status_code == 404
    assert client.get("/v1/embeddings").status_code == 405


def test_internal_error_is_500_without_traceback_and_server_keeps_working(served, client, reference):
    _, server = served
    text = server.models.loaded[NAME].text
    text.embed_batch = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("secret /etc/path detail"))
    try:
        r = client.post("/v1/embeddings", json={"input": "boom"})
    finally:
        del text.embed_batch
    assert r.status_code == 500 and "secret" not in r.text and "Traceback" not in r.text
    assert_close(vectors(client.post("/v1/embeddings", json={"input": SENTENCES[:2]})), reference["texts"][:2])


# ------------------------------------------------------------------------------ health, ready


def test_health_ready_models_metrics(client):
    assert vectors(client.post("/v1/embeddings", json={"input": "x"})).shape == (1, 32)
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json()["status"] == "ready"
    models = client.get("/v1/models").json()["data"]
    assert models == [{"id": NAME, "object": "model", "owned_by": "fastclip", "dim": 32,
                       "modalities": ["image", "text"], "classify": True}]
    text = client.get("/metrics").text
    for name in ("fastclip_requests_total", "fastclip_inputs_total", "fastclip_batch_size_bucket",
                 "fastclip_queue_depth", "fastclip_request_seconds_bucket"):
        assert name in text
    assert 'fastclip_requests_total{route="/v1/embeddings",status="200"}' in text


def test_health_fails_when_a_tower_is_wedged(model, photos):
    with running(model, Limits(stall_timeout=1.0, max_wait=0.0)) as (url, server):
        assert httpx.get(url + "/health").status_code == 200
        with wedged(server, "image") as entered:
            stuck = threading.Thread(target=lambda: httpx.post(url + "/v1/embeddings", timeout=60, json={
                "input": b64(photos[0]), "modality": "image"}))
            stuck.start()
            assert entered.wait(10)
            time.sleep(1.2)
            r = httpx.get(url + "/health")
            assert r.status_code == 503 and "running for" in r.json()["problems"][0]
        stuck.join(30)
        assert httpx.get(url + "/health").status_code == 200
        # An idle tower is probed through its real queue: a wedge before any batch is seen too.
        batcher(server, "text").last_batch_done -= 60
        with wedged(server, "text"):
            r = httpx.get(url + "/health", timeout=30)
        assert r.status_code == 503 and "probe" in r.json()["problems"][0]


def test_ready_is_503_until_loaded(model, monkeypatch):
    import fastclip.serve.lifecycle as lifecycle

    gate = threading.Event()
    real = lifecycle.load_model
    monkeypatch.setattr(lifecycle, "load_model", lambda *a, **k: gate.wait(30) and real(*a, **k))
    with running(model, wait_ready=False) as (url, server):
        r = httpx.get(url + "/ready")
        assert r.status_code == 503 and r.json()["status"] == "loading" and r.headers["retry-after"]
        r = httpx.post(url + "/v1/embeddings", json={"input": "x"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
        assert httpx.get(url + "/health").status_code == 200  # alive while loading
        gate.set()
        wait_until(lambda: httpx.get(url + "/ready").status_code == 200, 30)


# ------------------------------------------------------------------------------------------ URLs


class _Images(BaseHTTPRequestHandler):
    photo = b""

    def do_GET(self):
        if self.path == "/slow":
            time.sleep(3)
        body = self.photo if self.path in ("/photo.jpg", "/slow") else b"\0" * (3 * 2**20)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_urls_off_by_default_and_limited_when_on(client, model, photos, reference):
    r = client.post("/v1/embeddings", json={"input": "http://169.254.169.254/latest/meta-data", "modality": "image"})
    assert r.status_code == 400 and "--allow-urls" in r.json()["error"]["message"]
    _Images.photo = photos[0]
    host = ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    threading.Thread(target=host.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{host.server_address[1]}"
    try:
        limits = Limits(allow_urls=True, url_timeout=1.0, max_url_bytes=2**20)
        with running(model, limits) as (url, _):
            r = httpx.post(url + "/v1/embeddings", timeout=30, json={
                "input": [f"{base}/photo.jpg", f"{base}/big", f"{base}/slow", "http://127.0.0.1:1/refused"],
                "modality": "image", "errors": "skip"})
    finally:
        host.shutdown()
    data = r.json()["data"]
    assert_close(np.array([data[0]["embedding"]], np.float32), reference["images"][:1])
    assert "max-url-bytes" in data[1]["error"] and "url-timeout" in data[2]["error"] and "failed" in data[3]["error"]


def test_several_models_are_picked_by_name(model, reference):
    with running(model, names=("one", "two")) as (url, _):
        r = httpx.post(url + "/v1/embeddings", json={"input": SENTENCES[:2]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "model"
        for name in ("one", "two"):
            r = httpx.post(url + "/v1/embeddings", json={"input": SENTENCES[:2], "model": name})
            assert_close(vectors(r), reference["texts"][:2])
            assert r.json()["model"] == name
        assert [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]] == ["one", "two"]


def test_a_models_manifest_is_read_once(model, tmp_path, monkeypatch):
    """Both towers of a fastclip folder, or fastembed's one-tower folder (whose every read opens the graph in
    onnxruntime): one manifest read per served model, handed to the towers."""
    from fastclip import layouts
    from fastclip.serve.metrics import Metrics
    from fastclip.serve.models import load_model

    reads = []
    for reader in layouts.READERS:
        monkeypatch.setattr(reader, "read", functools.partial(lambda real, folder: reads.append(folder) or real(folder),
                                                              reader.read))
    vision = shutil.copytree(model / "vision", tmp_path / "vision")
    for folder, towers in ((model, ["image", "text"]), (vision, ["image"]), (model / "text", ["text"])):
        reads.clear()
        served = load_model(ModelSource("m", str(folder)), TEST_LIMITS, Metrics())
        try:
            assert served.modalities == towers and reads == [folder]
        finally:
            served.close()
