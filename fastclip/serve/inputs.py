"""Request bodies in, checked requests out: field validation, what each input is, image strings to bytes.

Every image reaches the model as bytes. A string is never passed on as it is: the runtime reads a str as a
file path, and a path named by a caller would let any caller read the server's files.

With no "modality" field each input says what it is (`modality_of`): a data:image/... URI is an image,
anything else a text, except what could be either and is refused naming its index, never embedded as a
text by guess: a data: URI of another type, an http(s) URL, and a bare base64 payload (OpenAI's clients
send images as data URIs; a base64 image without its prefix would otherwise become a text vector).
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
           "parse_classify", "modality_of", "image_bytes", "is_url"]

MODALITIES = ("text", "image")
ENCODINGS = ("float", "base64")
_DATA_URI = re.compile(r"data:([\w.+-]+/[\w.+-]+)?((?:;[\w.+-]+=[\w.+-]+)*);base64,", re.ASCII)
_WHITESPACE = re.compile(r"\s")
# A bare base64 payload: 64 or more base64 characters and nothing else (line breaks aside, as base64 is often
# wrapped). No sentence looks like that, and the smallest image the runtime decodes (a 1x1 PNG, 67 bytes) is
# 92 characters of base64.
_BARE_BASE64 = re.compile(r"[A-Za-z0-9+/]{64,}={0,2}", re.ASCII)
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
    modality: str | None  # None: each input says what it is (modality_of)
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


def _choice(payload: dict, name: str, choices: tuple[str, ...], default: str | None) -> str | None:
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
        modality=_choice(payload, "modality", MODALITIES, None),
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


def modality_of(value: Any, index: int) -> str:
    """"image" or "text" for an input of a request that names no modality; InputError when it cannot be told."""
    if not isinstance(value, str):
        raise InputError(index, f"expected a string (a text or a data:image/... URI), got {type(value).__name__}")
    if value[:5].lower() == "data:":
        media = value[5:300].partition(",")[0].partition(";")[0].strip().lower()  # "data:image/png;base64,..."
        if media.startswith("image/"):
            return "image"
        raise _unsure(index, f"a data: URI of type {media or 'unknown'!r}, not image/...")
    if is_url(value) and not _WHITESPACE.search(value):
        raise _unsure(index, "an http(s) URL: an image to fetch, or a text?")
    if len(value) >= 64 and _BARE_BASE64.fullmatch(value.replace("\n", "").replace("\r", "")):
        raise _unsure(index, "base64 data without a data: prefix (an image sent bare?)")
    return "text"


def _unsure(index: int, what: str) -> InputError:
    return InputError(index, f'{what}: send an image as data:image/jpeg;base64,..., or name what every input is '
                             'with "modality": "image" or "text"')


def image_bytes(value: Any, index: int, limits: Limits) -> bytes | str:
    """The image bytes of a data URI or bare base64 string, or the URL itself (fetched by urls.UrlFetcher)."""
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
