"""STOW-RS (PS3.18 10.5): stream multipart/related parts to temp files, ingest in batches.

A request body is never held in memory: each part goes straight to a temp file on the data
volume, and every ``BATCH`` parts are ingested (one index transaction per batch).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from dicomweb.content_type import boundary_of, parse_content_type
from dicomweb.multipart import PartData, PartEnd, PartStart, iter_parts
from dicomweb.responses import base_url, dicom_json_response
from pacs import errors
from pacs.audit.trail import store_events
from pacs.ingest import Arrival, ArrivalNotes, StoreReport
from pacs.security.http import principal_of
from pacs.services import Services
from pacs.threads import run_blocking

BATCH = 32
DICOM = "application/dicom"

# Failure reasons (PS3.18 10.5.3, codes from PS3.4 Annex B C-STORE statuses).
FAILURE_REASONS: list[tuple[type[errors.PacsError], int]] = [
    (errors.DuplicateInstance, 0x0111),
    (errors.StudyMismatch, 0xA900),
    (errors.InvalidInput, 0xC000),
    (errors.Unavailable, 0xA700),
]
PROCESSING_FAILURE = 0x0110


def failure_reason(exc: errors.PacsError) -> int:
    for kind, code in FAILURE_REASONS:
        if isinstance(exc, kind):
            return code
    return PROCESSING_FAILURE


class PartFile:
    """A part's temp file, buffered; its head and size go to the ingest with it (Arrival), which
    then need not read the header back."""

    def __init__(self, fd: int) -> None:
        # Chunks at least this large bypass the buffer: written straight through, never copied.
        self.file = os.fdopen(fd, "wb", buffering=1 << 16)
        self.notes = ArrivalNotes()

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.notes.wrote(data)

    def close(self) -> None:
        self.file.close()

    def arrival(self) -> Arrival:
        return self.notes.arrival(synced=False)


@dataclass
class StowRun:
    services: Services
    expected_study: str | None
    reports: list[StoreReport] = field(default_factory=list)
    pending: list[Path] = field(default_factory=list)
    arrivals: dict[Path, Arrival] = field(default_factory=dict)

    async def flush(self) -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        arrivals, self.arrivals = self.arrivals, {}
        self.reports += await run_blocking(
            self.services.ingest.store_files, batch, consume=True, expected_study=self.expected_study,
            arrivals=arrivals,
        )


async def store(request: Request, services: Services, study: str | None) -> Response:
    boundary = _request_boundary(request.headers.get("content-type", ""))
    run = StowRun(services, study)
    current: PartFile | None = None
    current_path: Path | None = None
    try:
        try:
            async for event in iter_parts(request.stream(), boundary):
                if isinstance(event, PartStart):
                    current, current_path = await _open_part(services, event.headers, run)
                elif isinstance(event, PartData) and current is not None:
                    current.write(event.data)
                elif isinstance(event, PartEnd) and current is not None:
                    current.close()
                    run.pending.append(current_path)  # type: ignore[arg-type]
                    run.arrivals[current_path] = current.arrival()  # type: ignore[index]
                    current, current_path = None, None
                    if len(run.pending) >= BATCH:
                        await run.flush()
        except errors.InvalidInput as exc:
            # The body broke off or is malformed. Parts not yet ingested are dropped; if earlier
            # batches are already stored, a 400 ("unable to store any instances", PS3.18
            # 10.5.3) would be untrue, so the answer lists them and reports the damage.
            if not any(report.ok for report in run.reports):
                raise
            run.reports.append(StoreReport(source="request body", error=exc))
        else:
            await run.flush()
    finally:
        if current is not None:
            current.close()
        for path in run.pending + ([current_path] if current_path else []):
            path.unlink(missing_ok=True)
    if not run.reports:
        raise errors.InvalidInput("the request contains no DICOM instances")
    response = _response(request, run.reports)
    request.state.audit["events"] = store_events(principal_of(request), "http", run.reports, response.status_code)
    return response


def _request_boundary(content_type: str) -> str:
    if not content_type:
        raise errors.UnsupportedMediaType('Content-Type is missing; send multipart/related; type="application/dicom"')
    parsed = parse_content_type(content_type)
    if parsed.media_type != "multipart/related":
        raise errors.UnsupportedMediaType(
            f'Content-Type {parsed.media_type} is not supported; send multipart/related; type="application/dicom"'
        )
    part_type = parsed.params.get("type", DICOM).lower()
    if part_type != DICOM:
        raise errors.UnsupportedMediaType(
            f"multipart/related type {part_type!r} is not supported; only application/dicom instances are accepted"
        )
    return boundary_of(parsed)


async def _open_part(services: Services, headers: dict[str, str], run: StowRun) -> tuple[PartFile | None, Path | None]:
    """A temp file for the next part, or (None, None) when the part is not application/dicom.
    One made beforehand, else one created in a worker thread: under sync load, creating a file
    waits on the filesystem journal, and the event loop must keep reading other requests."""
    part_type = headers.get("content-type")
    if part_type and _media_type(part_type) != DICOM:
        error = errors.UnsupportedMediaType(f"part of type {part_type!r} is not application/dicom")
        run.reports.append(StoreReport(source="part", error=error))
        return None, None
    spare = services.ingest.spare_temp_file()
    fd, path = spare if spare is not None else await run_blocking(services.ingest.temp_file)
    return PartFile(fd), path


def _media_type(value: str) -> str | None:
    """A part's media type; None when unreadable, which refuses that part alone, not the request."""
    try:
        return parse_content_type(value).media_type
    except errors.UnsupportedMediaType:
        return None


def _response(request: Request, reports: list[StoreReport]) -> Response:
    root = base_url(request)
    stored, failed = [], []
    for report in reports:
        item: dict[str, Any] = {}
        if report.sop_class_uid:
            item["00081150"] = {"vr": "UI", "Value": [report.sop_class_uid]}
        if report.sop_instance_uid:
            item["00081155"] = {"vr": "UI", "Value": [report.sop_instance_uid]}
        if report.error is None:
            url = f"{root}/studies/{report.study_instance_uid}/series/{report.series_instance_uid}/instances/{report.sop_instance_uid}"
            item["00081190"] = {"vr": "UR", "Value": [url]}
            stored.append(item)
        else:
            item["00081197"] = {"vr": "US", "Value": [failure_reason(report.error)]}
            item["00090010"] = {"vr": "LO", "Value": ["minipacs"]}
            item["00091001"] = {"vr": "LT", "Value": [str(report.error)[:1024]]}  # reason in words
            failed.append(item)
    body: dict[str, Any] = {}
    studies = {r.study_instance_uid for r in reports if r.error is None}
    if len(studies) == 1:
        body["00081190"] = {"vr": "UR", "Value": [f"{root}/studies/{studies.pop()}"]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": stored}
    # PS3.18 Table 10.5.3-1: all stored 200, some failed 202, none stored 409.
    status = 200 if not failed else 202 if stored else 409
    return dicom_json_response(request, body, status_code=status)
