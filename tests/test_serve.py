"""`fastclip serve`: the real server (uvicorn, on a free loopback port) driven over HTTP with httpx.

Servers run in a thread of this process (so a test can wedge a tower or count its queue) except for the
SIGTERM test, which starts `python -m fastclip serve` as a subprocess. Vectors are compared with the
in-process runtime on the same tiny exported model.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("starlette")
pytest.importorskip("prometheus_client")

from support.photos import SENTENCES, photo_array  # noqa: E402
from PIL import Image  # noqa: E402

from fastclip import CLIP, ImageEmbedding, TextEmbedding  # noqa: E402
from fastclip.serve import Limits, ModelSource, create_app, parse_model_arg  # noqa: E402
from fastclip.serve.batcher import fair_shares  # noqa: E402

NAME = "tiny"
TEST_LIMITS = Limits(max_body_bytes=4 * 2**20, max_inflight_bytes=16 * 2**20, max_inputs=16, max_queue=32,
                     max_batch_images=4, max_batch_texts=8, max_wait=0.02, stall_timeout=30, request_timeout=60,
                     body_timeout=3.0,
                     image_workers=1)  # one worker per tower: a wedged batch call holds the whole tower


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(model: Path, limits: Limits = TEST_LIMITS, wait_ready: bool = True, http: str = "auto",
            names: tuple[str, ...] = (NAME,), **options):
    """A server on a free loopback port in a thread; yields (base URL, Server). Stopped on exit."""
    app = create_app([ModelSource(name, str(model)) for name in names], limits, **options)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on",
                                           http=http))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    if wait_ready:
        wait_until(lambda: app.server.ready.is_set(), 60)
    try:
        yield url, app.server
    finally:
        server.should_exit = True
        thread.join(30)


def wait_until(check, timeout: float, step: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(step)


def jpeg(name: str, size: int | None = None) -> bytes:
    img = Image.fromarray(photo_array(name))
    if size:
        img = img.resize((size, size * 3 // 4))
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def data_uri(data: bytes) -> str:
    return "data:image/jpeg;base64," + b64(data)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels (a decompression bomb's header), with no pixel data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins")


@pytest.fixture(scope="module")
def model(tiny_openclip_export) -> Path:
    return tiny_openclip_export


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    return [jpeg(n) for n in PHOTOS]


@pytest.fixture(scope="module")
def reference(model, photos):
    """In-process vectors of the same inputs: what every server answer is held to (max abs diff <= 1e-6)."""
    with ImageEmbedding(str(model)) as img, TextEmbedding(str(model)) as txt:
        return {"images": np.stack(list(img.embed(photos))), "texts": np.stack(list(txt.embed(SENTENCES)))}


@pytest.fixture(scope="module")
def served(model):
    with running(model) as (url, server):
        yield url, server


@pytest.fixture
def client(served):
    with httpx.Client(base_url=served[0], timeout=60) as c:
        yield c


def vectors(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and [d["index"] for d in body["data"]] == list(range(len(body["data"])))
    rows = []
    for d in body["data"]:
        e = d["embedding"]
        rows.append(np.frombuffer(base64.b64decode(e), "<f4") if isinstance(e, str) else np.asarray(e, np.float32))
    return np.stack(rows)


def assert_close(a, b):
    assert np.abs(np.asarray(a) - np.asarray(b)).max() <= 1e-6


def batcher(server, tower: str):
    return server.models[NAME].batchers[tower]


@contextmanager
def wedged(server, tower: str):
    """The tower's batch call blocks until the block exits (a wedged decode or inference)."""
    model = server.models[NAME]
    obj = model.image if tower == "image" else model.text
    release = threading.Event()
    entered = threading.Event()
    real = obj.embed_batch

    def blocked(*args, **kw):
        entered.set()
        release.wait(60)
        return real(*args, **kw)

    obj.embed_batch = blocked
    try:
        yield entered
    finally:
        release.set()
        del obj.embed_batch


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
    text = httpx.get(url + "/metrics").text
    total = one = 0.0
    for line in text.splitlines():
        if line.startswith('fastclip_batch_size_count{model="tiny",tower="image"}'):
            total = float(line.split()[-1])
        if line.startswith('fastclip_batch_size_bucket{le="1.0",model="tiny",tower="image"}'):
            one = float(line.split()[-1])
    return total - one


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
    text = server.models[NAME].text
    text.embed_batch = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("secret /etc/path detail"))
    try:
        r = client.post("/v1/embeddings", json={"input": "boom"})
    finally:
        del text.embed_batch
    assert r.status_code == 500 and "secret" not in r.text and "Traceback" not in r.text
    assert_close(vectors(client.post("/v1/embeddings", json={"input": SENTENCES[:2]})), reference["texts"][:2])


