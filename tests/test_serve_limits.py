"""`fastclip serve` under pressure: body, input, queue and byte limits, timeouts, fair batching, client
disconnects and a bounded load, on the real server (uvicorn on a free loopback port, in a thread).

Every answer under load is still held to the in-process runtime's vectors on the same inputs.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
pytest.importorskip("starlette")
pytest.importorskip("prometheus_client")

from support.photos import SENTENCES  # noqa: E402
from support.serving import (TEST_LIMITS, assert_close, b64, batcher, post, running, vectors, wait_until,  # noqa: E402
                             wedged)
from support.serving import client, model, photos, reference, served  # noqa: E402,F401 - fixtures

from fastclip.serve import Limits  # noqa: E402
from fastclip.serve.batcher import fair_shares  # noqa: E402


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


# -------------------------------------------------------------------------------------------- load


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
