"""`minipacs user ...`, `minipacs token ...` and `minipacs audit ...`: accounts and the audit
trail from the command line (the same services as the admin HTTP API)."""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import sys
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from pacs.config import Settings
from pacs.errors import PacsError
from pacs.security.roles import Permission


def add_commands(commands: Any) -> None:
    user = commands.add_parser("user", help="user accounts: add, list, disable, enable, set-password, set-role")
    user.set_defaults(help_parser=user)
    sub = user.add_subparsers(title="user commands", metavar="USER_COMMAND")
    add = sub.add_parser("add", help="add a user (asks for the password unless --no-password)")
    add.add_argument("username")
    add.add_argument("--role", required=True, help="admin, radiologist, technologist, provider or integration")
    add.add_argument("--provider-name", help="providers: their ReferringPhysicianName, e.g. SMITH^JOHN")
    add.add_argument("--no-password", action="store_true", help="token-only account (integration clients)")
    add.set_defaults(handler=cmd_user_add)
    sub.add_parser("list", help="list users").set_defaults(handler=cmd_user_list)
    for name, handler, text in (
        ("disable", cmd_user_disable, "disable a user (ends their sessions; tokens stop working)"),
        ("enable", cmd_user_enable, "enable a disabled user"),
        ("set-password", cmd_user_set_password, "set a user's password (asks for it; ends their sessions)"),
    ):
        parser = sub.add_parser(name, help=text)
        parser.add_argument("username")
        parser.set_defaults(handler=handler)
    role = sub.add_parser("set-role", help="change a user's role")
    role.add_argument("username")
    role.add_argument("role")
    role.add_argument("--provider-name", help="providers: their ReferringPhysicianName")
    role.set_defaults(handler=cmd_user_set_role)

    token = commands.add_parser("token", help="API tokens: create, list, revoke")
    token.set_defaults(help_parser=token)
    sub = token.add_subparsers(title="token commands", metavar="TOKEN_COMMAND")
    create = sub.add_parser("create", help="create an API token for a user (printed once)")
    create.add_argument("username")
    create.add_argument("--label", default="", help="what the token is for")
    create.add_argument("--scope", default="", help=f"comma-separated permissions: {', '.join(Permission)}")
    create.add_argument("--days", type=int, help="lifetime in days (default: MINIPACS_TOKEN_DAYS, 365)")
    create.set_defaults(handler=cmd_token_create)
    listing = sub.add_parser("list", help="list API tokens")
    listing.add_argument("username", nargs="?")
    listing.set_defaults(handler=cmd_token_list)
    revoke = sub.add_parser("revoke", help="revoke an API token by id")
    revoke.add_argument("id", type=int)
    revoke.set_defaults(handler=cmd_token_revoke)

    audit = commands.add_parser("audit", help="the audit trail: search it, purge it")
    audit.set_defaults(help_parser=audit)
    sub = audit.add_subparsers(title="audit commands", metavar="AUDIT_COMMAND")
    search = sub.add_parser("search", help="audit events, newest first")
    search.add_argument("--user", help="user name, or AE:TITLE for a DICOM peer")
    search.add_argument("--patient", help="PatientID")
    search.add_argument("--study", help="StudyInstanceUID")
    search.add_argument("--action", help="search, read, store, delete, export, login, logout, admin, audit")
    search.add_argument("--outcome", help="success, failure, denied, unauthenticated")
    search.add_argument("--since", help="ISO 8601 date or time")
    search.add_argument("--until", help="ISO 8601 date or time")
    search.add_argument("--limit", type=int, default=100)
    search.add_argument("--json", action="store_true", help="one JSON object per line")
    search.set_defaults(handler=cmd_audit_search)
    purge = sub.add_parser("purge", help="delete events older than MINIPACS_AUDIT_RETENTION_DAYS")
    purge.set_defaults(handler=cmd_audit_purge)


@contextlib.contextmanager
def _services(settings: Settings) -> Iterator[Any]:
    from pacs.services import Services

    services = Services.build(settings)
    try:
        yield services
    finally:
        services.close()


def _fail(exc: PacsError) -> int:
    print(f"minipacs: {exc}", file=sys.stderr)
    return 1


def _ask_password() -> str:
    """From MINIPACS_NEW_PASSWORD (scripts), a pipe (one line), or asked twice at a terminal."""
    if os.environ.get("MINIPACS_NEW_PASSWORD"):
        return os.environ["MINIPACS_NEW_PASSWORD"]
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("New password: ")
    if getpass.getpass("Repeat it: ") != first:
        raise SystemExit("minipacs: the passwords differ")
    return first


def _audit_cli(services: Any, operation: str, target: str) -> None:
    from pacs.audit.trail import Action, AuditEvent, Outcome

    actor = f"cli:{getpass.getuser()}"
    services.audit.record(
        AuditEvent.of(None, "cli", Action.ADMIN, Outcome.SUCCESS, actor=actor, detail={"operation": operation, "target": target})
    )