# ------------------------------------------------------------------------------------- limits


def test_too_many_inputs_is_413(client):
    r = client.post("/v1/embeddings", json={"input": ["x"] * (TEST_LIMITS.max_inputs + 1)})
    assert r.status_code == 413 and "max-inputs" in r.json()["error"]["message"]


def raw_request(port: int, head: bytes, body_chunks=(), read_timeout: float = 10) -> tuple[bytes, int]:
    """Send a request over a raw socket; (the response bytes, body bytes the server let us send)."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as s:
        s.sendall(head)
        try:
            for chunk in body_chunks:
                s.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            pass
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except (ConnectionResetError, socket.timeout):
            pass
    return data, sent


def test_body_over_limit_is_413_and_not_read(served):
    check_413(served)


def test_body_over_limit_on_h11(model):
    """The same with uvicorn's pure-Python HTTP parser (the one used when httptools is not installed)."""
    with running(model, http="h11") as served:
        check_413(served)


def check_413(served):
    port = int(served[0].rsplit(":", 1)[1])
    # Declared size: refused from the header, not one body byte read.
    head = b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n"
    t = time.monotonic()
    data, _ = raw_request(port, head)
    assert data.startswith(b"HTTP/1.1 413") and time.monotonic() - t < 5
    # Chunked, no declared size: refused once the counter passes the limit; the rest is never read.
    head = b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    piece = 256 * 1024
    chunk = f"{piece:x}\r\n".encode() + b" " * piece + b"\r\n"

    def endless():
        for _ in range(4 * 1024):  # up to 1 GiB offered
            yield chunk

    data, sent = raw_request(port, head, endless(), read_timeout=5)
    assert data.startswith(b"HTTP/1.1 413"), data[:100]
    assert sent < 64 * TEST_LIMITS.max_body_bytes  # it stopped reading: the socket buffers filled, then closed
    assert served[1].budget.held == 0


def post(url: str, **body):
    return httpx.post(url + "/v1/embeddings", json=body, timeout=60)


def test_trickled_body_is_408(served):
    port = int(served[0].rsplit(":", 1)[1])
    head = b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    t = time.monotonic()
    data, _ = raw_request(port, head, [b'{"input": '], read_timeout=10)  # and then nothing
    assert data.startswith(b"HTTP/1.1 408") and b"body-timeout" in data
    assert 3.0 <= time.monotonic() - t < 10
    assert served[1].budget.held == 0


