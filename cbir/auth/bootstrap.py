"""Start-up: the demo accounts in demo mode, otherwise an admin from CBIR_ADMIN_PASSWORD,
after the settings pass :class:`cbir.config.ServerSettings` (placeholder secrets refused)."""

from __future__ import annotations

from ..config import Settings, server_settings
from ..errors import UserError
from .users import UserStore

DEMO_USERS = (
    # username, password, role, display name
    ("admin", "password123", "admin", "Admin"),
    ("researcher", "umons2024", "researcher", "Researcher"),
    ("student", "multimedia", "student", "Student"),
    ("user1", "demo123", "demo", "Demo User"),
)


def bootstrap(store: UserStore, settings: Settings) -> list[str]:
    """Demo users in demo mode; outside it, refuse placeholder secrets and ensure an admin."""
    created = []
    server_settings(settings)  # refused settings raise ConfigError, in demo mode too (a published secret)
    if settings.demo:
        wanted = [(u, p, r, n) for u, p, r, n in DEMO_USERS]
    else:
        wanted = [("admin", settings.admin_password, "admin", "Admin")]
    for username, password, role, name in wanted:
        if store.exists(username):
            continue
        try:
            # the demo accounts' passwords are published: exempt from the policy, demo mode only
            store.create(username, password, role, name, actor="bootstrap", policy=not settings.demo)
            created.append(username)
        except UserError:
            pass  # created meanwhile by a sibling process (app and API workers start together)
    return created
