"""`minipacs orders export`: orders written to a file for another RIS, from the command line
(the same export as POST /api/exports, recorded as a batch and audited)."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from pacs.config import Settings
from pacs.errors import Conflict, PacsError


def add_commands(commands: Any) -> None:
    orders = commands.add_parser("orders", help="imaging orders: export")
    orders.set_defaults(help_parser=orders)
    sub = orders.add_subparsers(title="orders commands", metavar="ORDERS_COMMAND")
    export = sub.add_parser(
        "export", help="write orders to a file (CSV, HL7 ORM batch, PDF) and record the export batch",
        description="Orders already exported are left out unless --force is given.",
    )
    export.add_argument("--format", required=True, choices=("csv", "hl7", "pdf"))
    which = export.add_mutually_exclusive_group(required=True)
    which.add_argument("--all-new", action="store_true", help="every order not yet exported")
    which.add_argument("--ids", nargs="+", metavar="ID", help="order ids (space- or comma-separated)")
    export.add_argument("--force", action="store_true", help="export again orders already exported")
    export.add_argument("--destination", default="", help="where the file goes (a label kept with the batch)")
    export.add_argument("-o", "--output", required=True, help="the file to write")
    export.set_defaults(handler=cmd_orders_export)


def cmd_orders_export(settings: Settings, args: argparse.Namespace) -> int:
    from pacs.index.exports import ExportRepository
    from pacs.services import Services
    from worklist.export import ExportRequest, ExportService, export_events, parse_format, parse_ids

    try:
        ids = None if args.all_new else parse_ids(_numbers(args.ids))
        wanted = ExportRequest(parse_format(args.format), ids, force=args.force, destination=args.destination)
    except PacsError as exc:
        return _fail(exc)
    actor = f"cli:{getpass.getuser()}"
    services = Services.build(settings)
    try:
        service = ExportService(ExportRepository(services.engine), services.blobs)
        try:
            result = service.export(wanted, created_by=actor)
        except Conflict as exc:
            print(f"minipacs: {exc}", file=sys.stderr)
            return 3  # nothing (new) to export: no file written
        except PacsError as exc:
            return _fail(exc)
        for event in export_events(result, None, "cli", actor=actor):
            services.audit.record(event)
        _write(Path(args.output), b"".join(service.file(result.batch)))
    finally:
        services.close()
    print(f"exported {result.batch.order_count} orders in batch {result.batch.pk} to {args.output}")
    if result.skipped:
        print(f"left out (exported before): {', '.join(o.order_number for o in result.skipped)}")
    if result.remaining:
        print("more orders wait: run the export again")
    return 0


def _numbers(raw: list[str]) -> list[int]:
    numbers = []
    for part in (p.strip() for text in raw for p in text.split(",")):
        if part:
            if not (part.isascii() and part.isdigit()):
                raise PacsError(f"{part!r} is not an order id")
            numbers.append(int(part))
    return numbers


def _write(path: Path, data: bytes) -> None:
    """Whole or not at all: a temp file beside the target, renamed over it."""
    handle, temporary = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=".export-")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _fail(exc: PacsError) -> int:
    print(f"minipacs: {exc}", file=sys.stderr)
    return 1