def test_full_queue_is_503_with_retry_after_and_queued_work_survives(served, photos, reference):
    url, server = served
    limit = TEST_LIMITS.max_queue
    with ThreadPoolExecutor(8) as pool:
        with wedged(server, "image") as entered:
            first = pool.submit(post, url, input=b64(photos[0]), modality="image")
            assert entered.wait(10)
            fill = [pool.submit(post, url, input=[b64(p) for p in (photos * 3)[:16]], modality="image")
                    for _ in range(limit // 16)]
            wait_until(lambda: batcher(server, "image").queued == limit, 10)
            over = post(url, input=b64(photos[1]), modality="image")
            texts = post(url, input=SENTENCES[:2])  # the other tower has its own queue: unaffected
        assert over.status_code == 503 and over.headers["retry-after"] == "1"
        assert over.json()["error"]["code"] == "overloaded"
        assert_close(vectors(texts), reference["texts"][:2])
        # Nobody queued before the overload lost anything.
        assert_close(vectors(first.result()), reference["images"][:1])
        for f in fill:
            assert_close(vectors(f.result()), np.concatenate([reference["images"]] * 3)[:16])


def test_byte_budget_is_503_and_request_timeout_504(model, photos):
    limits = Limits(max_body_bytes=600_000, max_inflight_bytes=1_000_000, request_timeout=2.0, image_workers=1)
    pad = "x" * 450_000  # an unknown field is ignored, its bytes still count
    with running(model, limits) as (url, server), ThreadPoolExecutor(2) as pool:
        with wedged(server, "image") as entered:
            first = pool.submit(post, url, input=b64(photos[0]), modality="image", pad=pad)
            assert entered.wait(10)  # its 450 kB body is held while it waits
            second = post(url, input=b64(photos[1]), modality="image", pad=pad)
            assert second.status_code == 503 and second.headers["retry-after"] == "1"
            assert "bytes" in second.json()["error"]["message"]
            r = first.result()
            assert r.status_code == 504 and "request-timeout" in r.json()["error"]["message"]
        wait_until(lambda: server.budget.held == 0, 10)


def test_big_request_does_not_starve_small_ones(served, photos):
    url, server = served
    finished = {}

    def send(name: str, n: int):
        r = post(url, input=[b64(photos[k % 6]) for k in range(n)], modality="image")
        finished[name] = time.monotonic()
        return r

    with ThreadPoolExecutor(4) as pool:
        with wedged(server, "image") as entered:
            blocker = pool.submit(send, "blocker", 1)
            assert entered.wait(10)
            big = pool.submit(send, "big", 16)
            wait_until(lambda: batcher(server, "image").queued == 16, 10)
            small = pool.submit(send, "small", 1)
            wait_until(lambda: batcher(server, "image").queued == 17, 10)
        assert [f.result().status_code for f in (blocker, big, small)] == [200] * 3
    # The big request's 16 images need 4 batches of 4; the small one, queued behind all of them, shares
    # the next batch instead of waiting for those 4.
    assert finished["small"] < finished["big"]


def test_fair_shares():
    assert fair_shares([100, 1], 32) == [31, 1]
    assert fair_shares([100, 100], 32) == [16, 16]
    assert fair_shares([5, 100, 2], 32) == [5, 25, 2]
    assert fair_shares([1] * 40, 32) == [1] * 32 + [0] * 8
    assert fair_shares([10, 10, 10], 4) == [2, 1, 1]
    assert sum(fair_shares([3, 7, 50, 1], 16)) == 16


def test_batcher_survives_a_broken_batch_call():
    from fastclip import EmbeddingBatch
    from fastclip.serve.batcher import Batcher

    calls = []

    def run(items):
        calls.append(len(items))
        n = len(items) - 1 if len(calls) == 1 else len(items)  # the first call returns one row short
        return EmbeddingBatch(start_index=0, count=n, vectors=np.ones((n, 2), np.float32))

    batcher = Batcher("t", run, max_batch=4, max_wait=0.0, max_queue=8, workers=1)

    async def main():
        loop = asyncio.get_running_loop()
        with pytest.raises(RuntimeError, match="2 inputs"):
            await batcher.submit(["a", "b"], loop).future
        return await batcher.submit(["a", "b", "c"], loop).future

    try:
        assert [r.tolist() for r in asyncio.run(main())] == [[1.0, 1.0]] * 3
        assert batcher.health(10) is None and batcher.queued == 0
    finally:
        batcher.stop()


def test_client_disconnect_cancels_its_queued_work(served, photos):
    url, server = served
    image = batcher(server, "image")
    with wedged(server, "image") as entered:
        blocker = threading.Thread(target=lambda: httpx.post(url + "/v1/embeddings", timeout=60,
                                                             json={"input": b64(photos[0]), "modality": "image"}))
        blocker.start()
        assert entered.wait(10)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/v1/embeddings", json={"input": [b64(photos[1])] * 16, "modality": "image"}, timeout=1.0)
        wait_until(lambda: image.queued == 0, 10)  # the 16 queued images were dropped when the client left
    blocker.join(30)


# ------------------------------------------------------------------------------ health, ready


def test_health_ready_models_metrics(client):
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
    import fastclip.serve.app as app_mod

    gate = threading.Event()
    real = app_mod.load_model
    monkeypatch.setattr(app_mod, "load_model", lambda *a, **k: gate.wait(30) and real(*a, **k))
    with running(model, wait_ready=False) as (url, server):
        r = httpx.get(url + "/ready")
        assert r.status_code == 503 and r.json()["status"] == "loading" and r.headers["retry-after"]
        r = httpx.post(url + "/v1/embeddings", json={"input": "x"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
        assert httpx.get(url + "/health").status_code == 200  # alive while loading
        gate.set()
        wait_until(lambda: httpx.get(url + "/ready").status_code == 200, 30)


def test_api_key(model, caplog):
    key = "s3cr3t-key-value"
    with running(model, api_key=key) as (url, _):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": key}):
            r = httpx.post(url + "/v1/embeddings", json={"input": "x"}, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(url + "/metrics").status_code == 401
        ok = httpx.post(url + "/v1/embeddings", json={"input": "x"}, headers={"Authorization": f"Bearer {key}"})
        assert ok.status_code == 200
        assert httpx.get(url + "/health").status_code == 200 and httpx.get(url + "/ready").status_code == 200
    assert key not in caplog.text


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


# ------------------------------------------------------------------------------------- load, CLI


def test_bounded_load(model, photos, reference):
    """200 requests from 32 concurrent clients, texts and images mixed, two image workers: all answered
    right, in bounded time, and nothing left queued or held."""
    with running(model, Limits(max_batch_images=8, image_workers=2, max_wait=0.005)) as (url, server):
        _load(url, server, photos, reference)


def _load(url, server, photos, reference):
    # One merged batch of 39 texts: the length-sorted, concurrent runs path of the text batch call.
    r = httpx.post(url + "/v1/embeddings", json={"input": SENTENCES * 3}, timeout=60)
    assert_close(vectors(r), np.concatenate([reference["texts"]] * 3))
    started = time.monotonic()

    async def main():
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:
            sem = asyncio.Semaphore(32)

            async def one(k: int):
                async with sem:
                    if k % 2:
                        return "text", k, await c.post("/v1/embeddings", json={"input": SENTENCES[k % 5]})
                    return "image", k, await c.post("/v1/embeddings", json={
                        "input": b64(photos[k % 6]), "modality": "image", "encoding_format": "base64"})

            return await asyncio.gather(*(one(k) for k in range(200)))

    results = asyncio.run(main())
    elapsed = time.monotonic() - started
    statuses = [r.status_code for _, _, r in results]
    assert statuses.count(200) == 200, {s: statuses.count(s) for s in set(statuses)}
    for kind, k, r in results:
        want = reference["texts"][k % 5] if kind == "text" else reference["images"][k % 6]
        assert_close(vectors(r)[0], want)
    assert elapsed < 60
    assert batcher(server, "image").queued == 0 and batcher(server, "text").queued == 0
    assert server.budget.held == 0


def test_several_models_are_picked_by_name(model, reference):
    with running(model, names=("one", "two")) as (url, _):
        r = httpx.post(url + "/v1/embeddings", json={"input": SENTENCES[:2]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "model"
        for name in ("one", "two"):
            r = httpx.post(url + "/v1/embeddings", json={"input": SENTENCES[:2], "model": name})
            assert_close(vectors(r), reference["texts"][:2])
            assert r.json()["model"] == name
        assert [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]] == ["one", "two"]


def test_parse_model_arg_and_default_host():
    assert parse_model_arg("models/clip-b32/") == ModelSource("clip-b32", "models/clip-b32/")
    assert parse_model_arg("b32=models/x") == ModelSource("b32", "models/x")
    assert parse_model_arg("org/repo") == ModelSource("repo", "org/repo")
    from fastclip.cli import build_parser

    args = build_parser().parse_args(["serve", "--model", "m"])
    assert args.host == "127.0.0.1" and not args.allow_urls


def test_cli_works_without_the_serve_extra():
    """`fastclip --help` and every other command must not need uvicorn & co.; `serve` says what to install."""
    code = ("import sys\n"
            "for m in ('starlette', 'uvicorn', 'prometheus_client', 'httpx', 'anyio'): sys.modules[m] = None\n"
            "from fastclip.cli import main\n"
            "assert main(['serve', '--help']) == 0\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "usage: fastclip serve" in r.stdout, r.stderr
    code = code.replace("assert main(['serve', '--help']) == 0", "sys.exit(main(['serve', '--model', 'm']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    # the checkout's folder and the extra (tests/test_hints.py checks the hint itself)
    assert r.returncode == 2 and "pip install" in r.stderr and '[serve]"' in r.stderr, r.stderr


def test_sigterm_finishes_requests_in_flight_and_exits_0(model):
    port = free_port()
    key = "k-" + os.urandom(8).hex()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FASTCLIP_API_KEY": key,
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "fastclip", "serve", "--model", f"{NAME}={model}", "--port", str(port),
                             "--max-batch-images", "2", "--image-workers", "1", "--graceful-timeout", "60"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {key}"}
    try:
        wait_until(lambda: _ready(url), 90, 0.1)
        photo = b64(jpeg("astronaut", 1600))  # ~60 ms of decode each: 8 x 16 of them are in flight for seconds
        results = []

        def send():
            results.append(httpx.post(url + "/v1/embeddings", headers=auth, timeout=120,
                                      json={"input": [photo] * 16, "modality": "image"}))

        threads = [threading.Thread(target=send) for _ in range(8)]
        for t in threads:
            t.start()
        wait_until(lambda: _in_flight(url, auth) >= 8, 30)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(httpx.ConnectError):  # no longer accepting
            httpx.get(url + "/health", timeout=5)
        for t in threads:
            t.join(120)
        rc = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = proc.stdout.read()
    assert rc == 0, log
    assert [r.status_code for r in results] == [200] * 8
    assert all(len(r.json()["data"]) == 16 for r in results)
    assert key not in log


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _in_flight(url: str, auth: dict) -> float:
    for line in httpx.get(url + "/metrics", headers=auth).text.splitlines():
        if line.startswith("fastclip_requests_in_flight "):
            return float(line.split()[1]) - 1  # not counting this /metrics request
    return 0.0
