"""Modality Worklist C-FIND latency with many open orders: `python -m benchmarks.mwl`.

Starts `minipacs serve` on each backend (SQLite + folder, PostgreSQL + folder), creates the open
orders over the HTTP API (scheduled over 10 stations and 25 days, names from 200 family names),
then times MWL C-FIND round trips from a pynetdicom SCU kept on one association, from the C-FIND-RQ
to the final response, for three query kinds a modality sends:

    station + day     ScheduledStationAETitle and ScheduledProcedureStepStartDate (about 20 items)
    name wildcard     PatientName=FAMILY* (about 25 items)
    accession         AccessionNumber (one item)

Every answer carries the usual return keys (patient demographics, accession, study UID,
requested procedure, and the scheduled step). Target: p95 under 50 ms with 5,000 open orders.
"""

from __future__ import annotations

import argparse
import random
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from benchmarks.servers import CALLING_AE, Server, postgres_available, running_minipacs
from benchmarks.workloads import BenchmarkError, Latency

TARGET_P95_MS = 50.0
STATIONS = [f"STATION{n:02d}" for n in range(10)]
DAYS = 25
FIRST_DAY = datetime(2031, 3, 3, tzinfo=UTC)
FAMILIES = [f"FAM{n:03d}" for n in range(200)]
GIVEN = ["ANNA", "BORIS", "CLARA", "DAVID", "EMMA", "FELIX", "GRETA", "HUGO", "IRIS", "JONAS"]
MODALITIES = ["CT", "MR", "US", "CR", "DX"]
RETURN_KEYS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyInstanceUID",
               "ReferringPhysicianName", "RequestedProcedureDescription", "RequestedProcedureID",
               "RequestedProcedurePriority")
STEP_KEYS = ("ScheduledStationAETitle", "Modality", "ScheduledProcedureStepStartDate",
             "ScheduledProcedureStepStartTime", "ScheduledPerformingPhysicianName",
             "ScheduledProcedureStepDescription", "ScheduledProcedureStepID", "ScheduledProcedureStepLocation")


@dataclass
class Seeded:
    accessions: list[str]
    seconds: float


def order_body(n: int, rng: random.Random) -> dict[str, Any]:
    when = FIRST_DAY + timedelta(days=rng.randrange(DAYS), minutes=rng.randrange(8 * 60, 18 * 60, 5))
    return {
        "patient_id": f"MWL{n:06d}", "patient_name": f"{rng.choice(FAMILIES)}^{rng.choice(GIVEN)}",
        "patient_birth_date": f"19{rng.randrange(30, 99)}0{rng.randrange(1, 9)}1{rng.randrange(0, 9)}",
        "patient_sex": rng.choice("MF"), "modality": rng.choice(MODALITIES),
        "station_ae_title": rng.choice(STATIONS), "scheduled_at": when.isoformat(),
        "procedure_description": "Scheduled exam", "procedure_code": f"P{n % 40:03d}",
        "ordering_provider": f"DOC^{rng.choice(GIVEN)}", "performing_physician": "TECH^ONE", "location": "ROOM 1",
    }


def seed_orders(http_root: str, count: int, clients: int = 4) -> Seeded:
    rng = random.Random(5000)
    bodies = [order_body(n, rng) for n in range(count)]
    began = time.perf_counter()

    def post(chunk: list[dict[str, Any]]) -> list[str]:
        made = []
        with httpx.Client(timeout=60) as http:
            for body in chunk:
                response = http.post(f"{http_root}/api/orders", json=body)
                if response.status_code != 201:
                    raise BenchmarkError(f"order creation: {response.status_code} {response.text[:200]}")
                made.append(response.json()["accession_number"])
        return made

    with ThreadPoolExecutor(clients) as pool:
        accessions = [a for chunk in pool.map(post, [bodies[i::clients] for i in range(clients)]) for a in chunk]
    return Seeded(accessions, time.perf_counter() - began)


