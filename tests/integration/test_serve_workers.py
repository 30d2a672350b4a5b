"""`minipacs serve --workers N`: pre-forked workers sharing the listening sockets.

Each worker serves HTTP, DICOM and HL7; together they behave as one server: every instance
stored through any of them is indexed once, a worker that dies is replaced, and SIGTERM stops
them all.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from pacs.config import Settings
from tests.support.factories import make_series, stow_body
from tests.support.processes import stop_process
from tests.support.s3server import free_port
from tests.support.server import settings_env

STOW_TYPE = "multipart/related; type=\"application/dicom\""


def children_of(pid: int) -> set[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], check=False, capture_output=True, text=True).stdout.split()
    return {int(p) for p in found}


class Server:
    def __init__(self, settings: Settings, workers: int, **extra_env: str) -> None:
        self.http_port, self.dicom_port = free_port(), free_port()
        env = {
            **os.environ, **settings_env(settings), "MINIPACS_AUTH": "off", "MINIPACS_HL7_PORT": "off",
            "MINIPACS_HTTP_PORT": str(self.http_port), "MINIPACS_DICOM_PORT": str(self.dicom_port), **extra_env,
        }
        self.log = settings.data_dir.parent / "serve.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pacs.cli", "serve", "--workers", str(workers)],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.wait_for_workers(workers)

    def wait_for_workers(self, count: int, timeout: float = 60.0, *, without: int = 0) -> set[int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            workers = children_of(self.process.pid)
            if len(workers) == count and without not in workers and self.healthy():
                return workers
            time.sleep(0.1)
        raise AssertionError(f"{count} workers did not come up:\n{self.log.read_text()}")

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def stow(self, datasets: list) -> httpx.Response:
        body, content_type = stow_body(datasets)
        return httpx.post(f"{self.url}/dicom-web/studies", content=body, headers={"Content-Type": content_type},
                          timeout=60)

    def studies(self, study_uid: str) -> list[dict]:
        answer = httpx.get(f"{self.url}/dicom-web/studies", params={"StudyInstanceUID": study_uid}, timeout=30)
        return answer.json() if answer.status_code == 200 else []


@pytest.fixture
def server(settings: Settings) -> Iterator[Server]:
    running = Server(settings, workers=2)
    try:
        yield running
    finally:
        stop_process(running.process)


def echo(port: int) -> int:
    ae = AE(ae_title="WORKERTEST")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="MINIPACS")
    try:
        assert assoc.is_established
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


def test_workers_share_the_ports_and_the_archive(server: Server) -> None:
    assert len(children_of(server.process.pid)) == 2
    series = make_series(24)
    with ThreadPoolExecutor(6) as pool:  # many connections, so both workers take some
        answers = list(pool.map(lambda ds: server.stow([ds]), series))
    assert [a.status_code for a in answers] == [200] * 24
    [study] = server.studies(series[0].StudyInstanceUID)
    assert study["00201208"]["Value"] == [24]  # NumberOfStudyRelatedInstances
    assert all(echo(server.dicom_port) == 0 for _ in range(4))


def test_a_dicom_store_through_any_worker_is_indexed_once(server: Server) -> None:
    series = make_series(6, size=16)
    ae = AE(ae_title="WORKERTEST")
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    for ds in series:  # one association each: the kernel spreads them over the workers
        assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="MINIPACS")
        assert assoc.is_established
        assert assoc.send_c_store(ds).Status == 0
        assoc.release()
    [study] = server.studies(series[0].StudyInstanceUID)
    assert study["00201208"]["Value"] == [6]


def dicom_connections_per_worker(server: Server) -> list[int]:
    return connections_per_worker(server, server.dicom_port)


def connections_per_worker(server: Server, port: int) -> list[int]:
    """Established connections to ``port`` each worker holds, read from /proc."""
    held = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port, state, inode = int(fields[1].rsplit(":", 1)[1], 16), fields[3], fields[9]
            if local_port == port and state == "01":  # 01: ESTABLISHED
                held.add(f"socket:[{inode}]")
    counts = []
    for pid in sorted(children_of(server.process.pid)):
        fds = Path(f"/proc/{pid}/fd")
        counts.append(sum(1 for fd in fds.iterdir() if os.readlink(fd) in held))
    return counts


def test_associations_go_to_the_least_busy_worker(server: Server) -> None:
    """Python runs one thread at a time per process: associations piled on one worker would share
    a core while the other idles. Each new one goes to the worker serving fewer."""
    ae = AE(ae_title="WORKERTEST")
    ae.add_requested_context(Verification)
    held = []
    try:
        for _ in range(6):
            assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="MINIPACS")
            assert assoc.is_established
            held.append(assoc)
        assert dicom_connections_per_worker(server) == [3, 3]
        assert all(int(assoc.send_c_echo().Status) == 0 for assoc in held)
    finally:
        for assoc in held:
            assoc.release()


def test_http_connections_opened_together_are_shared_between_the_workers(server: Server) -> None:
    """Clients opening their connections at once (a STOW-RS uploader's threads) would otherwise
    often land three to one on the worker that woke first."""
    for _ in range(3):
        clients = [httpx.Client(base_url=server.url, timeout=30) for _ in range(4)]
        try:
            with ThreadPoolExecutor(4) as pool:
                answers = list(pool.map(lambda client: client.get("/dicom-web/studies?limit=1"), clients))
            assert [a.status_code for a in answers] == [200] * 4
            assert connections_per_worker(server, server.http_port) == [2, 2]
        finally:
            for client in clients:
                client.close()
        time.sleep(0.2)  # the workers see the connections closed


def test_a_dead_worker_is_replaced(server: Server) -> None:
    before = children_of(server.process.pid)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    after = server.wait_for_workers(2, without=victim)
    assert victim not in after
    assert len(after - before) == 1
    assert server.stow(make_series(1)).status_code == 200
    assert echo(server.dicom_port) == 0


def test_sigterm_stops_every_worker(settings: Settings) -> None:
    running = Server(settings, workers=2)
    workers = children_of(running.process.pid)
    running.process.send_signal(signal.SIGTERM)
    assert running.process.wait(timeout=30) == 0
    for pid in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_taken_port_stops_serve_before_any_worker_starts(settings: Settings, tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {**os.environ, **settings_env(settings), "MINIPACS_HL7_PORT": "off",
               "MINIPACS_HTTP_PORT": str(free_port()), "MINIPACS_DICOM_PORT": str(taken.getsockname()[1])}
        result = subprocess.run([sys.executable, "-m", "pacs.cli", "serve", "--workers", "2"], check=False, env=env,
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "cannot listen for DICOM on 127.0.0.1" in result.stderr
    assert "Traceback" not in result.stderr


def test_day_old_temp_files_are_swept_at_start(settings: Settings) -> None:
    from pacs.serving import sweep_temp_files

    old, young = settings.data_dir / "tmp" / "recv-old.dcm", settings.data_dir / "tmp-spare" / "recv-young.dcm"
    for path in (old, young):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(old, (two_days_ago, two_days_ago))
    assert sweep_temp_files(settings) == 1
    assert not old.exists() and young.exists()


def test_c_move_through_a_worker_sends_every_instance(settings: Settings, tmp_path: Path) -> None:
    """Sub-operations one after another as fast as the peer answers: each response reaches the
    sub-operation waiting for it (none left to time out while another thread takes it)."""
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove

    from tests.support.dimse import identifier, running_storescp

    with running_storescp(tmp_path / "moved", "MOVEDEST") as receiver:
        running = Server(settings, workers=2, MINIPACS_REMOTE_AES=f"MOVEDEST@127.0.0.1:{receiver.port}")
        try:
            series = make_series(60, size=8)
            assert running.stow(series).status_code == 200
            ae = AE(ae_title="WORKERTEST")
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
            ae.dimse_timeout = 20
            assoc = ae.associate("127.0.0.1", running.dicom_port, ae_title="MINIPACS")
            assert assoc.is_established
            query = identifier("STUDY", StudyInstanceUID=series[0].StudyInstanceUID)
            *_, (final, _) = list(assoc.send_c_move(query, "MOVEDEST", StudyRootQueryRetrieveInformationModelMove))
            assoc.release()
            assert int(final.Status) == 0x0000
            assert sorted(receiver.datasets()) == sorted(ds.SOPInstanceUID for ds in series)
        finally:
            stop_process(running.process)
