"""API bearer tokens: random (32 bytes, URL-safe), stored hashed (SHA-256) in Redis with
the user's identity and credential version (``uid:cred:username``) and a sliding expiry
of ``token_ttl`` seconds; a reset, role change or re-creation kills them at once."""

from __future__ import annotations

import hashlib
import secrets
import time

from ..redisdb import KEY_PREFIX as P, REDIS_DOWN, ServiceUnavailable
from .base import RedisBacked
from ..errors import AuthError
from .records import User, user_from

# One round trip per API request: look the token up, check it was issued for this very
# user (uid) and credentials (cred), and only then slide its expiry and return the user.
_TOKEN_LUA = """
local value = redis.call('GET', KEYS[1])
if not value then return nil end
local uid, cred, username = string.match(value, '^([^:]*):([^:]*):(.*)$')
if not username then return nil end
local user = redis.call('HGETALL', ARGV[2] .. username)
if #user == 0 then return nil end
local fields = {}
for i = 1, #user, 2 do fields[user[i]] = user[i + 1] end
if fields['uid'] ~= uid or fields['cred'] ~= cred then return nil end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return user
"""


class Tokens(RedisBacked):
    """Mixed into UserStore, which sets ``token_ttl`` and ``_recent`` and provides ``binding``."""

    token_ttl: int
    _recent: dict[str, tuple[User, float]]

    @staticmethod
    def _token_key(token: str) -> str:
        return f"{P}token:" + hashlib.sha256(token.encode()).hexdigest()

    def issue_token(self, username: str) -> str:
        """A bearer token valid while the user's identity and credentials stay the same."""
        found = self.binding(username)
        if found is None:
            raise AuthError("wrong username or password")
        uid, cred, _ = found
        token = secrets.token_urlsafe(32)
        self._call(self.r.set, self._token_key(token), f"{uid}:{cred}:{username}", ex=self.token_ttl)
        return token

    def user_for_token(self, token: str) -> User | None:
        """The token's user, sliding its expiry; None when unknown or expired.

        Tokens seen recently are remembered in this process, so that a client already
        logged in keeps searching while Redis is briefly away.
        """
        key = self._token_key(token)
        try:
            found = self.r.eval(_TOKEN_LUA, 1, key, self.token_ttl, f"{P}user:")
            user = user_from(dict(zip(found[::2], found[1::2]))) if found else None
        except (REDIS_DOWN + (ServiceUnavailable,)) as exc:
            known = self._recent.get(key)
            if known and known[1] > time.time():
                self._recent[key] = (known[0], time.time() + self.token_ttl)
                return known[0]
            raise ServiceUnavailable() from exc
        if user is None:
            self._recent.pop(key, None)
        else:
            self._recent[key] = (user, time.time() + self.token_ttl)
            if len(self._recent) > 10_000:
                self._recent.pop(next(iter(self._recent)))
        return user

    def revoke_token(self, token: str) -> bool:
        self._recent.pop(self._token_key(token), None)
        return bool(self._call(self.r.delete, self._token_key(token)))
