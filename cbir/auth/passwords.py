"""Passwords: bcrypt hashing and the policy check (the policy itself is :mod:`cbir.passwords`),
legacy hashes (``sha256:salt:hex``, plain text) still checked so that they can be rehashed.

bcrypt: Provos & Mazières, "A Future-Adaptable Password Scheme", USENIX 1999; zxcvbn:
Wheeler, "zxcvbn: Low-Budget Password Strength Estimation", USENIX Security 2016."""

from __future__ import annotations

import hashlib
import hmac
import secrets

import bcrypt

from ..errors import UserError
from ..passwords import MAX_PASSWORD_BYTES, MIN_PASSWORD, MIN_STRENGTH, password_problem  # noqa: F401 (the policy)

def check_password_policy(password: str, username: str = "") -> None:
    """Raise UserError saying why ``password`` is refused (see :func:`password_problem`)."""
    problem = password_problem(password, username)
    if problem:
        raise UserError(problem)


_DUMMY_HASH: bytes | None = None


def dummy_check(password: str) -> None:
    """Spend the time a real bcrypt check costs, so an unknown username answers as slowly."""
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds=12))
    bcrypt.checkpw((password or "").encode()[:MAX_PASSWORD_BYTES], _DUMMY_HASH)


def hash_password(password: str) -> str:
    """The bcrypt hash (cost 12, ``$2b$...``) of ``password``; raises UserError over 72 bytes
    or with a NUL character."""
    data = password.encode()
    if len(data) > MAX_PASSWORD_BYTES:
        raise UserError(f"password must be at most {MAX_PASSWORD_BYTES} bytes (bcrypt's limit)")
    if b"\x00" in data:
        raise UserError("password must not contain NUL characters")
    return bcrypt.hashpw(data, bcrypt.gensalt(rounds=12)).decode()


def check_password(stored: str, password: str) -> tuple[bool, bool]:
    """(matches, needs_rehash). Accepts bcrypt, legacy ``sha256:salt:hex`` and plain text."""
    if stored.startswith(("$2a$", "$2b$", "$2y$")):
        try:
            return bcrypt.checkpw(password.encode(), stored.encode()), False
        except ValueError:
            return False, False
    if stored.startswith("sha256:"):
        parts = stored.split(":")
        if len(parts) == 3:
            _, salt, digest = parts
            calc = hashlib.sha256((salt + password).encode()).hexdigest()
            return hmac.compare_digest(calc, digest), True
        return False, False
    return hmac.compare_digest(stored.encode(), password.encode()), True
