"""Request bodies in, checked requests out: field validation, image strings to bytes, URL fetching.

Every image reaches the model as bytes. A string is never passed on as it is: the runtime reads a str as a
file path, and a path named by a caller would let any caller read the server's files.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

from ..defaults import ERRORS
from .limits import Limits, TooLarge

__all__ = ["BadRequest", "InputError", "EmbeddingsRequest", "ClassifyRequest", "parse_embeddings",
           "parse_classify", "image_bytes", "fetch_url"]

MODALITIES = ("text", "image")
ENCODINGS = ("float", "base64")
_DATA_URI = re.compile(r"data:([\w.+-]+/[\w.+-]+)?((?:;[\w.+-]+=[\w.+-]+)*);base64,", re.ASCII)
_WHITESPACE = re.compile(r"\s")
MAX_TEMPLATE_CHARS = 1000


class BadRequest(Exception):
    """400 (or `status`): the request as a whole is wrong. `param` names the field."""

    def __init__(self, message: str, *, param: str | None = None, code: str = "invalid_request", status: int = 400):
        super().__init__(message)
        self.message, self.param, self.code, self.status = message, param, code, status


class InputError(Exception):
    """One input cannot be embedded: 400 naming its index, or with errors="skip" a null row with the reason."""

    def __init__(self, index: int, reason: str):
        super().__init__(f"input {index}: {reason}")
        self.index, self.reason = index, reason


@dataclass(frozen=True)
class EmbeddingsRequest:
    model: str | None
    inputs: list[Any]
    modality: str
    encoding_format: str
    errors: str
    dimensions: int | None


@dataclass(frozen=True)
class ClassifyRequest:
    model: str | None
    inputs: list[Any]
    labels: list[str]
    template: str
    errors: str


def _choice(payload: dict, name: str, choices: tuple[str, ...], default: str) -> str:
    value = payload.get(name, default)
    if value is None:
        return default
    if value not in choices:
        raise BadRequest(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r:.60}", param=name)
    return value


def _model(payload: dict) -> str | None:
    model = payload.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest("model must be a string", param="model")
    return model


def _inputs(payload: dict, limits: Limits) -> list[Any]:
    if "input" not in payload:
        raise BadRequest("input is required: a string or a list of strings", param="input")
    value = payload["input"]
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise BadRequest("input must be a string or a list of strings", param="input")
    if not items:
        raise BadRequest("input is an empty list", param="input")
    if len(items) > limits.max_inputs:
        raise TooLarge(f"{len(items)} inputs in one request; the limit is {limits.max_inputs} (--max-inputs)")
    return items


def _object(payload: Any) -> dict:
    if not isinstance(payload, dict):
        raise BadRequest("the request body must be a JSON object")
    return payload


def parse_embeddings(payload: Any, limits: Limits) -> EmbeddingsRequest:
    payload = _object(payload)
    dimensions = payload.get("dimensions")
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int)):
        raise BadRequest("dimensions must be an integer", param="dimensions")
    return EmbeddingsRequest(
        model=_model(payload), inputs=_inputs(payload, limits),
        modality=_choice(payload, "modality", MODALITIES, "text"),
        encoding_format=_choice(payload, "encoding_format", ENCODINGS, "float"),
        errors=_choice(payload, "errors", ERRORS, "raise"), dimensions=dimensions,
    )


def parse_classify(payload: Any, limits: Limits) -> ClassifyRequest:
    payload = _object(payload)
    labels = payload.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise BadRequest("labels must be a non-empty list of strings", param="labels")
    if len(labels) > limits.max_labels:
        raise TooLarge(f"{len(labels)} labels in one request; the limit is {limits.max_labels} (--max-labels)")
    if len(set(labels)) != len(labels):
        raise BadRequest("labels must be distinct", param="labels")
    template = payload.get("template", "a photo of a {}.")
    # str.format with a caller's format string can build arbitrarily large strings ("{:>999999999}") or
    # read attributes ("{0.__class__}"): only one plain "{}" placeholder is accepted.
    if (not isinstance(template, str) or len(template) > MAX_TEMPLATE_CHARS or template.count("{}") != 1
            or template.replace("{}", "").count("{") or template.replace("{}", "").count("}")):
        raise BadRequest('template must be a string with exactly one "{}" and no other braces', param="template")
    return ClassifyRequest(model=_model(payload), inputs=_inputs(payload, limits), labels=labels,
                           template=template, errors=_choice(payload, "errors", ERRORS, "raise"))


def is_url(value: str) -> bool:
    head = value[:8].lower()
    return head.startswith("http://") or head.startswith("https://")


def image_bytes(value: Any, index: int, limits: Limits) -> bytes | str:
    """The image bytes of a data URI or bare base64 string, or the URL itself (fetched by `fetch_url`)."""
    if not isinstance(value, str):
        raise InputError(index, f"expected a string (data URI, base64 or URL), got {type(value).__name__}")
    if is_url(value):
        if not limits.allow_urls:
            raise InputError(index, "image URLs are not fetched by this server (start it with --allow-urls); "
                                    "send the image as a data URI or base64")
        return value
    data = value
    if value[:5].lower() == "data:":
        match = _DATA_URI.match(value)
        if not match:
            raise InputError(index, "a data URI must be base64: data:image/jpeg;base64,...")
        data = value[match.end():]
    if _WHITESPACE.search(data):  # base64 wrapped at 76 columns is common
        data = _WHITESPACE.sub("", data)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(index, "not valid base64 (send a data URI, bare base64 or, with --allow-urls, a URL)") from None
    if not raw:
        raise InputError(index, "empty image")
    return raw


async def fetch_url(client, url: str, index: int, limits: Limits) -> bytes:
    """GET one image URL with the size and time limits; any failure is this input's error."""
    import anyio
    import httpx

    try:
        with anyio.fail_after(limits.url_timeout):
            async with client.stream("GET", url) as response:
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
