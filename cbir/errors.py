"""Errors the engine raises on bad input; each message says what is wrong and what to do."""

import os
import re
from pathlib import Path


class CBIRError(Exception):
    """Base class: a problem the user can fix, reported as one line.

    ``http_status`` is what the API answers with it (4xx; 503 when a service is away)."""

    http_status = 400


class UnknownNameError(CBIRError, ValueError):
    """An unknown model, metric or fusion method."""

    http_status = 422


class CollectionError(CBIRError):
    """A missing folder, an empty collection, missing labels, an unknown image id."""


class UnknownImageError(CollectionError):
    """An image id that is not in the collection."""

    http_status = 404


class ImageError(CBIRError):
    """An image that cannot be decoded, is truncated or is too large.

    ``kind`` is one of "empty", "not_image", "corrupt", "too_large", "missing".
    """

    STATUS = {"empty": 400, "corrupt": 400, "not_image": 415, "too_large": 413, "missing": 404}

    def __init__(self, message: str, kind: str = "corrupt"):
        super().__init__(message)
        self.kind = kind
        self.http_status = self.STATUS.get(kind, 400)


class WeightsUnavailableError(CBIRError):
    """Model weights that are not on disk and cannot be downloaded."""


class MetricError(CBIRError, ValueError):
    """Features a metric cannot use: negative values for a histogram metric, NaN or infinity."""


class StoreError(CBIRError):
    """A feature store that does not exist or does not match."""


def unknown(kind: str, name: object, valid) -> UnknownNameError:
    return UnknownNameError(f"unknown {kind} {name!r}; choose one of: {', '.join(sorted(valid))}")


class WorkLimitError(CBIRError):
    """A request whose work is over a configured bound (a weight sweep too fine for the collection)."""

    http_status = 422


class BusyError(CBIRError):
    """The user already runs as many long jobs as allowed; ``retry_after`` seconds to wait."""

    http_status = 429

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class Cancelled(CBIRError):
    """A long job stopped between two steps: its client went away or the server is stopping."""

    http_status = 503


# -- what a message may show of the server's files -------------------------------------------
#: An absolute path in a message: starts the message or follows a space, quote or bracket
#: (never a URL's ``//`` or an API route inside a word); ends at a space, quote, bracket,
#: comma, semicolon or colon.
_ABSOLUTE_PATH = re.compile(r"(?<![^\s'\"(\[=])/[^\s'\"()\[\],;:]+")


def public_paths(message: str, root: Path) -> str:
    """``message`` as a non-admin may see it: every absolute path on this server under
    ``root`` (the project) shown relative to it, and any other one as ``…/name``, so that an
    error or a model's status never tells a student how the server's disk is laid out.
    A path is "on this server" when its first folder exists here, so that an API route such
    as ``/api/login`` in a message stays as it is."""
    base = Path(root).resolve()

    def shown(match: re.Match) -> str:
        text = match.group(0)
        end = len(text.rstrip("."))  # a full stop after the path is the sentence's
        path, tail = text[:end], text[end:]
        if not path.strip("/") or not os.path.isdir("/" + path.strip("/").split("/")[0]):
            return text
        try:
            rel = Path(path).relative_to(base)
            return (rel.as_posix() or ".") + tail
        except ValueError:
            return f"…/{Path(path).name}{tail}"

    return _ABSOLUTE_PATH.sub(shown, message)


class ServiceUnavailable(CBIRError):
    """Redis is unreachable: say so instead of failing with a stack trace (HTTP 503).
    Raised wherever Redis is used (connections: cbir.redisdb)."""

    http_status = 503

    def __init__(self, what: str = "the user store"):
        super().__init__(f"{what} is unavailable (Redis unreachable); try again in a moment")
