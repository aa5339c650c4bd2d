"""Reaching the Hugging Face hub: one probe, so a machine without network fails in seconds, in one line.

huggingface_hub retries a failed connection five times with backoff (1 + 2 + 4 + 8 + 8 s) and logs every
try. Measured offline here: `fastclip export openai/clip-vit-base-patch32` took 31 s and printed 24 retry
lines; `open_clip:ViT-B-32 --pretrained laion2b_s34b_b79k` took 51 s and printed 50. One TCP connect to the
endpoint (or to the proxy that would carry the request), at most `PROBE_TIMEOUT_S`, answers the same
question. Where it fails, callers read only the local cache, which answers at once.
"""

from __future__ import annotations

import socket
import urllib.parse
import urllib.request
from pathlib import Path

from .errors import first_line

# A TCP handshake to the hub takes well under a second where there is a route; a firewall that drops
# packets (no refusal) is the case that waits this long.
PROBE_TIMEOUT_S = 3.0

_offline_reason: str | None = None  # set once go_offline_if_unreachable() has switched the hub off


def cache_path(cache_dir: str | Path | None = None) -> str:
    """The folder hub downloads are cached in: `cache_dir`, else huggingface_hub's (HF_HUB_CACHE, HF_HOME)."""
    if cache_dir:
        return str(Path(cache_dir).expanduser().resolve())
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def not_cached(name: str, reason: str | None, fix: str, cache_dir: str | Path | None = None) -> str:
    """One line: `name` is not in the cache, why the hub was not asked (when it was not), and the way out."""
    why = f", and the hub cannot be reached ({reason})" if reason else ""
    return f"{name}: not in the hub cache {cache_path(cache_dir)}{why}; {fix}"


def _target(endpoint: str) -> tuple[str, int]:
    """(host, port) a request to `endpoint` first connects to: the proxy when one applies."""
    url = urllib.parse.urlsplit(endpoint)
    host = url.hostname or "huggingface.co"
    proxy = urllib.request.getproxies().get(url.scheme or "https")
    if proxy and not urllib.request.proxy_bypass(host):
        p = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if p.hostname:
            return p.hostname, p.port or (443 if p.scheme == "https" else 80)
    return host, url.port or (80 if url.scheme == "http" else 443)


def unreachable(timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the hub cannot be reached now (offline mode set, name not resolved, no route), or None."""
    from huggingface_hub import constants

    if _offline_reason is not None:
        return _offline_reason
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    host, port = _target(constants.ENDPOINT)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"cannot connect to {host}:{port}: {first_line(exc)}"


def go_offline_if_unreachable(timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Probe once; when the hub is unreachable, switch huggingface_hub to offline mode for this process.

    For one-shot commands whose libraries (transformers, open_clip) call the hub themselves: in offline
    mode they read the cache and fail at once instead of retrying for half a minute. Returns the reason,
    or None when the hub answers.
    """
    global _offline_reason
    reason = unreachable(timeout)
    if reason is not None and _offline_reason is None:
        from huggingface_hub import constants

        constants.HF_HUB_OFFLINE = True  # read at each call through huggingface_hub.is_offline_mode()
        _offline_reason = reason
    return reason
