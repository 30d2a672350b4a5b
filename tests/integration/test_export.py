"""Order export on both backends: CSV read back with the csv module, the HL7 batch with
python-hl7, the PDF with pypdf; batches with who/when/format/destination, files in the blob
store, orders never exported twice unless forced, per-order history, audit, permissions, bad
input, and `minipacs orders export` run as a process."""

from __future__ import annotations

import csv
import io
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hl7
import pytest
from pypdf import PdfReader
from starlette.testclient import TestClient

from pacs.app import build_app
from pacs.config import Settings
from pacs.index.audit import AuditFilter
from pacs.index.exports import ExportRepository
from pacs.services import Services
from tests.conftest import bearer_headers
from tests.support.server import settings_env
from worklist.export_formats import CSV_COLUMNS

TRICKY = 'O\'Brien, "Ann"|x^y~z&w\\v'


@dataclass
class Api:
    services: Services
    client: TestClient
    headers: dict[str, dict[str, str]]

    def order(self, **fields: Any) -> dict[str, Any]:
        body = {"patient_id": "PID-1", "patient_name": "Doe^Jane", "modality": "CT", **fields}
        response = self.client.post("/api/orders", json=body, headers=self.headers["technologist"])
        assert response.status_code == 201, response.text
        return response.json()

    def export(self, who: str = "technologist", expected: int = 201, **body: Any) -> dict[str, Any]:
        response = self.client.post("/api/exports", json=body, headers=self.headers[who])
        assert response.status_code == expected, response.text
        return response.json()

    def file(self, batch: dict[str, Any]) -> bytes:
        response = self.client.get(batch["file"], headers=self.headers["technologist"])
        assert response.status_code == 200, response.text
        return response.content


@pytest.fixture
def api(services: Services) -> Iterator[Api]:
    headers = {role: bearer_headers(services, role, username=role)
               for role in ("admin", "technologist", "radiologist")}
    headers["provider"] = bearer_headers(services, "provider", username="provider", provider_name="Doc^Own")
    with TestClient(build_app(services.settings, services)) as client:
        yield Api(services, client, headers)


def test_csv_of_all_not_yet_exported(api: Api) -> None:
    first = api.order(patient_name="Müller^Jürgen", clinical_indication=TRICKY, special_instructions="line 1\nline 2",
                      scheduled_at="2030-01-02T03:04:05Z", contrast_required=True, duration_minutes=20)
    second = api.order(patient_id="PID-2", modality="MR", body_part="KNEE", laterality="L")
    batch = api.export(format="csv", all_not_exported=True, destination="Other RIS (nightly)")
    assert (batch["format"], batch["created_by"], batch["destination"], batch["order_count"]) == (
        "csv", "technologist", "Other RIS (nightly)", 2)
    assert [o["order_number"] for o in batch["orders"]] == [first["order_number"], second["order_number"]]

    response = api.client.get(batch["file"], headers=api.headers["technologist"])
    assert response.headers["content-type"].startswith("text/csv")
    assert f'filename="orders-export-{batch["id"]}.csv"' in response.headers["content-disposition"]
    assert response.content.count(b"\r\n") == 3 and response.content.endswith(b"\r\n")  # RFC 4180 records
    rows = list(csv.reader(io.StringIO(response.content.decode("utf-8"), newline="")))
    assert tuple(rows[0]) == CSV_COLUMNS
    records = [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]
    assert records[0]["patient_name"] == "Müller^Jürgen"
    assert records[0]["clinical_indication"] == TRICKY
    assert records[0]["special_instructions"] == "line 1\nline 2"
    assert (records[0]["scheduled_at"], records[0]["contrast_required"], records[0]["duration_minutes"]) == (
        "2030-01-02T03:04:05+00:00", "yes", "20")
    assert (records[1]["modality"], records[1]["body_part"], records[1]["laterality"]) == ("MR", "KNEE", "L")
    assert records[1]["accession_number"] == second["accession_number"]

    stored = ExportRepository(api.services.engine).batch(batch["id"])
    assert stored.blob_key is not None and stored.blob_key.startswith("exports/")
    assert api.services.blobs.exists(stored.blob_key)
    admin = api.headers["admin"]
    assert api.client.get("/api/orders?exported=false", headers=admin).json() == []
    assert len(api.client.get("/api/orders?exported=true", headers=admin).json()) == 2
    assert api.client.get(f"/api/orders/{first['id']}", headers=admin).json()["exported_at"] is not None


