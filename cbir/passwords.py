"""The password policy, below the settings (which check the admin password) and the user store."""

from __future__ import annotations

import threading

MIN_PASSWORD = 10
MIN_STRENGTH = 3  # zxcvbn score 0-4: 3 = "safely unguessable" against an offline slow-hash attack
MAX_PASSWORD_BYTES = 72  # bcrypt's limit

_zxcvbn_lock = threading.Lock()  # zxcvbn keeps the user inputs in a module-level dict


def password_problem(password: str, username: str = "") -> str | None:
    """Why ``password`` is refused (length >= 10, not the username, zxcvbn score >= 3), or None."""
    password = password or ""
    if len(password) < MIN_PASSWORD:
        return f"password must have at least {MIN_PASSWORD} characters"
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        return f"password must be at most {MAX_PASSWORD_BYTES} bytes (bcrypt's limit)"
    if username and password.strip().lower() == username.strip().lower():
        return "password must not be the username"
    from zxcvbn import zxcvbn

    with _zxcvbn_lock:
        result = zxcvbn(password, user_inputs=[username] if username else [])
    if result["score"] < MIN_STRENGTH:
        hint = result["feedback"].get("warning") or "it is easy to guess"
        tips = " ".join(result["feedback"].get("suggestions") or [])
        return f"password too weak: {hint.rstrip('.')}. {tips or 'Use a longer phrase of uncommon words.'}".strip()
    return None
