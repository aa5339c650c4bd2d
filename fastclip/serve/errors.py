"""Every way a request can fail, in one table, and the one function that answers any of them.

ERRORS maps an exception class to its answer: HTTP status, error type and code (OpenAI's error shape:
{"error": {"message", "type", "param", "code"}}, plus "index" when one input is at fault). An exception may
carry its own `status`, `code`, `param` or `index` (BadRequest, InputError); the table gives the rest. An
exception the table does not name is a bug of ours: its traceback goes to the log, the caller gets a 500
without it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.responses import JSONResponse, Response

from .batcher import QueueFull
from .inputs import BadRequest, InputError
from .limits import Busy, SlowBody, TooLarge

if TYPE_CHECKING:
    from .metrics import Metrics

log = logging.getLogger("fastclip.serve")

__all__ = ["ERRORS", "INVALID", "Answer", "Unauthorized", "NotReady", "GatewayTimeout", "ClientGone",
           "error_response", "json_error"]


class Unauthorized(Exception):
    """The Authorization header is missing or holds the wrong key."""


class NotReady(Exception):
    """The models are still loading, or failed to load."""


class GatewayTimeout(Exception):
    """No answer within request_timeout."""


class ClientGone(Exception):
    """The client hung up before its answer: nobody reads the response."""


@dataclass(frozen=True)
class Answer:
    status: int
    type: str
    code: str
    param: str | None = None
    retry: bool = False  # Retry-After: the same request may succeed later
    rejected: str | None = None  # refused before any work: counted in fastclip_rejected_total{reason}
    template: str = "{}"  # the message, around str(exc)
    headers: tuple[tuple[str, str], ...] = ()


INVALID, SERVER = "invalid_request_error", "server_error"
_BUSY = Answer(503, SERVER, "overloaded", retry=True, rejected="busy", template="server busy: {}; retry later")

ERRORS: dict[type[BaseException], Answer] = {
    Unauthorized: Answer(401, "authentication_error", "invalid_api_key", headers=(("WWW-Authenticate", "Bearer"),)),
    BadRequest: Answer(400, INVALID, "invalid_request"),
    InputError: Answer(400, INVALID, "invalid_input", param="input"),
    SlowBody: Answer(408, INVALID, "body_timeout"),
    TooLarge: Answer(413, INVALID, "too_large", rejected="too_large"),
    NotReady: Answer(503, SERVER, "not_ready", retry=True),
    Busy: _BUSY,
    QueueFull: _BUSY,
    GatewayTimeout: Answer(504, SERVER, "timeout"),
    ClientGone: Answer(499, SERVER, "client_gone"),  # only /metrics sees it: uvicorn drops the response
}
INTERNAL = Answer(500, SERVER, "internal", template="internal server error (see the server log)")


def json_error(status: int, message: str, kind: str, *, code: str | None = None, param: str | None = None,
               index: int | None = None, headers: dict | None = None) -> JSONResponse:
    body: dict[str, Any] = {"message": message, "type": kind, "param": param, "code": code}
    if index is not None:
        body["index"] = index
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def answer_for(exc: BaseException) -> Answer:
    return next((ERRORS[cls] for cls in type(exc).__mro__ if cls in ERRORS), INTERNAL)


def error_response(exc: BaseException, *, where: str, retry_after: int, metrics: Metrics | None = None) -> Response:
    """The JSON error response for `exc` raised while answering `where` ("POST /v1/embeddings")."""
    answer = answer_for(exc)
    if answer is INTERNAL:
        log.error("fastclip serve: %s failed", where, exc_info=exc)
        return json_error(answer.status, answer.template, answer.type, code=answer.code)
    if answer.rejected and metrics is not None:
        metrics.rejected.labels(answer.rejected).inc()
    if answer.status == 499:
        return Response(status_code=499)
    headers = dict(answer.headers)
    if answer.retry:
        headers["Retry-After"] = str(retry_after)
    return json_error(getattr(exc, "status", None) or answer.status, answer.template.format(exc), answer.type,
                      code=getattr(exc, "code", None) or answer.code, param=getattr(exc, "param", None) or answer.param,
                      index=getattr(exc, "index", None), headers=headers or None)
