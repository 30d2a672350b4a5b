"""`minipacs serve | import | db upgrade | viewer install | bench`."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pacs.config import ConfigError, Settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from pacs.index.remote_aes import RemoteAERepository
    from pacs.serving import Listeners

log = logging.getLogger("minipacs")


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["bench"]:
        # Everything after `bench` belongs to the benchmark's own parser (argparse would take
        # its options, such as --quick, for ours).
        return _run_bench(arguments[1:])
    parser = build_parser()
    args = parser.parse_args(arguments)
    if not getattr(args, "handler", None):
        # `minipacs db` alone shows the db commands, not the top-level help.
        getattr(args, "help_parser", parser).print_help()
        return 2
    try:
        settings = Settings.from_env(config_file=args.config)
        overrides = {k: v for k, v in (("data_dir", args.data_dir and Path(args.data_dir)),) if v}
        if overrides:
            settings = settings.replace(**overrides)
    except ConfigError as exc:
        print(f"minipacs: configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if args.handler is not cmd_serve and settings.log_level != "debug":
        quiet_audit_echo()
    return int(args.handler(settings, args) or 0)


def quiet_audit_echo() -> None:
    """One-shot commands store their audit events (database, syslog) as the server does; the JSON
    line each event is also logged as would only clutter the operator's terminal. The server's log
    keeps them, and MINIPACS_LOG_LEVEL=debug shows them here too. Warnings (a failed write) still show."""
    logging.getLogger("minipacs.audit").setLevel(logging.WARNING)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minipacs", description="A DICOMweb-native mini-PACS.")
    parser.add_argument("--config", help="TOML configuration file (default: $MINIPACS_CONFIG)")
    parser.add_argument("--data-dir", help="data folder (default: $MINIPACS_DATA_DIR or ./minipacs-data)")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the server (DICOMweb over HTTP and the DICOM listener)")
    serve.add_argument("--host", help="HTTP bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="HTTP port (default 8042)")
    serve.add_argument("--workers", type=int, help="worker processes, each serving HTTP, DICOM and HL7 (default: one per CPU core, at most 4)")
    serve.add_argument("--dicom-port", type=int, help="DICOM port (default 11112)")
    serve.add_argument("--no-dicom", action="store_true", help="do not start the DICOM listener")
    serve.add_argument("--hl7-port", type=int, help="HL7 v2 (MLLP) port (default 2575)")
    serve.add_argument("--no-hl7", action="store_true", help="do not start the HL7 listener")
    serve.set_defaults(handler=cmd_serve)

    imp = commands.add_parser("import", help="import DICOM files and folders (recursively)")
    imp.add_argument("paths", nargs="+", help="files or folders")
    imp.add_argument("--quiet", action="store_true", help="no progress bar")
    imp.set_defaults(handler=cmd_import)

    db = commands.add_parser("db", help="database maintenance")
    db.set_defaults(help_parser=db)
    db_commands = db.add_subparsers(title="db commands", metavar="DB_COMMAND")
    upgrade = db_commands.add_parser("upgrade", help="apply schema migrations (Alembic) up to the latest")
    upgrade.set_defaults(handler=cmd_db_upgrade)

    ae = commands.add_parser("ae", help="remote DICOM application entities (C-MOVE destinations, allowlist)")
    ae.set_defaults(help_parser=ae)
    ae_commands = ae.add_subparsers(title="ae commands", metavar="AE_COMMAND")
    ae_add = ae_commands.add_parser("add", help="add a remote AE")
    ae_add.add_argument("name", help="AE title (1-16 characters)")
    ae_add.add_argument("host", help="host name or address")
    ae_add.add_argument("port", type=int, help="DICOM port")
    ae_add.add_argument("--role", default="technologist", help="technologist (default), radiologist, integration, admin")
    ae_add.add_argument("--access", default="all", help="all (default: store and query/retrieve), store, query")
    ae_add.set_defaults(handler=cmd_ae_add)
    ae_list = ae_commands.add_parser("list", help="list remote AEs (stored and configured)")
    ae_list.set_defaults(handler=cmd_ae_list)
    ae_remove = ae_commands.add_parser("remove", help="remove a stored remote AE")
    ae_remove.add_argument("name", help="AE title")
    ae_remove.set_defaults(handler=cmd_ae_remove)

    viewer = commands.add_parser("viewer", help="the embedded OHIF viewer")
    viewer.set_defaults(help_parser=viewer)
    viewer_commands = viewer.add_subparsers(title="viewer commands", metavar="VIEWER_COMMAND")
    viewer_install = viewer_commands.add_parser(
        "install", help="download the prebuilt OHIF viewer (@ohif/app, with npm) and unpack it to be served at /"
    )
    viewer_install.add_argument("--version", dest="ohif_version", help="@ohif/app version (default 3.13.x)")
    viewer_install.add_argument("--force", action="store_true", help="download again even if installed")
    viewer_install.set_defaults(handler=cmd_viewer_install)

    from pacs.admin_cli import add_commands
    from pacs.order_cli import add_commands as add_order_commands

    add_commands(commands)
    add_order_commands(commands)

    # Handled before parsing (see main); listed here for --help.
    commands.add_parser("bench", help="run the benchmarks: minipacs bench --help (see benchmarks/README.md)")
    return parser


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    options = (("http_host", args.host), ("http_port", args.port), ("http_workers", args.workers),
               ("dicom_port", args.dicom_port), ("hl7_port", args.hl7_port))
    changes: dict[str, object] = {k: v for k, v in options if v is not None}
    if args.no_dicom:
        changes["dicom_enabled"] = False
    if args.no_hl7:
        changes["hl7_enabled"] = False
    settings = settings.replace(**changes) if changes else settings
    from pacs import serving, tls
    from pacs.index.database import open_engine
    from pacs.index.migrate import upgrade_database

    try:
        tls.check_files(settings)  # before anything starts, not at the first handshake
        dicom_tls = settings.dicom_enabled and tls.dicom_server_context(settings) is not None
    except ConfigError as exc:
        print(f"minipacs: configuration error: {exc}", file=sys.stderr)
        return 2
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = open_engine(settings.effective_database_url)
    try:
        upgrade_database(engine)  # once, before any worker starts
        first_admin_password = _prepare_security(settings, engine)
    finally:
        engine.dispose()
    serving.sweep_temp_files(settings)
    try:
        listeners = serving.open_listeners(settings, dicom_tls=dicom_tls)
    except serving.ListenError as exc:
        print(f"minipacs: {exc}", file=sys.stderr)
        return 2
    _announce(settings, listeners)
    _announce_security(settings, first_admin_password)
    try:
        if settings.worker_count > 1:
            return serving.supervise(settings, listeners, settings.worker_count)
        serving.serve_worker(settings, listeners)
    except KeyboardInterrupt:
        pass
    finally:
        listeners.close()
    return 0


def _announce(settings: Settings, listeners: Listeners) -> None:
    from pacs.serving import port_of

    host = "127.0.0.1" if settings.http_host in ("0.0.0.0", "::") else settings.http_host
    root = f"{'https' if settings.http_tls_cert else 'http'}://{host}:{port_of(listeners.http)}"
    workers = f"{settings.worker_count} worker processes" if settings.worker_count > 1 else "one process"
    print(f"minipacs is starting ({workers})", flush=True)
    print(f"  DICOMweb:  {root}/dicom-web   (QIDO-RS, WADO-RS, STOW-RS)", flush=True)
    print(f"  Health:    {root}/health", flush=True)
    print(f"  Viewer:    {_viewer_line(root)}", flush=True)
    if listeners.dicom is not None:
        print(f"  DICOM:     {settings.ae_title} on {settings.dicom_host}:{port_of(listeners.dicom)}   "
              "(C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET, MWL, MPPS)", flush=True)
    if listeners.dicom_tls is not None:
        print(f"  DICOM TLS: {settings.ae_title} on {settings.dicom_host}:{port_of(listeners.dicom_tls)}", flush=True)
    if listeners.hl7 is not None:
        print(f"  HL7 v2:    MLLP on {settings.effective_hl7_host}:{port_of(listeners.hl7)}   (ORM^O01, OMI^O23, "
              "SIU^S12-S15, ADT^A08, ADT^A40)", flush=True)
    print(f"  Index:     {_redact(settings.effective_database_url)}", flush=True)
    print(f"  Storage:   {settings.effective_storage_url}", flush=True)


def _viewer_line(root: str) -> str:
    from viewer_static.install import installed_version

    version = installed_version()
    if version is None:
        return f"{root}/   (not installed: run `minipacs viewer install`, needs npm)"
    return f"{root}/   (OHIF {version}; a study: {root}/viewer/study/<StudyInstanceUID>)"


def cmd_viewer_install(settings: Settings, args: argparse.Namespace) -> int:
    from viewer_static.install import OHIF_VERSION, ViewerInstallError, install_viewer

    try:
        install_viewer(args.ohif_version or OHIF_VERSION, force=args.force)
    except (ViewerInstallError, OSError) as exc:
        print(f"minipacs: viewer install failed: {exc}", file=sys.stderr)
        return 1
    return 0


def _prepare_security(settings: Settings, engine: Engine) -> str | None:
    """Apply the audit retention, and create the first administrator on an empty user table:
    the generated password, to show once, or None."""
    from pacs.index.accounts import AccountRepository
    from pacs.index.audit import AuditRepository
    from pacs.security.accounts import AccountService

    audit = AuditRepository(engine)
    audit.set_retention(settings.audit_retention_days)
    audit.purge(settings.audit_retention_days)
    if settings.auth == "off":
        return None
    return AccountService(AccountRepository(engine), token_days=settings.token_days).ensure_first_admin()


def _announce_security(settings: Settings, first_admin_password: str | None) -> None:
    if settings.auth == "off":
        print(
            "  WARNING: authentication is OFF (MINIPACS_AUTH=off): anyone who can reach this server can read, "
            "store and delete images. Access is still audited, as 'anonymous'.",
            flush=True,
        )
    elif first_admin_password is not None:
        from pacs.security.accounts import FIRST_ADMIN

        print(
            f"  Created the first administrator. User: {FIRST_ADMIN}  Password: {first_admin_password}\n"
            "  This password is shown only now. Log in at /login, or change it with: "
            f"minipacs user set-password {FIRST_ADMIN}",
            flush=True,
        )
    if settings.auth != "off" and not settings.dicom_allowlist:
        print("  WARNING: MINIPACS_DICOM_ALLOWLIST is off: unknown DICOM peers may store and query.", flush=True)


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest


def cmd_import(settings: Settings, args: argparse.Namespace) -> int:
    import getpass

    from tqdm import tqdm

    from pacs.audit.trail import store_events
    from pacs.services import Services

    files = list(iter_files(args.paths))
    services = Services.build(settings)
    outcomes: Counter[str] = Counter()
    rejected: list[tuple[str, str]] = []
    try:
        with tqdm(total=len(files), unit="file", disable=args.quiet, file=sys.stderr) as bar:
            for start in range(0, len(files), 64):
                batch = files[start : start + 64]
                reports = services.ingest.store_files(batch)
                for event in store_events(None, "cli", reports, None):
                    event.actor = f"cli:{getpass.getuser()}"
                    services.audit.record(event)
                for report in reports:
                    if report.error is not None:
                        rejected.append((report.source, str(report.error)))
                        outcomes["rejected"] += 1
                    else:
                        assert report.outcome is not None
                        outcomes[report.outcome.value] += 1
                bar.update(len(batch))
    finally:
        services.close()
    print(
        f"stored {outcomes['stored'] + outcomes['replaced']}, already present {outcomes['already stored']}, "
        f"rejected {outcomes['rejected']} (of {len(files)} files)"
    )
    for source, reason in rejected:
        print(f"  rejected {source}: {reason}")
    return 1 if rejected and not (outcomes["stored"] or outcomes["already stored"] or outcomes["replaced"]) else 0


def iter_files(paths: Sequence[str]) -> Iterator[Path]:
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for root, dirs, names in os.walk(path):
                dirs.sort()
                for name in sorted(names):
                    yield from _regular_file(Path(root) / name)
        elif path.exists():
            yield from _regular_file(path)
        else:
            print(f"minipacs: {raw}: no such file or folder", file=sys.stderr)


def _regular_file(path: Path) -> Iterator[Path]:
    # Reading a FIFO would block for ever; a dangling link has nothing to read.
    if path.is_file():
        yield path
    else:
        print(f"minipacs: {path}: not a regular file, skipped", file=sys.stderr)


def cmd_db_upgrade(settings: Settings, args: argparse.Namespace) -> int:
    from pacs.index.database import open_engine
    from pacs.index.migrate import current_revision, upgrade_database

    engine = open_engine(settings.effective_database_url)
    try:
        upgrade_database(engine)
        print(f"database {_redact(settings.effective_database_url)} is at revision {current_revision(engine)}")
    finally:
        engine.dispose()
    return 0


def cmd_ae_add(settings: Settings, args: argparse.Namespace) -> int:
    from pacs.errors import PacsError
    from pacs.index.remote_aes import validated

    with _remote_aes(settings) as repository:
        try:
            repository.add(validated(args.name, args.host, args.port, args.role, args.access))
        except PacsError as exc:
            print(f"minipacs: {exc}", file=sys.stderr)
            return 1
    print(f"added {args.name} at {args.host}:{args.port} ({args.role}, access {args.access})")
    return 0


def cmd_ae_list(settings: Settings, args: argparse.Namespace) -> int:
    with _remote_aes(settings) as repository:
        entries = repository.all()
    for entry in entries:
        print(f"{entry.ae_title:<16} {entry.host}:{entry.port:<6} {entry.role:<13} access={entry.access}")
    if not entries:
        print("no remote AEs; add one with: minipacs ae add NAME HOST PORT")
    return 0


def cmd_ae_remove(settings: Settings, args: argparse.Namespace) -> int:
    from pacs.errors import PacsError

    with _remote_aes(settings) as repository:
        try:
            repository.remove(args.name)
        except PacsError as exc:
            print(f"minipacs: {exc}", file=sys.stderr)
            return 1
    print(f"removed {args.name}")
    return 0


@contextlib.contextmanager
def _remote_aes(settings: Settings) -> Iterator[RemoteAERepository]:
    from pacs.index.database import open_engine
    from pacs.index.migrate import upgrade_database
    from pacs.index.remote_aes import RemoteAERepository, parse_remote_aes

    engine = open_engine(settings.effective_database_url)
    try:
        upgrade_database(engine)
        yield RemoteAERepository(engine, parse_remote_aes(settings.remote_aes))
    finally:
        engine.dispose()


def _run_bench(arguments: list[str]) -> int:
    try:
        from benchmarks.__main__ import main as bench_main
    except ImportError:
        print("minipacs: the benchmarks are not installed with this copy", file=sys.stderr)
        return 2
    return int(bench_main(arguments, prog="minipacs bench") or 0)


if __name__ == "__main__":
    sys.exit(main())
