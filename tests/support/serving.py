"""The server under test: a real uvicorn on a free loopback port (in a thread, or `python -m fastclip serve` as a
subprocess), the photos sent to it, and readers of its answers. Shared by tests/test_serve*.py."""

from __future__ import annotations

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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

from fastclip import ImageEmbedding, TextEmbedding
from fastclip.serve import Limits, ModelSource, create_app

from .photos import SENTENCES, photo_array

NAME = "tiny"
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins")
TEST_LIMITS = Limits(max_body_bytes=4 * 2**20, max_inflight_bytes=16 * 2**20, max_inputs=16, max_queue=32,
                     max_batch_images=4, max_batch_texts=8, max_wait=0.02, stall_timeout=30, request_timeout=60,
                     body_timeout=3.0,
                     image_workers=1)  # one worker per tower: a wedged batch call holds the whole tower
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout: float, step: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(step)


def is_ready(url: str) -> bool:
    try:
        return httpx.get(url + "/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


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
        wait_until(lambda: is_ready(url), 60)
    try:
        yield url, app.server
    finally:
        server.should_exit = True
        thread.join(30)


@dataclass
class Process:
    """A `fastclip serve` subprocess: its URL while it runs; its exit code and output once stopped."""

    url: str
    proc: subprocess.Popen
    rc: int | None = None
    stdout: str = ""
    stderr: str = ""

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def cli_env(**extra: str) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", **extra,
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


@contextmanager
def cli_server(model: Path, *args: str, env: dict | None = None, top: tuple[str, ...] = ()):
    """`python -m fastclip TOP... serve --model tiny=MODEL --port P ARGS...`, ready; SIGTERM on exit, then its
    output is read into the yielded Process (stdout and stderr apart, both whole)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fastclip", *top, "serve", "--model", f"{NAME}={model}", "--port",
                             str(port), *args], env=env or cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    served = Process(f"http://127.0.0.1:{port}", proc)
    try:
        wait_until(lambda: is_ready(served.url) or proc.poll() is not None, 90, 0.1)
        assert proc.poll() is None, proc.communicate()
        yield served
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            served.stdout, served.stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            served.stdout, served.stderr = proc.communicate()
        served.rc = proc.returncode


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


def data_uri(data: bytes, media: str = "image/jpeg") -> str:
    return f"data:{media};base64," + b64(data)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels (a decompression bomb's header), with no pixel data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


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
    # Same runtime, same inputs, same batch call: the server's vectors are the in-process ones to float32 rounding.
    assert np.abs(np.asarray(a) - np.asarray(b)).max() <= 1e-6


def metric(url: str, name: str, headers: dict | None = None, **labels: str) -> float:
    """One sample of /metrics (0 when absent), its labels given in any order."""
    want = {f'{k}="{v}"' for k, v in labels.items()}
    for line in httpx.get(url + "/metrics", headers=headers).text.splitlines():
        head, _, value = line.rpartition(" ")
        sample, _, rest = head.partition("{")
        if sample == name and set(filter(None, rest.rstrip("}").split(","))) == want:
            return float(value)
    return 0.0


def batcher(server, tower: str):
    return server.models.loaded[NAME].batchers[tower]


@contextmanager
def wedged(server, tower: str):
    """The tower's batch call blocks until the block exits (a wedged decode or inference)."""
    model = server.models.loaded[NAME]
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


def post(url: str, **body):
    return httpx.post(url + "/v1/embeddings", json=body, timeout=60)


# ------------------------------------------------------------------------------------------ fixtures
# Import them by name into a test module (pytest finds fixtures among a module's globals).


@pytest.fixture(scope="module")
def model(tiny_openclip_export) -> Path:
    return tiny_openclip_export


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    return [jpeg(n) for n in PHOTOS]


@pytest.fixture(scope="module")
def reference(model, photos):
    """In-process vectors of the same inputs: what every server answer is held to (assert_close)."""
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
