"""The request body: read as a stream against max_body_bytes and the server's byte budget, then parsed.

A body is never buffered past its limit: a declared Content-Length over it is refused before one byte is
read, a chunked one as soon as the counter passes it (the rest is not read and the connection is closed).
Its bytes count against the byte budget until the request is answered.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any, AsyncIterator

import anyio
from starlette.requests import Request

from ..errors import first_line
from .inputs import BadRequest
from .limits import ByteBudget, Limits, SlowBody, TooLarge

__all__ = ["THREAD_PARSE_BYTES", "read_body", "parse_json"]

THREAD_PARSE_BYTES = 1 << 20  # bodies past this are parsed off the event loop (json.loads: ~10 ms per MiB)


@contextlib.asynccontextmanager
async def read_body(request: Request, limits: Limits, budget: ByteBudget) -> AsyncIterator[bytes]:
    """The body, held against `budget` until the block exits."""
    limit = limits.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise BadRequest("malformed Content-Length")
        if int(declared) > limit:
            raise TooLarge(f"request body of {int(declared)} bytes; the limit is {limit} (--max-body-mb)")
    held = 0
    try:
        chunks = []
        try:
            with anyio.fail_after(limits.body_timeout or None):
                async for chunk in request.stream():
                    if held + len(chunk) > limit:
                        raise TooLarge(f"request body over {limit} bytes (--max-body-mb)")
                    budget.take(len(chunk))
                    held += len(chunk)
                    chunks.append(chunk)
        except TimeoutError:
            raise SlowBody(f"the request body did not arrive within {limits.body_timeout:g} s "
                           "(--body-timeout)") from None
        body = b"".join(chunks)
        chunks.clear()
        request.state.body_read = True
        yield body
    finally:
        budget.give(held)


async def parse_json(body: bytes) -> Any:
    def parse() -> Any:
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise BadRequest(f"malformed JSON: {first_line(exc)[:200]}", code="invalid_json") from None

    if not body:
        raise BadRequest("empty body: send a JSON object", code="invalid_json")
    return await anyio.to_thread.run_sync(parse) if len(body) > THREAD_PARSE_BYTES else parse()
