"""Errors the engine raises on bad input; each message says what is wrong and what to do."""


class CBIRError(Exception):
    """Base class: a problem the user can fix, reported as one line."""


class UnknownNameError(CBIRError, ValueError):
    """An unknown model, metric or fusion method."""


class CollectionError(CBIRError):
    """A missing folder, an empty collection, missing labels, an unknown image id."""


class ImageError(CBIRError):
    """An image that cannot be decoded, is truncated or is too large.

    ``kind`` is one of "empty", "not_image", "corrupt", "too_large", "missing".
    """

    def __init__(self, message: str, kind: str = "corrupt"):
        super().__init__(message)
        self.kind = kind


class WeightsUnavailableError(CBIRError):
    """Model weights that are not on disk and cannot be downloaded."""


class StoreError(CBIRError):
    """A feature store that does not exist or does not match."""


def unknown(kind: str, name: object, valid) -> UnknownNameError:
    return UnknownNameError(f"unknown {kind} {name!r}; choose one of: {', '.join(sorted(valid))}")
