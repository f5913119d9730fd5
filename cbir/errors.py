"""Errors the engine raises on bad input; each message says what is wrong and what to do.

One error contract: :data:`CONTRACTS` maps each error class to what every front end makes
of it (:class:`ErrorContract`: the API's HTTP status, the CLI's exit code, the app's message
level), and :func:`contract_for` looks an exception up along its class's MRO. Anything not
in the table is unexpected: a 500, exit code 1, an "Unexpected problem" message. This module
imports nothing from ``cbir``, so every module may raise these classes.
"""

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# -- the CLI's exit codes ----------------------------------------------------------------------
EXIT_OK = 0
EXIT_UNEXPECTED = 1  # a bug or an error no class of this module describes (Python's traceback)
EXIT_BAD_INPUT = 2  # the user can fix it: an argument, a file, the collection, the settings (as argparse's usage errors)
EXIT_UNAVAILABLE = 3  # a service (Redis) is away or busy: try again later
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)


Front = Literal["cli", "api", "app"]


@dataclass(frozen=True)
class Remedy:
    """What to do about an error, said by each front end in its own words: the CLI names a
    flag or a command, the API a JSON field or a route, the app a control or a page (the app
    said "use --backend exact" and "run cbir index --model imported:half")."""

    cli: str
    api: str
    app: str

    def said_to(self, front: Front) -> str:
        return getattr(self, front)


#: A setting a remedy may ask to change: (the CLI's flag, the API's field, the app's control).
SETTINGS = {
    "backend": ("--backend", "backend", "the Index box"),
    "metric": ("--metric", "metric", "the Metric box"),
}


def use_setting(setting: str, value: str, shown: str | None = None) -> Remedy:
    """Change ``setting`` to ``value`` (``shown``: the value's label in the app's menu)."""
    flag, field, control = SETTINGS[setting]
    return Remedy(f"use {flag} {value}", f'send "{field}": "{value}"', f"choose {shown or value} in {control}")


def index_model(model: str, label: str | None = None) -> Remedy:
    """Extract ``model``'s features for the collection."""
    return Remedy(f"run `cbir index --model {model}`", f"index {model} first (`cbir index --model {model}` on the server)",
                  f"index {label or model} on the Collection page")


def import_again(name: str) -> Remedy:
    """Import the imported model ``name``'s features again, over the old ones."""
    return Remedy(f"import its features again (`cbir import-features FILE --name {name} --replace`)",
                  f"import its features again (POST /api/import_features with name={name} and replace=true)",
                  f"import its features again on the Collection page (name {name}, Replace)")


class CBIRError(Exception):
    """Base class: a problem the user can fix, reported as one line.

    What each front end makes of it is in :data:`CONTRACTS`; ``http_status`` reads it. A
    :class:`Remedy` (``remedy=``) ends the message in each front end's words (:meth:`said_to`);
    ``str()`` gives the CLI's."""

    def __init__(self, *args, remedy: Remedy | None = None):
        super().__init__(*args)
        self.remedy = remedy

    def __str__(self) -> str:
        return self.said_to("cli")

    def said_to(self, front: Front) -> str:
        """The message with the remedy in ``front``'s words ("cli", "api" or "app")."""
        base = super().__str__()
        remedy = getattr(self, "remedy", None)
        return base if remedy is None else f"{base}; {remedy.said_to(front)}"

    @property
    def http_status(self) -> int:
        """The API's status for this error (from the contract table)."""
        return contract_for(self).status


def said_to(exc: BaseException, front: Front) -> str:
    """Any exception's message in ``front``'s words (a :class:`CBIRError`'s remedy included)."""
    return exc.said_to(front) if isinstance(exc, CBIRError) else str(exc)


class UnknownNameError(CBIRError, ValueError):
    """An unknown model, metric or fusion method."""


class CollectionError(CBIRError):
    """A missing folder, an empty collection, missing labels, an unknown image id."""


class ForbiddenError(CBIRError):
    """An action the user's role or the server's settings do not allow (HTTP 403)."""


class CollectionExistsError(CollectionError):
    """A collection name that is taken (HTTP 409)."""


class UnknownImageError(CollectionError):
    """An image id that is not in the collection."""


class TooFewImagesError(CollectionError):
    """A collection (or store) with fewer images than a computation needs: a map method's own
    minimum number of points, checked before any work."""


class ImageError(CBIRError):
    """An image that cannot be decoded, is truncated or is too large.

    ``kind`` is one of "empty", "not_image", "corrupt", "too_large", "missing"; the contract
    table may give a kind its own status.
    """

    def __init__(self, message: str, kind: str = "corrupt"):
        super().__init__(message)
        self.kind = kind


class WeightsUnavailableError(CBIRError):
    """Model weights that are not on disk and cannot be downloaded."""


class WeightsFileError(WeightsUnavailableError, ValueError):
    """A weights file that is not one this reader can load (not PyTorch, truncated, big-endian)."""


class MetricError(CBIRError, ValueError):
    """Features a metric cannot use: the wrong shape or width, not numeric, negative values
    for a histogram metric, NaN or infinity."""


class MalformedInputError(CBIRError, ValueError):
    """A request value whose structure is refused before it is read (JSON nested too deep)."""


