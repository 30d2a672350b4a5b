"""Authentication: bearer tokens, HTTP Basic, browser sessions and logins, with a lockout
after repeated failures per account and per address."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from datetime import timedelta

from pacs.config import Settings
from pacs.errors import NotAuthenticated, TooManyAttempts
from pacs.index.accounts import AccountRepository, Token, User, utcnow
from pacs.security.credentials import SESSION_PREFIX, new_secret, secret_hash, verify_password
from pacs.security.principal import Principal
from pacs.security.roles import Role, parse_scopes, user_permissions

# A verified credential is trusted this long before the database is asked again: revoking a
# token or disabling a user takes effect within this time in other processes (at once in this one).
CACHE_SECONDS = 5.0
# argon2 is slow on purpose and Basic clients send the password with every request: one
# verification per client and cache period, like a token lookup.
BASIC_CACHE_SECONDS = CACHE_SECONDS
_CACHE_LIMIT = 10_000
# Sessions are extended on use, at most this often.
_SESSION_EXTEND_STEP = timedelta(minutes=5)
ADDRESS_FAILURE_FACTOR = 4  # an address may fail for several accounts before it is locked out
NO_STUDIES = "\x01"  # a referring physician no study can name


class Authenticator:
    def __init__(self, repository: AccountRepository, settings: Settings) -> None:
        self.repository = repository
        self.session_lifetime = timedelta(hours=settings.session_hours)
        self.max_failures = settings.login_max_failures
        self.lockout = timedelta(minutes=settings.login_lockout_minutes)
        self._cache: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    def cached(self, key: str) -> Principal | None:
        with self._lock:
            hit = self._cache.get(key)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def _remember(self, key: str, principal: Principal, seconds: float) -> None:
        with self._lock:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = (time.monotonic() + seconds, principal)

    # ---- credentials on requests ------------------------------------------------------------

    def bearer(self, secret: str, address: str) -> Principal:
        key = "t:" + secret_hash(secret)
        principal = self.cached(key)
        if principal is None:
            token = self.repository.token_by_hash(key[2:])
            if token is None or token.kind != "api" or not token.usable:
                raise NotAuthenticated("the token is unknown, expired or revoked")
            principal = _principal(token.user, token.scopes, via="bearer")
            self._remember(key, principal, CACHE_SECONDS)
        return principal.at(address)

    def session(self, secret: str, address: str) -> Principal:
        key = "s:" + secret_hash(secret)
        principal = self.cached(key)
        if principal is None:
            token = self.repository.token_by_hash(key[2:])
            if token is None or token.kind != "session" or not token.usable:
                raise NotAuthenticated("the session has ended; log in again")
            self._extend(token, key[2:])
            principal = _principal(token.user, "", via="session")
            self._remember(key, principal, CACHE_SECONDS)
        return principal.at(address)

    def basic(self, username: str, password: str, address: str) -> Principal:
        key = "b:" + hashlib.sha256(f"{username}\0{password}".encode()).hexdigest()
        principal = self.cached(key)
        if principal is None:
            user = self.check_password(username, password, address)
            principal = _principal(user, "", via="basic")
            self._remember(key, principal, BASIC_CACHE_SECONDS)
        return principal.at(address)

    # ---- logins -----------------------------------------------------------------------------

    def check_password(self, username: str, password: str, address: str) -> User:
        """The user, if the password is right and neither the account nor the address is
        locked out; NotAuthenticated (TooManyAttempts when locked) otherwise."""
        subjects = [f"user:{username.lower()}"[:128], f"address:{address}"[:128]]
        self._check_lockout(subjects[0], self.max_failures)
        self._check_lockout(subjects[1], self.max_failures * ADDRESS_FAILURE_FACTOR)
        user = self.repository.find_user(username)
        valid = verify_password(user.password_hash if user else None, password)
        if user is None or not valid or user.disabled:
            self.repository.record_failures(subjects, self.lockout)
            raise NotAuthenticated("wrong user name or password, or the account is disabled")
        self.repository.clear_failures(subjects[0])
        return user

    def login(self, username: str, password: str, address: str) -> tuple[str, Principal]:
        """Open a browser session: its secret (for the cookie) and who it is for."""
        user = self.check_password(username, password, address)
        secret = new_secret(SESSION_PREFIX)
        self.repository.add_token(
            user, secret_hash(secret), kind="session", label="browser session", scopes="",
            expires_at=utcnow() + self.session_lifetime,
        )
        return secret, _principal(user, "", via="session").at(address)

    def logout(self, secret: str) -> None:
        token_hash = secret_hash(secret)
        self.repository.revoke_by_hash(token_hash)
        with self._lock:
            self._cache.pop("s:" + token_hash, None)

    def _check_lockout(self, subject: str, limit: int) -> None:
        failures = self.repository.recent_failures(subject, self.lockout)
        if len(failures) >= limit:
            unlocked_at = failures[-limit] + self.lockout
            wait = max(1, int((unlocked_at - utcnow()).total_seconds()) + 1)
            raise TooManyAttempts(f"too many failed logins; try again in {wait} seconds", retry_after=wait)

    def _extend(self, token: Token, token_hash: str) -> None:
        wanted = utcnow() + self.session_lifetime
        if wanted - token.expires_at >= _SESSION_EXTEND_STEP:
            self.repository.extend_session(token_hash, wanted)


def csrf_token(session_secret: str) -> str:
    """The value a browser must echo in X-CSRF-Token on state-changing requests: derived from
    the session secret, which a page of another site can neither read nor compute."""
    return hmac.new(session_secret.encode(), b"csrf", hashlib.sha256).hexdigest()


def _principal(user: User, scopes: str, *, via: str) -> Principal:
    role = Role(user.role)
    permissions = user_permissions(role, parse_scopes(scopes))
    referred_by = None
    if role == Role.PROVIDER:
        referred_by = user.provider_name or NO_STUDIES  # a provider without a link sees nothing
    return Principal(user.username, "user", role.value, permissions, referred_by=referred_by, via=via)
