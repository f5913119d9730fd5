"""Start-up: the demo accounts in demo mode, otherwise an admin from CBIR_ADMIN_PASSWORD,
and the refusal of placeholder secrets (:func:`check_production_settings`)."""

from __future__ import annotations

from ..config import PLACEHOLDER_SECRETS, Settings
from .errors import ConfigError, UserError
from .passwords import password_problem
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
    check_production_settings(settings)  # in demo mode too: a published secret is refused
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


def secret_problems(settings: Settings) -> list[str]:
    """A CBIR_SECRET_KEY that is set must be long and must not be a published placeholder."""
    key = settings.secret_key
    if key is not None and (key in PLACEHOLDER_SECRETS or len(key) < 16):
        return ["CBIR_SECRET_KEY is a published placeholder or under 16 characters: unset it "
                "(a random secret is then kept in var/secret_key) or set a long random string"]
    return []


def check_production_settings(settings: Settings) -> None:
    if settings.demo:
        problems = secret_problems(settings)
        if problems:
            raise ConfigError(problems[0])
        return
    problems = []
    if not settings.admin_password:
        problems.append("set CBIR_ADMIN_PASSWORD")
    else:
        weak = password_problem(settings.admin_password, "admin")
        if weak:
            problems.append(f"CBIR_ADMIN_PASSWORD: {weak}")
    problems += secret_problems(settings)
    if problems:
        raise ConfigError("demo mode is off: " + "; ".join(problems) + " (or set CBIR_DEMO=1 for a demo)")