class WorklistClient:
    """An MWL C-FIND SCU (pynetdicom) holding one association open."""

    def __init__(self, port: int, ae_title: str) -> None:
        import logging

        from pynetdicom import AE, _config, evt
        from pynetdicom.sop_class import ModalityWorklistInformationFind

        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        # pynetdicom formats every received identifier for its debug log, whatever the log
        # level: half this client's CPU per answer. A modality does nothing of the kind.
        _config.LOG_RESPONSE_IDENTIFIERS = False
        self.model = ModalityWorklistInformationFind
        ae = AE(ae_title=CALLING_AE)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
        ae.add_requested_context(ModalityWorklistInformationFind)
        self.assoc = ae.associate("127.0.0.1", port, ae_title=ae_title, evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)])
        if not self.assoc.is_established:
            raise BenchmarkError(f"MWL SCU: association with {ae_title}@127.0.0.1:{port} was not accepted")

    def close(self) -> None:
        if self.assoc.is_established:
            self.assoc.release()

    def find(self, top: dict[str, str], step: dict[str, str]) -> int:
        from pydicom.dataset import Dataset

        identifier, item = Dataset(), Dataset()
        for keyword in RETURN_KEYS:
            setattr(identifier, keyword, top.get(keyword, ""))
        for keyword in STEP_KEYS:
            setattr(item, keyword, step.get(keyword, ""))
        identifier.ScheduledProcedureStepSequence = [item]
        found = 0
        for status, _ in self.assoc.send_c_find(identifier, self.model):
            code = getattr(status, "Status", None)
            if code in (0xFF00, 0xFF01):
                found += 1
            elif code != 0x0000:
                raise BenchmarkError(f"MWL C-FIND {top} {step}: status {code if code is None else hex(code)}")
        return found


def _nodelay(event: Any) -> None:
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def queries(kind: str, seeded: Seeded, count: int, rng: random.Random) -> list[tuple[dict[str, str], dict[str, str]]]:
    made: list[tuple[dict[str, str], dict[str, str]]] = []
    for _ in range(count):
        if kind == "station + day":
            day = FIRST_DAY + timedelta(days=rng.randrange(DAYS))
            made.append(({}, {"ScheduledStationAETitle": rng.choice(STATIONS),
                              "ScheduledProcedureStepStartDate": day.strftime("%Y%m%d")}))
        elif kind == "name wildcard":
            made.append(({"PatientName": f"{rng.choice(FAMILIES)}*"}, {}))
        else:
            made.append(({"AccessionNumber": rng.choice(seeded.accessions)}, {}))
    return made


def measure(client: WorklistClient, batch: list[tuple[dict[str, str], dict[str, str]]], warmup: int = 3) -> Latency:
    latency = Latency([])
    for n, (top, step) in enumerate(batch[:warmup] + batch):
        began = time.perf_counter()
        found = client.find(top, step)
        elapsed = (time.perf_counter() - began) * 1000
        if n >= warmup:
            latency.samples_ms.append(elapsed)
            latency.results.append(found)
    return latency


def run_backend(backend: str, orders: int, runs: int) -> list[tuple[str, Latency]]:
    with running_minipacs(backend, workers=1, qido_max_limit=1000, storage="folder") as server:
        root = server.dicomweb_url.removesuffix("/dicom-web")
        seeded = seed_orders(root, orders)
        print(f"[{backend}] {orders} open orders created over HTTP in {seeded.seconds:.1f} s", file=sys.stderr)
        return measure_all(server, seeded, runs)


def measure_all(server: Server, seeded: Seeded, runs: int) -> list[tuple[str, Latency]]:
    assert server.dicom_port is not None
    client = WorklistClient(server.dicom_port, server.ae_title)
    rng = random.Random(7)
    try:
        return [(kind, measure(client, queries(kind, seeded, runs, rng)))
                for kind in ("station + day", "name wildcard", "accession")]
    finally:
        client.close()


def table(results: dict[str, list[tuple[str, Latency]]], orders: int) -> str:
    lines = [f"MWL C-FIND, {orders:,} open orders, one association (pynetdicom SCU), target p95 < {TARGET_P95_MS:.0f} ms",
             "", "| backend | query | items (median) | p50 ms | p95 ms | verdict |", "|---|---|---|---|---|---|"]
    for backend, rows in results.items():
        for kind, latency in rows:
            verdict = "PASS" if latency.p95 < TARGET_P95_MS else "FAIL"
            lines.append(f"| {backend} | {kind} | {latency.median_results:.0f} | {latency.p50:.1f} | "
                         f"{latency.p95:.1f} | {verdict} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mwl", description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--orders", type=int, default=5000, help="open orders in the worklist (default 5000)")
    parser.add_argument("--queries", type=int, default=50, help="timed queries per kind (default 50)")
    args = parser.parse_args(argv)
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    results: dict[str, list[tuple[str, Latency]]] = {}
    for backend in backends:
        if backend == "postgres" and (reason := postgres_available()) is not None:
            print(f"[postgres] skipped: {reason}", file=sys.stderr)
            continue
        results[backend] = run_backend(backend, args.orders, args.queries)
    print(table(results, args.orders))
    passed = all(latency.p95 < TARGET_P95_MS for rows in results.values() for _, latency in rows)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
