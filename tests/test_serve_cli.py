"""`fastclip serve` as a user runs it: `python -m fastclip serve` in a subprocess, its whole stdout and stderr read.

What the process writes is checked whole: the API key never appears in it at any log level the command
offers, -q leaves only warnings and errors, a model that cannot load is one error line before anything
listens, and SIGTERM drains the requests in flight.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")
pytest.importorskip("prometheus_client")

from support.photos import SENTENCES  # noqa: E402
from support.serving import (NAME, REPO, b64, cli_env, cli_server, data_uri, jpeg, metric, vectors,  # noqa: E402
                             wait_until)
from support.serving import model  # noqa: E402,F401 - fixture

from fastclip.serve import ModelSource, parse_model_arg  # noqa: E402


def test_parse_model_arg_and_default_host():
    assert parse_model_arg("models/clip-b32/") == ModelSource("clip-b32", "models/clip-b32/")
    assert parse_model_arg("b32=models/x") == ModelSource("b32", "models/x")
    assert parse_model_arg("org/repo") == ModelSource("repo", "org/repo")
    from fastclip.cli import build_parser

    args = build_parser().parse_args(["serve", "--model", "m"])
    assert args.host == "127.0.0.1" and not args.allow_urls and args.log_level == "info"
    with pytest.raises(SystemExit):  # uvicorn's trace level logs request headers, the API key among them
        build_parser().parse_args(["serve", "--model", "m", "--log-level", "trace"])


def test_cli_works_without_the_serve_extra():
    """`fastclip --help` and every other command must not need uvicorn & co.; `serve` says what to install."""
    code = ("import sys\n"
            "for m in ('starlette', 'uvicorn', 'prometheus_client', 'httpx', 'anyio'): sys.modules[m] = None\n"
            "from fastclip.cli import main\n"
            "assert main(['serve', '--help']) == 0\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "usage: fastclip serve" in r.stdout, r.stderr
    code = code.replace("assert main(['serve', '--help']) == 0", "sys.exit(main(['serve', '--model', 'm']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "serve extra" in r.stderr and "pip install" in r.stderr, r.stderr


def test_api_key_never_written_at_any_log_level(model):
    """At the most verbose level the command offers (debug, access log on), through accepted and refused
    requests, errors and shutdown, the key is in none of the process's output."""
    key = "k3y-" + os.urandom(12).hex()
    auth = {"Authorization": f"Bearer {key}"}
    with cli_server(model, "--log-level", "debug", "--access-log", env=cli_env(FASTCLIP_API_KEY=key)) as served:
        url = served.url
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": key}, {"Authorization": f"Basic {key}"}):
            r = httpx.post(url + "/v1/embeddings", json={"input": "x"}, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key" and key not in r.text
        assert httpx.get(url + "/metrics").status_code == 401
        assert vectors(httpx.post(url + "/v1/embeddings", json={"input": SENTENCES[:2]}, headers=auth)).shape == (2, 32)
        assert httpx.post(url + "/v1/embeddings", content=b"{bad", headers=auth).status_code == 400
        assert httpx.post(url + "/v1/embeddings", json={"input": [b64(b"no image" * 9)]}, headers=auth).status_code == 400
        assert httpx.get(url + "/health").status_code == 200 and httpx.get(url + "/ready").status_code == 200
        assert metric(url, "fastclip_requests_total", auth, route="/v1/embeddings", status="401") == 4
    assert served.rc == 0, served.output
    # What was captured is the process's whole output at DEBUG: the load summary, uvicorn's startup lines and
    # the access log (on stdout) are all there.
    assert "model 'tiny' loaded" in served.stderr and "Uvicorn running on" in served.stderr, served.output
    assert '"POST /v1/embeddings HTTP/1.1" 401' in served.stdout, served.output
    assert key not in served.output


def test_a_model_that_cannot_load_fails_before_anything_listens(tmp_path):
    """One error line, exit 1. The port is held by another socket here: a server that bound before loading
    would fail on the port instead (or print uvicorn's startup lines first)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "fastclip", "serve", "--model", str(tmp_path / "missing"), "--port",
                            str(port)], capture_output=True, text=True, env=cli_env(), timeout=120)
    assert r.returncode == 1 and r.stdout == "", r.stdout + r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastclip: error: cannot load the models: "), r.stderr
    assert "missing: no such model folder" in lines[0]


@pytest.mark.parametrize("where", ["top", "serve"])
def test_quiet_leaves_only_warnings_and_errors(model, where):
    """-q (`fastclip -q serve` or `fastclip serve -q`): no uvicorn INFO line, no summary; the server still serves."""
    quiet = ("-q",)
    with cli_server(model, *(quiet if where == "serve" else ()), top=quiet if where == "top" else ()) as served:
        r = httpx.post(served.url + "/v1/embeddings", json={"input": [SENTENCES[0], data_uri(jpeg("coffee"))]})
        assert vectors(r).shape == (2, 32)
    assert served.rc == 0
    assert served.output == "", served.output


def test_sigterm_finishes_requests_in_flight_and_exits_0(model):
    key = "k-" + os.urandom(8).hex()
    auth = {"Authorization": f"Bearer {key}"}
    with cli_server(model, "--max-batch-images", "2", "--image-workers", "1", "--graceful-timeout", "60",
                    env=cli_env(FASTCLIP_API_KEY=key)) as served:
        url = served.url
        photo = b64(jpeg("astronaut", 1600))  # ~60 ms of decode each: 8 x 16 of them are in flight for seconds
        results = []

        def send():
            results.append(httpx.post(url + "/v1/embeddings", headers=auth, timeout=120,
                                      json={"input": [photo] * 16, "modality": "image"}))

        threads = [threading.Thread(target=send) for _ in range(8)]
        for t in threads:
            t.start()
        # not counting the /metrics request asking
        wait_until(lambda: metric(url, "fastclip_requests_in_flight", auth) - 1 >= 8, 30)
        served.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(httpx.ConnectError):  # no longer accepting
            httpx.get(url + "/health", timeout=5)
        for t in threads:
            t.join(120)
        served.proc.wait(60)
    assert served.rc == 0, served.output
    assert [r.status_code for r in results] == [200] * 8
    assert all(len(r.json()["data"]) == 16 for r in results)
    # Without -q the summaries and uvicorn's INFO lines are there (what the -q test finds gone).
    assert "model 'tiny' loaded" in served.stderr and "Uvicorn running on" in served.stderr, served.output
    assert key not in served.output
