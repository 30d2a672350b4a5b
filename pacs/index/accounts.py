"""SQL for users, tokens (API tokens and browser sessions) and failed logins."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Select, and_, delete, func, select, update
from sqlalchemy.exc import IntegrityError

from pacs.errors import Conflict, NotFound
from pacs.index.database import read_transaction, write_transaction
from pacs.index.schema import login_failures, tokens, users


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class User:
    pk: int
    username: str
    role: str
    password_hash: str | None
    provider_name: str | None
    disabled: bool
    created_at: datetime


@dataclass(frozen=True)
class Token:
    pk: int
    user: User
    kind: str
    label: str
    scopes: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None

    @property
    def usable(self) -> bool:
        return self.revoked_at is None and self.expires_at > utcnow() and not self.user.disabled


class AccountRepository:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # ---- users ------------------------------------------------------------------------------

    def add_user(self, username: str, role: str, password_hash: str | None, provider_name: str | None) -> User:
        try:
            with write_transaction(self.engine) as conn:
                conn.execute(
                    users.insert().values(
                        username=username, role=role, password_hash=password_hash, provider_name=provider_name
                    )
                )
        except IntegrityError:
            raise Conflict(f"user {username} already exists") from None
        return self.user(username)

    def add_first_user(self, username: str, role: str, password_hash: str) -> bool:
        """Create the user only if there is no user at all; False if someone else was first."""
        try:
            with write_transaction(self.engine) as conn:
                if conn.execute(select(func.count()).select_from(users)).scalar_one():
                    return False
                conn.execute(users.insert().values(username=username, role=role, password_hash=password_hash))
        except IntegrityError:
            return False
        return True

    def find_user(self, username: str) -> User | None:
        with read_transaction(self.engine) as conn:
            row = conn.execute(select(users).where(users.c.username == username)).first()
        return _user(row) if row is not None else None

    def user(self, username: str) -> User:
        found = self.find_user(username)
        if found is None:
            raise NotFound(f"no user {username}")
        return found

    def users(self) -> list[User]:
        with read_transaction(self.engine) as conn:
            return [_user(row) for row in conn.execute(select(users).order_by(users.c.username))]

    def update_user(self, username: str, **values: object) -> User:
        with write_transaction(self.engine) as conn:
            changed = conn.execute(
                update(users).where(users.c.username == username).values(**values, updated_at=utcnow())
            ).rowcount
        if not changed:
            raise NotFound(f"no user {username}")
        return self.user(username)

    # ---- tokens and sessions ----------------------------------------------------------------

    def add_token(
        self, user: User, token_hash: str, *, kind: str, label: str, scopes: str, expires_at: datetime
    ) -> int:
        with write_transaction(self.engine) as conn:
            result = conn.execute(
                tokens.insert().values(
                    token_hash=token_hash,
                    user_pk=user.pk,
                    kind=kind,
                    label=label,
                    scopes=scopes,
                    expires_at=expires_at,
                    created_at=utcnow(),
                )
            )
            assert result.inserted_primary_key is not None
            return int(result.inserted_primary_key[0])

    def token_by_hash(self, token_hash: str) -> Token | None:
        with read_transaction(self.engine) as conn:
            row = conn.execute(_token_select().where(tokens.c.token_hash == token_hash)).first()
        return _token(row) if row is not None else None

    def tokens(self, username: str | None = None, *, kind: str = "api") -> list[Token]:
        stmt = _token_select().where(tokens.c.kind == kind).order_by(tokens.c.pk)
        if username is not None:
            stmt = stmt.where(users.c.username == username)
        with read_transaction(self.engine) as conn:
            return [_token(row) for row in conn.execute(stmt)]

    def revoke_token(self, pk: int) -> None:
        with write_transaction(self.engine) as conn:
            changed = conn.execute(
                update(tokens).where(tokens.c.pk == pk, tokens.c.revoked_at.is_(None)).values(revoked_at=utcnow())
            ).rowcount
        if not changed:
            raise NotFound(f"no active token {pk}")

    def revoke_by_hash(self, token_hash: str) -> None:
        with write_transaction(self.engine) as conn:
            conn.execute(update(tokens).where(tokens.c.token_hash == token_hash).values(revoked_at=utcnow()))

    def revoke_sessions(self, user: User) -> None:
        with write_transaction(self.engine) as conn:
            conn.execute(
                update(tokens)
                .where(tokens.c.user_pk == user.pk, tokens.c.kind == "session", tokens.c.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )

    def extend_session(self, token_hash: str, expires_at: datetime) -> None:
        with write_transaction(self.engine) as conn:
            conn.execute(update(tokens).where(tokens.c.token_hash == token_hash).values(expires_at=expires_at))

    # ---- failed logins ----------------------------------------------------------------------

    def record_failures(self, subjects: list[str], window: timedelta) -> None:
        now = utcnow()
        with write_transaction(self.engine) as conn:
            conn.execute(
                delete(login_failures).where(
                    login_failures.c.subject.in_(subjects), login_failures.c.failed_at < now - window
                )
            )
            conn.execute(login_failures.insert(), [{"subject": s, "failed_at": now} for s in subjects])

    def recent_failures(self, subject: str, window: timedelta) -> list[datetime]:
        since = utcnow() - window
        with read_transaction(self.engine) as conn:
            rows = conn.execute(
                select(login_failures.c.failed_at)
                .where(and_(login_failures.c.subject == subject, login_failures.c.failed_at >= since))
                .order_by(login_failures.c.failed_at)
            )
            return [as_utc(r.failed_at) for r in rows]

    def clear_failures(self, subject: str) -> None:
        with write_transaction(self.engine) as conn:
            conn.execute(delete(login_failures).where(login_failures.c.subject == subject))


def provider_account(provider_name: Any) -> Select[Any]:
    """The enabled provider account linked to a normalised person name (the first by username);
    also used inside the order insert, so a new order is linked without a query of its own."""
    return (
        select(users.c.username)
        .where(users.c.role == "provider", users.c.provider_name == provider_name, users.c.disabled.is_(False))
        .order_by(users.c.username)
        .limit(1)
    )


def _user(row: object) -> User:
    m = row._mapping  # type: ignore[attr-defined]
    return User(
        m["pk"], m["username"], m["role"], m["password_hash"], m["provider_name"], bool(m["disabled"]),
        as_utc(m["created_at"]),
    )


def _token_select():  # type: ignore[no-untyped-def]
    return select(
        tokens.c.pk.label("token_pk"),
        tokens.c.kind,
        tokens.c.label,
        tokens.c.scopes,
        tokens.c.created_at.label("token_created_at"),
        tokens.c.expires_at,
        tokens.c.revoked_at,
        users,
    ).join(users, users.c.pk == tokens.c.user_pk)


def _token(row: object) -> Token:
    m = row._mapping  # type: ignore[attr-defined]
    return Token(
        m["token_pk"],
        _user(row),
        m["kind"],
        m["label"],
        m["scopes"],
        as_utc(m["token_created_at"]),
        as_utc(m["expires_at"]),
        as_utc(m["revoked_at"]) if m["revoked_at"] is not None else None,
    )