def test_exported_once_unless_forced_and_history(api: Api) -> None:
    a, b = api.order(), api.order(patient_id="PID-2")
    one = api.export(format="csv", order_ids=[a["id"]])
    two = api.export(format="pdf", order_ids=[a["id"], b["id"]], destination="RIS B")
    assert [o["id"] for o in two["orders"]] == [b["id"]]
    assert [o["id"] for o in two["skipped"]] == [a["id"]]
    again = api.client.post("/api/exports", json={"format": "csv", "order_ids": [a["id"], b["id"]]},
                            headers=api.headers["technologist"])
    assert again.status_code == 409 and "force" in again.json()["error"]
    nothing_new = api.client.post("/api/exports", json={"format": "hl7", "all_not_exported": True},
                                  headers=api.headers["technologist"])
    assert nothing_new.status_code == 409
    forced = api.export(format="hl7", order_ids=[a["id"]], force=True)
    assert [o["id"] for o in forced["orders"]] == [a["id"]] and forced["skipped"] == []

    history = api.client.get(f"/api/orders/{a['id']}/exports", headers=api.headers["radiologist"]).json()
    assert [(h["id"], h["format"]) for h in history] == [(forced["id"], "hl7"), (one["id"], "csv")]
    listed = api.client.get("/api/exports?limit=2", headers=api.headers["admin"]).json()
    assert [batch["id"] for batch in listed] == [forced["id"], two["id"]]
    # The list gives the count only, not an orders list that would contradict it.
    assert [(batch["order_count"], "orders" in batch) for batch in listed] == [(1, False), (1, False)]
    shown = api.client.get(f"/api/exports/{two['id']}", headers=api.headers["admin"]).json()
    assert (shown["destination"], shown["orders"]) == ("RIS B", [{"id": b["id"], "order_number": b["order_number"]}])


def test_hl7_batch_reads_back(api: Api) -> None:
    order = api.order(patient_name="O'Hara^Sean|x", placer_order_number="PL-9", priority="STAT", body_part="CHEST",
                      scheduled_at="2030-05-06T07:08:00Z", ordering_provider="Doc^Own", clinical_indication=TRICKY,
                      special_instructions="fasting\r\nfrom midnight")
    other = api.order(patient_id="PID-2")
    batch = api.export(format="hl7", order_ids=[order["id"], other["id"]], destination="RIS&B")
    data = api.file(batch)
    assert b"\n" not in data.replace(b"\\X0A\\", b"")  # segments end with CR only
    parsed = hl7.parse_file(data.decode("utf-8"))
    [messages] = [list(b) for b in parsed]
    assert len(messages) == 2
    message = messages[0]
    assert str(message.segment("MSH")[9]) == "ORM^O01" and str(message.segment("MSH")[12]) == "2.3.1"
    assert message.unescape(str(message.segment("PID")[5])) == "O'Hara^Sean|x"
    assert str(message.segment("PID")[3]) == "PID-1"
    assert message.unescape(str(message.segment("MSH")[5])) == "RIS&B"
    orc, obr = message.segment("ORC"), message.segment("OBR")
    assert (str(orc[1]), str(orc[2]), str(orc[5])) == ("NW", "PL-9", "SC")
    assert str(orc[7][0][3]) == "20300506070800+0000" and str(orc[7][0][5]) == "S"
    assert str(obr[18]) == order["accession_number"] and str(obr[19]) == order["order_number"]
    assert message.unescape(str(obr[31][0][1])) == TRICKY
    assert message.unescape(str(message.segment("NTE")[3])) == "fasting\r\nfrom midnight"
    assert str(message.segment("ZDS")[1][0][0]) == order["study_instance_uid"]
    assert str(messages[1].segment("PID")[3]) == "PID-2"


