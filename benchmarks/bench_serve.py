"""`fastclip serve` against in-process `embed`, and infinity-emb side by side, on the same photos and texts.

One run measures, round after round (the systems interleaved, see common.Worker for why):

* in-process `ImageEmbedding.embed(bytes, batch_size=32)` / `TextEmbedding.embed(texts, batch_size=32)`,
  in its own process (common.Worker);
* the server (`python -m fastclip serve`, default limits) under 1, 8 and 32 concurrent clients, each client
  sending one image (or one text) per request and the next one as soon as the answer is back: items/s,
  p50 and p99 request latency (over all rounds);
* infinity-emb serving the same weights as a transformers CLIP folder on CPU, the same way, when it is
  installed (`--infinity PATH_TO_infinity_emb`; it needs torch, so it lives in its own virtualenv);
* memory under a flood: 64 connections sending 8-photo requests as fast as they are answered for
  `--flood-seconds`: each server's resident memory before and at peak, and how the requests were answered.

The clients are a minimal keep-alive HTTP/1.1 client on asyncio (request bodies built once), so the load
generator costs little CPU beside the servers on a small machine. The model is the random-weight ViT-B/32
of benchmarks/common.py (`fastclip export`ed once); the photos are its 1-4 MP JPEGs, sent as data URIs.

    python benchmarks/bench_serve.py [--images 96] [--texts 512] [--rounds 3] [--infinity /tmp/infinity-venv/bin/infinity_emb]

infinity-emb 0.0.78 in its own virtualenv (it pins transformers 4.x; torch from the CPU wheel):

    python -m venv /tmp/infinity-venv && . /tmp/infinity-venv/bin/activate
    pip install -c .ci/constraints.txt torch "infinity-emb[server,torch,vision]==0.0.78" aiohttp
    pip uninstall -y torchvision   # its CUDA build's compiled ops fail to load beside CPU torch (see
                                   # export/torchvision_compat.py); transformers' CLIP needs none of it
    # aiohttp: infinity reads even data URIs through it. Run with --no-compile (torch.compile on CPU needs a
    # compiler and minutes) and fp32, as fastclip.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, ROOT, Worker, machine, machine_md, md_table, model_folder, photos, sentences  # noqa: E402

HERE = Path(__file__).resolve()
HF_FOLDER = OUT / "vit-b-32-hf"
CONCURRENCY = (1, 8, 32)
RESULTS = OUT / "bench_serve.json"


# ------------------------------------------------------------------------------- in-process worker

def worker(kind: str, model: str, n: int, save: str) -> None:
    from common import serve

    from fastclip import ImageEmbedding, TextEmbedding

    if kind == "images":
        items = [p.read_bytes() for p in photos(n)]
        m = ImageEmbedding(model)
    else:
        items = sentences(n)
        m = TextEmbedding(model)
    serve(lambda batch, bs: np.stack(list(m.embed(batch, bs))), items, lambda: {}, {"kind": kind}, save_vectors=save)


# ------------------------------------------------------------------------------------- HTTP client

class Connection:
    """One keep-alive HTTP/1.1 connection: send a prebuilt request, read status and body (content-length
    or chunked)."""

    def __init__(self, port: int):
        self.port = port
        self.reader = self.writer = None

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port, limit=2**24)
        self.writer.write(raw)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        else:
            parts = []
            while (size := int((await self.reader.readuntil(b"\r\n")).strip(), 16)):
                parts.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            await self.reader.readexactly(2)
            body = b"".join(parts)
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


def post(path: str, payload: dict) -> bytes:
    body = json.dumps(payload).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def _drive(port: int, requests: list[bytes], concurrency: int, keep: bool):
    """Send every request once, `concurrency` at a time; (seconds, latencies, statuses, bodies if keep)."""
    latencies = [0.0] * len(requests)
    statuses = [0] * len(requests)
    bodies: list[bytes | None] = [None] * len(requests)
    counter = iter(range(len(requests)))

    async def client():
        conn = Connection(port)
        for i in counter:
            t = time.perf_counter()
            statuses[i], body = await conn.request(requests[i])
            latencies[i] = time.perf_counter() - t
            if keep:
                bodies[i] = body
        await conn.close()

    t = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.perf_counter() - t, latencies, statuses, bodies


def drive(port, requests, concurrency, keep=False):
    return asyncio.run(_drive(port, requests, concurrency, keep))


# ------------------------------------------------------------------------------------------ servers

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, name: str, cmd: list[str], port: int, health: str, env: dict | None = None):
        self.name, self.port, self.health = name, port, health
        self.log = open(OUT / f"bench_serve_{name}.log", "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT,
                                     env={**os.environ, **(env or {})})

    def wait(self, timeout: float = 600) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log.name}")
            try:
                status, _ = asyncio.run(Connection(self.port).request(
                    f"GET {self.health} HTTP/1.1\r\nHost: x\r\n\r\n".encode()))
                if status == 200:
                    return time.monotonic() - started
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} not ready after {timeout} s")

    def rss_mb(self) -> float:
        import psutil

        p = psutil.Process(self.proc.pid)
        return sum(q.memory_info().rss for q in [p, *p.children(recursive=True)]) / 2**20

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def hf_folder() -> Path:
    """The benchmark weights as a transformers CLIP folder (what infinity-emb loads), made once."""
    if (HF_FOLDER / "config.json").is_file():
        return HF_FOLDER
    from common import hf_model

    tmp = HF_FOLDER.with_name(HF_FOLDER.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    hf_model().save_pretrained(tmp)
    for f in (ROOT / "tests" / "fixtures" / "clip-tokenizer").iterdir():
        if f.suffix in (".json", ".txt"):
            shutil.copyfile(f, tmp / f.name)
    tmp.rename(HF_FOLDER)
    return HF_FOLDER


# ------------------------------------------------------------------------------------------- bodies

def image_requests(system: str, uris: list[str]) -> list[bytes]:
    if system == "fastclip":
        return [post("/v1/embeddings", {"input": u, "modality": "image"}) for u in uris]
    return [post("/embeddings", {"model": "clip", "input": [u], "modality": "image"}) for u in uris]


def text_requests(system: str, texts: list[str]) -> list[bytes]:
    if system == "fastclip":
        return [post("/v1/embeddings", {"input": t}) for t in texts]
    return [post("/embeddings", {"model": "clip", "input": [t], "modality": "text"}) for t in texts]


def rows(bodies: list[bytes]) -> np.ndarray:
    return np.array([json.loads(b)["data"][0]["embedding"] for b in bodies], np.float32)


# ------------------------------------------------------------------------------------------ flood

def flood(server: Server, request: bytes, seconds: float, connections: int = 64, drain: float = 60,
          rss_cap_mb: float = 3500) -> dict:
    """`connections` clients resending `request` for `seconds` (then up to `drain` s for the last answers);
    RSS sampled every 50 ms. A server growing past `rss_cap_mb` is killed (the machine's rule: one process
    above 4 GB at most) and reported as such."""
    idle = server.rss_mb()
    peak = [idle]
    killed = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], server.rss_mb())
            except Exception:  # noqa: BLE001 - the process may be gone
                return
            if peak[0] > rss_cap_mb and not killed:
                killed.append(peak[0])
                server.proc.kill()
                return
            time.sleep(0.05)

    counts: dict[str, int] = {}
    latencies: list[float] = []

    async def client(deadline: float):
        conn = Connection(server.port)
        while time.monotonic() < deadline:
            t = time.perf_counter()
            try:
                status, _ = await asyncio.wait_for(conn.request(request), deadline + drain - time.monotonic())
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as exc:
                status = type(exc).__name__
                await conn.close()
            latencies.append(time.perf_counter() - t)
            counts[str(status)] = counts.get(str(status), 0) + 1
        await conn.close()

    async def main():
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(client(deadline) for _ in range(connections)))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t = time.monotonic()
    asyncio.run(main())
    elapsed = time.monotonic() - t
    stop.set()
    sampler.join()
    return {"idle_rss_mb": idle, "peak_rss_mb": peak[0], "answers": counts, "seconds": elapsed,
            "killed_over_mb": killed[0] if killed else None,
            "p99_s": float(np.percentile(latencies, 99)) if latencies else None}


# --------------------------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--texts", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--flood-seconds", type=float, default=15)
    ap.add_argument("--infinity", default="/tmp/infinity-venv/bin/infinity_emb",
                    help="infinity_emb executable (own virtualenv); skipped when missing")
    ap.add_argument("--worker", choices=("images", "texts"), help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--save", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(a.worker, a.model, a.n, a.save)

    info = machine()
    model = model_folder()
    paths = photos(a.images)
    uris = ["data:image/jpeg;base64," + base64.b64encode(p.read_bytes()).decode() for p in paths]
    texts = sentences(a.texts)
    env = {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}

    servers = {"fastclip": Server("fastclip", [sys.executable, "-m", "fastclip", "-q", "serve", "--model",
                                              f"vit-b-32={model}", "--port", str(fastclip_port := free_port())],
                                  fastclip_port, "/ready", env)}
    skipped = {}
    if Path(a.infinity).is_file():
        port = free_port()
        servers["infinity"] = Server("infinity", [a.infinity, "v2", "--model-id", str(hf_folder()), "--served-model-name",
                                                  "clip", "--engine", "torch", "--device", "cpu", "--batch-size", "32",
                                                  "--port", str(port), "--no-model-warmup", "--no-compile",
                                                  "--no-bettertransformer", "--dtype", "float32"],
                                     port, "/health", {"HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"})
    else:
        skipped["infinity"] = f"{a.infinity} not found (pip install infinity-emb in its own virtualenv)"
    for name, server in list(servers.items()):
        try:
            print(f"{name} ready in {server.wait():.1f} s", file=sys.stderr)
        except RuntimeError as exc:
            skipped[name] = str(exc)
            server.stop()
            del servers[name]
            if name == "fastclip":
                raise

    saved = {k: str(OUT / f"bench_serve_inproc_{k}.npy") for k in ("images", "texts")}
    inproc = {k: Worker(HERE, ["--worker", k, "--model", str(model), "--n", str(n), "--save", saved[k]])
              for k, n in (("images", a.images), ("texts", a.texts))}
    requests = {(s, "images"): image_requests(s, uris) for s in servers}
    requests.update({(s, "texts"): text_requests(s, texts) for s in servers})
    rates: dict[tuple, list[float]] = {}
    lat: dict[tuple, list[float]] = {}
    errors: dict[tuple, int] = {}
    served_rows = {}
    for s in servers:  # warm-up: graph caches, arenas, thread pools, connections
        for kind in ("images", "texts"):
            drive(servers[s].port, requests[(s, kind)][:8], 8)
    for r in range(a.rounds):
        for kind, n in (("images", a.images), ("texts", a.texts)):
            rate = inproc[kind].time(32)
            rates.setdefault(("in-process", kind, 32), []).append(rate)
            print(f"round {r + 1} {kind} in-process bs=32: {rate:.1f}/s", file=sys.stderr, flush=True)
            for s, server in servers.items():
                for c in CONCURRENCY:
                    keep = r == 0 and c == 32
                    seconds, latencies, statuses, bodies = drive(server.port, requests[(s, kind)], c, keep)
                    key = (s, kind, c)
                    rates.setdefault(key, []).append(n / seconds)
                    lat.setdefault(key, []).extend(latencies)
                    errors[key] = errors.get(key, 0) + sum(1 for x in statuses if x != 200)
                    if keep and all(x == 200 for x in statuses):
                        served_rows[(s, kind)] = rows(bodies)
                    print(f"round {r + 1} {kind} {s} c={c}: {n / seconds:.1f}/s", file=sys.stderr, flush=True)
    for w in inproc.values():
        w.finish()
    diffs = {}
    for (s, kind), got in served_rows.items():
        want = np.load(saved[kind])
        diffs[(s, kind)] = float(np.abs(got - want).max()) if s == "fastclip" else float(
            np.min((got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)))

    flood_body = post("/v1/embeddings", {"input": uris[:8], "modality": "image"})
    floods = {"fastclip": flood(servers["fastclip"], flood_body, a.flood_seconds)}
    if "infinity" in servers:
        floods["infinity"] = flood(servers["infinity"], post("/embeddings", {"model": "clip", "input": uris[:8],
                                                                             "modality": "image"}), a.flood_seconds)
    exits = {s: server.stop() for s, server in servers.items() if not floods.get(s, {}).get("killed_over_mb")}
    load_end = os.getloadavg()

    print()
    print(machine_md(info), end="")
    print(f"- Load average at end: {', '.join(f'{x:.2f}' for x in load_end)}")
    print(f"- {a.images} photos (1-4 MP JPEG, data URIs), {a.texts} sentences; {a.rounds} rounds, systems interleaved; "
          f"img/s and texts/s are medians over rounds, p50/p99 over every request of every round")
    for kind, unit in (("images", "img/s"), ("texts", "texts/s")):
        base = np.median(rates[("in-process", kind, 32)])
        table = [["in-process embed, batch 32", f"{base:.1f}", "1.00x", "-", "-", "-"]]
        for s in servers:
            for c in CONCURRENCY:
                key = (s, kind, c)
                rate = float(np.median(rates[key]))
                ratio = np.median(np.array(rates[key]) / np.array(rates[("in-process", kind, 32)]))
                table.append([f"{s} server, {c} client{'s' if c > 1 else ''}", f"{rate:.1f}", f"{ratio:.2f}x",
                              f"{1000 * np.percentile(lat[key], 50):.0f}", f"{1000 * np.percentile(lat[key], 99):.0f}",
                              errors[key]])
        print(f"\n{kind}:\n")
        print(md_table(["system", unit, "vs in-process (same round)", "p50 ms", "p99 ms", "non-200"], table), end="")
    for (s, kind), d in diffs.items():
        what = "max |server - in-process|" if s == "fastclip" else "min cosine to fastclip in-process"
        print(f"- {s} {kind} vectors: {what} = {d:.2e}" if s == "fastclip" else f"- {s} {kind}: {what} = {d:.6f}")
    print(f"\nflood ({a.flood_seconds:g} s of 64 connections sending 8 photos per request, then up to 60 s for "
          "the last answers; a server past 3.5 GB RSS is killed):\n")
    print(md_table(["server", "idle RSS MB", "peak RSS MB", "answers", "p99 s"],
                   [[s, f"{f['idle_rss_mb']:.0f}",
                     f"{f['peak_rss_mb']:.0f}" + (" (killed at the cap)" if f["killed_over_mb"] else ""),
                     json.dumps(f["answers"]),
                     f"{f['p99_s']:.1f}" if f["p99_s"] is not None else "-"] for s, f in floods.items()]), end="")
    for s, why in skipped.items():
        print(f"- {s} not run: {why}")
    print(f"- server exit codes after SIGTERM: {exits}")
    RESULTS.write_text(json.dumps({
        "machine": info, "load_end": load_end, "skipped": skipped, "floods": floods,
        "rates": {" ".join(map(str, k)): v for k, v in rates.items()},
        "p50_p99_ms": {" ".join(map(str, k)): [1000 * np.percentile(v, 50), 1000 * np.percentile(v, 99)]
                       for k, v in lat.items()},
    }, indent=1, default=str))


if __name__ == "__main__":
    main()
