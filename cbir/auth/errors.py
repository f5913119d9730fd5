"""The errors of users and logins (each carries its HTTP status, see cbir.errors)."""

from __future__ import annotations

from ..errors import CBIRError


class AuthError(CBIRError):
    """Wrong username or password (never says which)."""

    http_status = 401


class LockedError(AuthError):
    """Too many failed logins for a username: locked for ``seconds`` more (HTTP 429)."""

    http_status = 429

    def __init__(self, username: str, seconds: int):
        self.seconds = seconds
        super().__init__(
            f"too many failed logins for {username!r}: try again in {max(1, seconds // 60)} minute(s)"
        )


class UserError(CBIRError):
    """Invalid user data, a duplicate or missing user."""


class ConfigError(CBIRError):
    """Start-up refused: secrets missing outside demo mode."""
