"""The public names of :mod:`cbir.auth`, kept importable from their former home (code in
this repository imports them from ``cbir.auth.*``)."""

from .auth.bootstrap import DEMO_USERS, bootstrap, check_production_settings, secret_problems
from .auth.errors import AuthError, ConfigError, LockedError, UserError
from .auth.passwords import MAX_PASSWORD_BYTES, MIN_PASSWORD, check_password_policy, hash_password, password_problem
from .auth.records import ROLES, USERNAME_RE, User
from .auth.users import UserStore

__all__ = [
    "DEMO_USERS", "MAX_PASSWORD_BYTES", "MIN_PASSWORD", "ROLES", "USERNAME_RE", "AuthError", "ConfigError", "LockedError",
    "User", "UserError", "UserStore", "bootstrap", "check_password_policy", "check_production_settings", "hash_password",
    "password_problem", "secret_problems",
]
