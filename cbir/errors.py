"""Errors the engine raises on bad input; each message says what is wrong and what to do."""


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