class RequestError(CBIRError, ValueError):
    """A search request with a value out of its bounds or a missing part (top k, depth, the
    number of models, the query): what :func:`cbir.request.parse_search` refuses (HTTP 422)."""


class StoreError(CBIRError):
    """A feature store that does not exist or does not match."""


def unknown(kind: str, name: object, valid) -> UnknownNameError:
    shown = str(name) if len(str(name)) <= 80 else f"{str(name)[:80]}… ({len(str(name)):,} characters)"
    return UnknownNameError(f"unknown {kind} {shown!r}; choose one of: {', '.join(sorted(valid))}")


class WorkLimitError(CBIRError):
    """A request whose work is over a configured bound (a weight sweep too fine for the collection)."""


class BusyError(CBIRError):
    """The user already runs as many long jobs as allowed; ``retry_after`` seconds to wait."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class Cancelled(CBIRError):
    """A long job stopped between two steps: its client went away or the server is stopping."""


class ServiceUnavailable(CBIRError):
    """Redis is unreachable: say so instead of failing with a stack trace (``cbir.redisdb``)."""

    def __init__(self, what: str = "the user store"):
        super().__init__(f"{what} is unavailable (Redis unreachable); try again in a moment")


class AuthError(CBIRError):
    """Wrong username or password (never says which) (``cbir.users``)."""


class AccountDisabledError(AuthError):
    """The right password of a user an admin disabled (``cbir.auth``): said, since the caller
    knows the password."""


class LockedError(AuthError):
    """A user locked out after too many failed logins, for ``seconds`` (``cbir.users``)."""

    def __init__(self, username: str, seconds: int):
        self.seconds = seconds
        super().__init__(
            f"too many failed logins for {username!r}: try again in {max(1, seconds // 60)} minute(s)"
        )

    @property
    def retry_after(self) -> int:
        return self.seconds


class UserError(CBIRError):
    """Invalid user data, a duplicate or missing user (``cbir.users``)."""


class ConfigError(CBIRError):
    """Settings refused: secrets missing outside demo mode, a value out of range (``cbir.config``)."""


class FeatureImportError(CBIRError):
    """A features file that cannot become a store: unreadable, wrong shape, NaN, no match (``cbir.importing``)."""


class ImportLimitError(FeatureImportError):
    """A features file over a limit (rows, dimension, decoded bytes), known before decoding."""


class ImportConflictError(FeatureImportError):
    """An imported model that exists (import it with replace to overwrite it)."""


class ImportForbiddenError(ImportConflictError):
    """An imported model that belongs to someone else: only its owner or an admin may replace it."""


# -- the contract --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ErrorContract:
    """What the front ends make of an error: the API's HTTP ``status`` (with ``{"error": ...}``,
    Retry-After when the error has ``retry_after``, WWW-Authenticate on 401), the CLI's
    ``exit_code`` (one line on stderr) and the app's ``level`` (``st.error`` or ``st.warning``)."""

    status: int
    exit_code: int = EXIT_BAD_INPUT
    level: Literal["error", "warning"] = "error"


#: An error that is not in the table: a bug, reported without its details.
UNEXPECTED = ErrorContract(500, EXIT_UNEXPECTED, "error")

#: Error class (or (class, kind) for :class:`ImageError`) -> contract; a class not listed
#: takes its nearest listed base class's.
CONTRACTS: dict[type | tuple[type, str], ErrorContract] = {
    CBIRError: ErrorContract(400),
    UnknownNameError: ErrorContract(422),
    RequestError: ErrorContract(422),
    UnknownImageError: ErrorContract(404),
    CollectionExistsError: ErrorContract(409),
    ForbiddenError: ErrorContract(403),
    (ImageError, "not_image"): ErrorContract(415),
    (ImageError, "too_large"): ErrorContract(413),
    (ImageError, "missing"): ErrorContract(404),
    WorkLimitError: ErrorContract(422),
    TooFewImagesError: ErrorContract(422),
    ImportLimitError: ErrorContract(413),
    ImportConflictError: ErrorContract(409),
    ImportForbiddenError: ErrorContract(403),
    AuthError: ErrorContract(401),
    LockedError: ErrorContract(429, EXIT_UNAVAILABLE),
    BusyError: ErrorContract(429, EXIT_UNAVAILABLE),
    Cancelled: ErrorContract(503, EXIT_UNAVAILABLE),
    ServiceUnavailable: ErrorContract(503, EXIT_UNAVAILABLE, "warning"),
}


def contract_for(exc: BaseException) -> ErrorContract:
    """The contract of ``exc``: its class's entry (its kind's first), else its nearest base
    class's along the MRO, else :data:`UNEXPECTED`."""
    kind = getattr(exc, "kind", None)
    for cls in type(exc).__mro__:
        found = CONTRACTS.get((cls, kind)) or CONTRACTS.get(cls)
        if found is not None:
            return found
    return UNEXPECTED


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


def safe_text(text: str) -> str:
    """``text`` with every byte that was not UTF-8 (a lone surrogate from ``os.fsdecode``)
    written ``%XX``: printable, JSON- and CSV-safe. ``caf\\udce9`` -> ``caf%E9``."""
    return _UNDECODED.sub(lambda m: f"%{ord(m.group()) - 0xDC00:02X}", text)


_UNDECODED = re.compile("[\udc80-\udcff]")