def cmd_user_add(settings: Settings, args: argparse.Namespace) -> int:
    password = None if args.no_password else _ask_password()
    with _services(settings) as services:
        try:
            user = services.accounts.add_user(args.username, args.role, password, args.provider_name)
        except PacsError as exc:
            return _fail(exc)
        _audit_cli(services, "add-user", user.username)
    print(f"added {user.username} ({user.role})")
    return 0


def cmd_user_list(settings: Settings, args: argparse.Namespace) -> int:
    with _services(settings) as services:
        users = services.accounts.users()
    for user in users:
        state = "disabled" if user.disabled else "active"
        link = f"  refers as {user.provider_name}" if user.provider_name else ""
        print(f"{user.username:<24} {user.role:<13} {state}{link}")
    if not users:
        print("no users yet; `minipacs serve` creates the first administrator")
    return 0


def _change(settings: Settings, username: str, operation: str, change: Any, done: str) -> int:
    with _services(settings) as services:
        try:
            change(services.accounts)
        except PacsError as exc:
            return _fail(exc)
        _audit_cli(services, operation, username)
    print(done)
    return 0


def cmd_user_disable(settings: Settings, args: argparse.Namespace) -> int:
    return _change(settings, args.username, "disable-user", lambda a: a.set_disabled(args.username, True), f"disabled {args.username}")


def cmd_user_enable(settings: Settings, args: argparse.Namespace) -> int:
    return _change(settings, args.username, "enable-user", lambda a: a.set_disabled(args.username, False), f"enabled {args.username}")


def cmd_user_set_password(settings: Settings, args: argparse.Namespace) -> int:
    password = _ask_password()
    return _change(
        settings, args.username, "set-password", lambda a: a.set_password(args.username, password),
        f"password of {args.username} changed",
    )


def cmd_user_set_role(settings: Settings, args: argparse.Namespace) -> int:
    return _change(
        settings, args.username, "set-role", lambda a: a.set_role(args.username, args.role, args.provider_name),
        f"{args.username} is now {args.role}",
    )


def cmd_token_create(settings: Settings, args: argparse.Namespace) -> int:
    with _services(settings) as services:
        try:
            issued = services.accounts.issue_token(args.username, label=args.label, scopes=args.scope, days=args.days)
        except PacsError as exc:
            return _fail(exc)
        _audit_cli(services, "add-token", args.username)
    print(issued.secret)
    print(f"token {issued.pk} for {args.username}, valid until {issued.expires_at:%Y-%m-%d}; it is shown only now",
          file=sys.stderr)
    return 0


def cmd_token_list(settings: Settings, args: argparse.Namespace) -> int:
    with _services(settings) as services:
        tokens = services.accounts.tokens(args.username)
    for token in tokens:
        if token.revoked_at:
            state = "revoked"
        elif token.user.disabled:
            state = "disabled"
        else:
            state = "active" if token.usable else "expired"
        print(f"{token.pk:>5}  {token.user.username:<20} {state:<8} until {token.expires_at:%Y-%m-%d}  "
              f"scopes={token.scopes or '(role)'}  {token.label}")
    return 0


def cmd_token_revoke(settings: Settings, args: argparse.Namespace) -> int:
    return _change(settings, str(args.id), "revoke-token", lambda a: a.revoke_token(args.id), f"revoked token {args.id}")


def cmd_audit_search(settings: Settings, args: argparse.Namespace) -> int:
    from pacs.index.accounts import as_utc
    from pacs.index.audit import AuditFilter

    try:
        since = as_utc(datetime.fromisoformat(args.since)) if args.since else None
        until = as_utc(datetime.fromisoformat(args.until)) if args.until else None
    except ValueError as exc:
        print(f"minipacs: {exc}", file=sys.stderr)
        return 2
    where = AuditFilter(
        actor=args.user, patient_id=args.patient, study_uid=args.study, action=args.action, outcome=args.outcome,
        since=since, until=until, limit=args.limit,
    )
    with _services(settings) as services:
        rows = services.audit.search(where)
        _audit_cli(services, "audit-search", json.dumps({k: v for k, v in vars(args).items() if k in (
            "user", "patient", "study", "action", "outcome", "since", "until") and v}))
    for row in rows:
        row["occurred_at"] = as_utc(row["occurred_at"]).isoformat()
        if args.json:
            print(json.dumps({**row, "detail": json.loads(row["detail"])}, default=str))
        else:
            target = row["study_uid"] or ""
            print(f"{row['occurred_at']}  {row['actor']:<20} {row['action']:<8} {row['outcome']:<15} "
                  f"{row['status'] or '':<5} {row['source']:<15} {row['patient_id'] or '-':<12} {target} x{row['count']}")
    return 0


def cmd_audit_purge(settings: Settings, args: argparse.Namespace) -> int:
    with _services(settings) as services:
        removed = services.audit.apply_retention()
    print(f"removed {removed} audit event(s) older than {settings.audit_retention_days} days")
    return 0
