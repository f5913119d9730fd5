"""The public names of :mod:`cbir.auth`, kept importable from their former home (code in
this repository imports them from ``cbir.auth.*``)."""

from .auth.bootstrap import DEMO_USERS, bootstrap
from .errors import AuthError, ConfigError, LockedError, UserError
from .auth.passwords import MAX_PASSWORD_BYTES, MIN_PASSWORD, check_password_policy, hash_password, password_problem
from .auth.records import ROLES, USERNAME_RE, User
from .auth.users import UserStore

__all__ = [
    "DEMO_USERS", "MAX_PASSWORD_BYTES", "MIN_PASSWORD", "ROLES", "USERNAME_RE", "AuthError", "ConfigError", "LockedError",
    "User", "UserError", "UserStore", "bootstrap", "check_password_policy", "hash_password",
    "password_problem",
]
