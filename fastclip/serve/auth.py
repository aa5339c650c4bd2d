"""The API key: `Authorization: Bearer KEY` on every route but /health and /ready.

Only a digest of the expected header is kept, and a sent header is compared with it in constant time
(hmac.compare_digest over equal-length digests): the key itself is never stored on the server object,
logged or echoed in an error.
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.requests import Request

from .errors import Unauthorized

__all__ = ["ApiKey"]


class ApiKey:
    def __init__(self, key: str | None):
        self._digest = hashlib.sha256(f"Bearer {key}".encode()).digest() if key else None

    @property
    def required(self) -> bool:
        return self._digest is not None

    def check(self, request: Request) -> None:
        if self._digest is None:
            return
        given = hashlib.sha256(request.headers.get("authorization", "").encode("utf-8", "replace")).digest()
        if not hmac.compare_digest(given, self._digest):
            raise Unauthorized("missing or wrong API key: send Authorization: Bearer KEY")
