"""HL7 v2 intake speed: `python -m benchmarks.hl7`.

Starts `minipacs serve` (authentication off, HL7 on a free loopback port, a temp data folder; on
PostgreSQL a fresh database), sends N ORM^O01 new orders over one MLLP connection, each after the
previous one's ACK, and prints messages per second and ACK latency percentiles per backend. The
target is 200 messages/s."""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.servers import (
    free_port,
    fresh_database,
    postgres_available,
    running_process,
    source_env,
    temp_folder,
    wait_until_ready,
)

TARGET_PER_SECOND = 200.0
WARM_UP = 50
VT, FS, CR = b"\x0b", b"\x1c", b"\r"


@dataclass
class Result:
    backend: str
    messages: int
    seconds: float
    per_second: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    server_cpu_ms: float  # server CPU time (all its processes) per message: what the load around it does not change

    @property
    def verdict(self) -> str:
        return "PASS" if self.per_second >= TARGET_PER_SECOND else "FAIL"


def new_order(number: int, run: str) -> bytes:
    control_id = f"{run}-{number:06d}"
    segments = [
        f"MSH|^~\\&|BENCH|HOSP|MINIPACS|RADIOLOGY|20260102030405||ORM^O01^ORM_O01|{control_id}|P|2.5.1",
        f"PID|1||PAT-{number % 5000:05d}^^^HOSP^MR||Doe^Jane^{number}||19700203|F",
        "PV1|1|O|RAD^CT1",
        f"ORC|NW|{control_id}|||||^^^20300506070800^^R||||1234^Smith^John",
        _segment("OBR", {1: "1", 2: control_id, 4: "CTCHEST^CT chest^L", 13: "cough", 16: "1234^Smith^John",
                         24: "CT"}),
    ]
    return ("\r".join(segments) + "\r").encode()


def _segment(name: str, fields: dict[int, str]) -> str:
    return "|".join([name, *(fields.get(n, "") for n in range(1, max(fields) + 1))])


@contextmanager
def running_server(backend: str) -> Iterator[tuple[int, int]]:
    """`minipacs serve` on `backend`; yields its HL7 port and process group."""
    with ExitStack() as stack:
        data = stack.enter_context(temp_folder("minipacs-hl7-bench-"))
        http_port, hl7_port = free_port(), free_port()
        env = {**os.environ, "MINIPACS_DATA_DIR": str(data / "data"), "MINIPACS_HTTP_PORT": str(http_port),
               "MINIPACS_AUTH": "off", "MINIPACS_LOG_LEVEL": "warning", "MINIPACS_DICOM_ENABLED": "off",
               "MINIPACS_HL7_PORT": str(hl7_port), "MINIPACS_HL7_HOST": "127.0.0.1"}
        env.pop("MINIPACS_CONFIG", None)
        if backend == "postgres":
            database = stack.enter_context(fresh_database("hl7"))
            env["MINIPACS_DATABASE_URL"] = f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}"
        command = [sys.executable, "-m", "pacs.cli", "serve", "--host", "127.0.0.1"]
        proc = stack.enter_context(running_process(command, env=source_env(env), cwd=data, log_name="minipacs.log"))
        wait_until_ready(f"http://127.0.0.1:{http_port}/health", proc, data / "minipacs.log")
        yield hl7_port, proc.pid


def cpu_seconds(group: int) -> float:
    """User and system CPU time of the processes in a process group (Linux /proc)."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group:  # pgrp; utime and stime follow at 11 and 12
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


class Connection:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def exchange(self, payload: bytes) -> bytes:
        self.sock.sendall(VT + payload + FS + CR)
        while FS + CR not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self.buffer += chunk
        block, _, self.buffer = self.buffer.partition(FS + CR)
        return block[1:]


def measure(backend: str, count: int) -> Result:
    run = f"R{int(time.time())}"
    with running_server(backend) as (port, group):
        connection = Connection(port)
        for number in range(WARM_UP):
            _check(connection.exchange(new_order(number, run + "W")))
        latencies = []
        cpu = cpu_seconds(group)
        started = time.perf_counter()
        for number in range(count):
            sent = time.perf_counter()
            _check(connection.exchange(new_order(number, run)))
            latencies.append(time.perf_counter() - sent)
        seconds = time.perf_counter() - started
        cpu = cpu_seconds(group) - cpu
        connection.sock.close()
    cuts = statistics.quantiles(latencies, n=100)
    return Result(backend, count, round(seconds, 3), round(count / seconds, 1), round(cuts[49] * 1000, 2),
                  round(cuts[94] * 1000, 2), round(cuts[98] * 1000, 2), round(max(latencies) * 1000, 2),
                  round(cpu / count * 1000, 2))


def _check(ack: bytes) -> None:
    if b"\rMSA|AA|" not in ack:
        raise RuntimeError(f"not accepted: {ack.decode(errors='replace')!r}")


def report(results: list[Result]) -> str:
    lines = [
        (f"HL7 v2 intake: ORM^O01 new orders over one MLLP connection, each sent after the previous ACK "
         f"(target {TARGET_PER_SECOND:.0f} messages/s)"),
        "",
        "| backend | messages | messages/s | ACK p50 | ACK p95 | ACK p99 | server CPU per message | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r.backend} | {r.messages:,} | {r.per_second:,.0f} | {r.p50_ms:.1f} ms | {r.p95_ms:.1f} ms "
                     f"| {r.p99_ms:.1f} ms | {r.server_cpu_ms:.1f} ms | {r.verdict} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hl7", description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000, help="orders sent per backend (default 2000)")
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both",
                        help="default both (postgres is skipped when it does not answer)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    if "postgres" in backends and (reason := postgres_available()):
        print(f"{reason}: skipping postgres", file=sys.stderr)
        backends.remove("postgres")
    results = [measure(backend, args.messages) for backend in backends]
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0 if all(r.verdict == "PASS" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