def test_pdf_summary(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    orders = [api.order(patient_name=f"Patient^Number{n}", patient_id=f"PDF-{n}") for n in range(3)]
    batch = api.export(format="pdf", all_not_exported=True, destination="Archive RIS")
    data = api.file(batch)
    assert data.startswith(b"%PDF-")
    text = " ".join(page.extract_text() for page in PdfReader(io.BytesIO(data)).pages)
    assert "Order export" in text and "Archive RIS" in text and "3 orders" in text
    for order in orders:
        assert order["order_number"] in text and order["patient_id"] in text
    assert "Patient Number2" in text
    # fontTools' subsetter reports each font it embeds at INFO: dozens of lines per export
    assert [r.getMessage() for r in caplog.records if r.name.startswith("fontTools")] == []


def test_who_may_export_and_bad_requests(api: Api) -> None:
    own = api.order(ordering_provider="Doc^Own")
    other = api.order(ordering_provider="Other^Doc")
    body = {"format": "csv", "order_ids": [own["id"]]}
    for who in ("provider", "radiologist"):
        assert api.client.post("/api/exports", json=body, headers=api.headers[who]).status_code == 403
        assert api.client.get("/api/exports", headers=api.headers[who]).status_code == 403
    assert api.client.post("/api/exports", json=body).status_code == 401
    assert api.client.get("/api/exports/1/file").status_code == 401
    assert api.client.get(f"/api/orders/{own['id']}/exports", headers=api.headers["provider"]).json() == []
    assert api.client.get(f"/api/orders/{other['id']}/exports", headers=api.headers["provider"]).status_code == 404

    cases: list[tuple[Any, int, str]] = [
        ({"format": "xml", "order_ids": [own["id"]]}, 400, "unknown export format"),
        ({"order_ids": [own["id"]]}, 400, "format is required"),
        ({"format": "csv", "order_ids": [own["id"], 999999]}, 404, "999999"),
        ({"format": "csv"}, 400, "order_ids"),
        ({"format": "csv", "order_ids": [own["id"]], "all_not_exported": True}, 400, "either"),
        ({"format": "csv", "order_ids": "1"}, 400, "list"),
        ({"format": "csv", "order_ids": [True]}, 400, "whole numbers"),
        ({"format": "csv", "order_ids": [own["id"]], "force": "yes"}, 400, "true or false"),
        ({"format": "csv", "order_ids": [own["id"]], "to": "x"}, 400, "unknown export fields"),
        ([1], 400, "JSON object"),
    ]
    for payload, status, message in cases:
        response = api.client.post("/api/exports", json=payload, headers=api.headers["technologist"])
        assert response.status_code == status, (payload, response.text)
        assert message in response.json()["error"], (payload, response.text)
    assert api.client.get("/api/exports/999", headers=api.headers["admin"]).status_code == 404
    assert api.client.get("/api/exports/abc/file", headers=api.headers["admin"]).status_code == 400
    assert api.client.get("/api/orders?exported=maybe", headers=api.headers["admin"]).status_code == 400
    assert len(api.client.get("/api/orders?exported=false", headers=api.headers["admin"]).json()) == 2  # none left


def test_exports_are_audited_per_patient(api: Api) -> None:
    a, b = api.order(patient_id="AUD-1"), api.order(patient_id="AUD-2")
    batch = api.export(format="csv", order_ids=[a["id"], b["id"]])
    api.file(batch)
    api.services.audit.flush()
    events = api.services.audit.search(AuditFilter(action="export"))
    made = {e["patient_id"] for e in events if '"orders"' in e["detail"]}
    downloaded = {e["patient_id"] for e in events if '"download"' in e["detail"]}
    assert made == downloaded == {"AUD-1", "AUD-2"}
    assert {e["actor"] for e in events} == {"technologist"}


@pytest.fixture
def sqlite_services(sqlite_settings: Settings) -> Iterator[Services]:
    built = Services.build(sqlite_settings)
    try:
        yield built
    finally:
        built.close()


def test_command_line_export(sqlite_services: Services, tmp_path: Path) -> None:
    """The CLI shares ExportService with the HTTP API (tested on both backends above): SQLite only."""
    services = sqlite_services
    first = services.orders.create({"patient_id": "CLI-1", "patient_name": "A^B", "modality": "US"}, created_by="t")
    services.orders.create({"patient_id": "CLI-2", "patient_name": "C^D", "modality": "US"}, created_by="t")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MINIPACS_")}, **settings_env(services.settings)}

    def run(*args: str, log_level: str = "info") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pacs.cli", "orders", "export", *args],
                              env={**env, "MINIPACS_LOG_LEVEL": log_level},
                              capture_output=True, text=True, timeout=60, check=False)

    out = tmp_path / "orders.csv"
    with ThreadPoolExecutor(max_workers=2) as pool:  # each process spends most of its time importing
        bad_run = pool.submit(run, "--format", "csv", "--ids", "x1", "-o", str(tmp_path / "bad.csv"))
        done = run("--format", "csv", "--ids", str(first.pk), "--destination", "RIS", "-o", str(out))
        bad = bad_run.result()
    assert done.returncode == 0, done.stderr
    assert "exported 1 orders" in done.stdout
    assert "minipacs.audit" not in done.stderr and '"actor"' not in done.stderr  # stored, not echoed
    with ThreadPoolExecutor(max_workers=2) as pool:
        verbose_run = pool.submit(run, "--format", "csv", "--ids", str(first.pk), "--force", "-o",
                                  str(tmp_path / "verbose.csv"), log_level="debug")
        pdf = run("--format", "pdf", "--ids", str(first.pk), "--force", "-o", str(tmp_path / "again.pdf"))
        verbose = verbose_run.result()
    assert pdf.returncode == 0 and verbose.returncode == 0, pdf.stderr + verbose.stderr
    assert "fontTools" not in pdf.stderr and "minipacs.audit" not in pdf.stderr
    assert "INFO minipacs.audit:" in verbose.stderr  # asked for: the audit lines are shown
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"), newline="")))
    assert [r["patient_id"] for r in rows] == ["CLI-1"]
    again = run("--format", "hl7", "--all-new", "-o", str(tmp_path / "new.hl7"))
    assert again.returncode == 0, again.stderr
    assert [str(m.segment("PID")[3]) for m in next(iter(hl7.parse_file((tmp_path / "new.hl7").read_bytes().decode())))] == ["CLI-2"]
    nothing = run("--format", "pdf", "--all-new", "-o", str(tmp_path / "none.pdf"))
    assert nothing.returncode == 3 and "nothing to export" in nothing.stderr
    assert not (tmp_path / "none.pdf").exists()
    assert bad.returncode == 1 and "not an order id" in bad.stderr and "Traceback" not in bad.stderr
    services.audit.flush()
    actors = {e["actor"] for e in services.audit.search(AuditFilter(action="export"))}
    assert actors and all(actor.startswith("cli:") for actor in actors)
    batches = ExportRepository(services.engine).batches()
    made = [(b.format, b.destination, b.order_count) for b in batches]
    assert made[0] == ("hl7", "", 1) and made[-1] == ("csv", "RIS", 1)
    assert sorted(made[1:-1]) == [("csv", "", 1), ("pdf", "", 1)]  # the two forced ones, made side by side
    exported = services.audit.search(AuditFilter(action="export", patient_id="CLI-1"))
    assert sum(e["count"] for e in exported) == 3  # the csv, the pdf and the verbose csv
