"""Account management: users, passwords, API tokens. Shared by the CLI and the admin API."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from pacs.errors import InvalidInput
from pacs.index.accounts import AccountRepository, Token, User, utcnow
from pacs.security.credentials import (
    MIN_PASSWORD_LENGTH,
    TOKEN_PREFIX,
    hash_password,
    new_secret,
    random_password,
    secret_hash,
)
from pacs.security.principal import normalized_person_name
from pacs.security.roles import Role, parse_role, parse_scopes

_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
FIRST_ADMIN = "admin"


@dataclass(frozen=True)
class IssuedToken:
    pk: int
    secret: str  # shown once; only its hash is kept
    expires_at: datetime


class AccountService:
    def __init__(self, repository: AccountRepository, *, token_days: int) -> None:
        self.repository = repository
        self.token_days = token_days
        self.on_change: list[object] = []  # callables run after a change that may end access

    def ensure_first_admin(self) -> str | None:
        """With no user at all, create `admin` with a random password and return that password
        (the caller shows it once); None when users exist already."""
        password = random_password()
        if self.repository.add_first_user(FIRST_ADMIN, Role.ADMIN, hash_password(password)):
            return password
        return None

    def add_user(self, username: str, role: str, password: str | None = None, provider_name: str | None = None) -> User:
        if not _USERNAME.match(username):
            raise InvalidInput("user names are 1 to 64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit")
        parsed = parse_role(role)
        link = _provider_link(parsed, provider_name)
        # None: a token-only account; an empty password is a too-short one, not "no password".
        return self.repository.add_user(username, parsed, _hashed(password) if password is not None else None, link)

    def set_password(self, username: str, password: str) -> User:
        user = self.repository.update_user(username, password_hash=_hashed(password))
        self.repository.revoke_sessions(user)
        self._changed()
        return user

    def set_role(self, username: str, role: str, provider_name: str | None = None) -> User:
        parsed = parse_role(role)
        current = self.repository.user(username)
        link = _provider_link(parsed, provider_name or current.provider_name)
        user = self.repository.update_user(username, role=parsed.value, provider_name=link)
        self._changed()
        return user

    def set_disabled(self, username: str, disabled: bool) -> User:
        user = self.repository.update_user(username, disabled=disabled)
        if disabled:
            self.repository.revoke_sessions(user)
        self._changed()
        return user

    def issue_token(self, username: str, *, label: str = "", scopes: str = "", days: int | None = None) -> IssuedToken:
        user = self.repository.user(username)
        parsed = parse_scopes(scopes)
        if user.role == Role.INTEGRATION and not parsed:
            raise InvalidInput("integration accounts get only the scopes their token names: give --scope")
        lifetime = days if days is not None else self.token_days
        if lifetime < 1:
            raise InvalidInput("a token must live at least one day")
        secret = new_secret(TOKEN_PREFIX)
        expires_at = utcnow() + timedelta(days=lifetime)
        pk = self.repository.add_token(
            user, secret_hash(secret), kind="api", label=label[:128], scopes=",".join(sorted(parsed)),
            expires_at=expires_at,
        )
        return IssuedToken(pk, secret, expires_at)

    def revoke_token(self, pk: int) -> None:
        self.repository.revoke_token(pk)
        self._changed()

    def tokens(self, username: str | None = None) -> list[Token]:
        return self.repository.tokens(username)

    def users(self) -> list[User]:
        return self.repository.users()

    def _changed(self) -> None:
        for callback in self.on_change:
            callback()  # type: ignore[operator]


def _hashed(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(f"passwords have at least {MIN_PASSWORD_LENGTH} characters")
    return hash_password(password)


def _provider_link(role: Role, provider_name: str | None) -> str | None:
    if role != Role.PROVIDER:
        return None
    link = normalized_person_name(provider_name or "")
    if not link:
        raise InvalidInput(
            "a provider needs the referring physician name that links them to their studies "
            "(DICOM person name, e.g. SMITH^JOHN)"
        )
    return link
