"""Image URLs (with --allow-urls only): fetched concurrently, each within url_timeout and max_url_bytes.

Off by default: a server that fetches any URL a caller names can be made to request any address it can
reach (cloud metadata endpoints, internal services).
"""

from __future__ import annotations

import anyio

from .inputs import InputError
from .limits import Limits

__all__ = ["UrlFetcher"]


class UrlFetcher:
    """One shared httpx client, opened on the first URL; `close` on shutdown."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self._client = None

    async def fetch_into(self, items: list, urls: list[int], failures: dict[int, InputError]) -> None:
        """Replace the URL items[i] by its bytes for each i in `urls`; a URL that fails becomes None and a failure."""

        async def get(i: int) -> None:
            try:
                items[i] = await self.fetch(items[i], i)
            except InputError as exc:
                items[i] = None
                failures[i] = exc

        async with anyio.create_task_group() as group:
            for i in urls:
                group.start_soon(get, i)

    async def fetch(self, url: str, index: int) -> bytes:
        """GET one image URL with the size and time limits; any failure is this input's error."""
        import httpx

        limits = self.limits
        try:
            with anyio.fail_after(limits.url_timeout):
                async with self._get_client().stream("GET", url) as response:
                    if response.status_code != 200:
                        raise InputError(index, f"fetching the URL answered HTTP {response.status_code}")
                    declared = response.headers.get("content-length")
                    if declared is not None and declared.isdigit() and int(declared) > limits.max_url_bytes:
                        raise InputError(index, f"the URL's image is {int(declared)} bytes; the limit is "
                                                f"{limits.max_url_bytes} (--max-url-bytes)")
                    chunks, size = [], 0
                    async for chunk in response.aiter_bytes():
                        size += len(chunk)
                        if size > limits.max_url_bytes:
                            raise InputError(index, f"the URL's image is over {limits.max_url_bytes} bytes "
                                                    "(--max-url-bytes)")
                        chunks.append(chunk)
                    return b"".join(chunks)
        except TimeoutError:
            raise InputError(index, f"fetching the URL took over {limits.url_timeout:g} s (--url-timeout)") from None
        except httpx.HTTPError as exc:
            raise InputError(index, f"fetching the URL failed: {type(exc).__name__}") from None

    def _get_client(self):
        if self._client is None:
            import httpx

            self._client = httpx.AsyncClient(follow_redirects=True, max_redirects=3,
                                             timeout=httpx.Timeout(self.limits.url_timeout),
                                             limits=httpx.Limits(max_connections=16))
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
