"""Exceptions users can catch. Messages name the input (index, path) and, where there is one, the fix."""

from __future__ import annotations


def first_line(exc: BaseException, default: str | None = None) -> str:
    """The first line of an exception's message (libraries put tracebacks and hints below it).

    An empty message gives `default`, or the exception's type name when no default is given.
    """
    text = str(exc).strip()
    if text:
        return text.splitlines()[0]
    return type(exc).__name__ if default is None else default


class FastClipError(Exception):
    """Base class of every error fastclip raises on purpose."""


class ModelError(FastClipError):
    """The model folder or repo is missing, corrupt, inconsistent or from a newer format."""


class ImageError(FastClipError):
    """An image could not be read or decoded. `index` and `source` say which one."""

    def __init__(self, index: int, source: str, reason: str):
        self.index = index
        self.source = source
        self.reason = reason
        super().__init__(f"image #{index} ({source}): {reason}")

    def __reduce__(self):  # crosses process boundaries (the pool, Ray) with its fields intact
        return type(self), (self.index, self.source, self.reason)


class ImageTypeError(ImageError, TypeError):
    """An input is not of a type `embed` can read (None, an int...). An ImageError, so errors="skip"
    yields None for it like for any unreadable image; a TypeError, since that is what it is."""


class TextError(FastClipError):
    """A text could not be tokenized as asked (e.g. too long with truncate=False)."""

    def __init__(self, index: int, reason: str):
        self.index = index
        self.reason = reason
        super().__init__(f"text #{index}: {reason}")

    def __reduce__(self):
        return type(self), (self.index, self.reason)


class TextTypeError(TextError, TypeError):
    """An input is not a str. A TextError, so batch calls report it per text; a TypeError, since that is
    what it is."""


class WorkerError(FastClipError):
    """A worker process died (killed, crashed), could not start, or raised what cannot cross processes.
    `pid` and `inputs` (first and last input index it held) say which and what."""

    def __init__(self, message: str, pid: int | None = None, inputs: tuple[int, int] | None = None):
        self.pid = pid
        self.inputs = inputs
        super().__init__(message)

    def __reduce__(self):
        return type(self), (str(self), self.pid, self.inputs)


class ExportError(FastClipError):
    """The export failed: unknown model, no network, not a CLIP checkpoint, or parity not reached."""


class OutputError(FastClipError):
    """An embeddings output file cannot be written, resumed or read back (see fastclip.sinks)."""
