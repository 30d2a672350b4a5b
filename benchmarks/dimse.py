"""DIMSE workloads against one server's DICOM port: C-STORE ingest with dcmtk's `storescu`, C-ECHO
and C-FIND round trips from a pynetdicom SCU kept on one association, C-MOVE of a series to
dcmtk's `storescp`, and C-GET of it with dcmtk's `getscu`.

dcmtk is called by absolute path (`/usr/bin/storescu` ...): pynetdicom installs console scripts
of the same names that come first on PATH. Every dcmtk process gets `TCP_NODELAY=1` in its
environment; without it Debian's dcmtk leaves Nagle's algorithm on and every exchange waits on a
delayed ACK.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from benchmarks import dicomgen
from benchmarks.servers import CALLING_AE, RECEIVER_AE, running_process
from benchmarks.workloads import BenchmarkError, Latency, Throughput

DCMTK = Path("/usr/bin")
TOOLS = ("storescu", "storescp", "movescu", "getscu", "echoscu")
PARALLEL = 4  # storescu processes (one association each) in the parallel C-STORE figure
TOOL_TIMEOUT = 1800.0
FIND_KINDS = ("PatientID", "PatientName *x*")  # the QIDO-RS query kinds also sent as C-FIND
FIND_KEYS = ("StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "StudyDescription",
             "ReferringPhysicianName", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
             "ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")


def tool(name: str) -> str:
    return str(DCMTK / name)


def tool_env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


def missing_tools() -> list[str]:
    return [name for name in TOOLS if not (DCMTK / name).exists()]


@dataclass
class Endpoint:
    """A server's DICOM listener."""

    host: str
    port: int
    ae_title: str


@dataclass
class CStoreFiles:
    """The C-STORE input: Part 10 files on disk, written before any clock starts."""

    single: Path  # every file of the one-association figure, in one folder
    parallel: list[Path]  # PARALLEL folders, a quarter of the other files each
    single_studies: list[str]
    parallel_studies: list[str]
    count: int  # files per figure
    single_bytes: int
    parallel_bytes: int


@dataclass
class DimseResult:
    store_1: Throughput | None = None
    store_4: Throughput | None = None
    echo: Latency | None = None
    find: dict[str, Latency] = field(default_factory=dict)
    move: Throughput | None = None
    get: Throughput | None = None
    notes: list[str] = field(default_factory=list)


# ---- input files --------------------------------------------------------------------------

def write_cstore_files(folder: Path, count: int, pool: list[bytes], *, study_size: int) -> CStoreFiles:
    """``count`` files for the one-association figure and ``count`` others split over PARALLEL
    folders, 512x512 CT in studies of ``study_size`` instances (the STOW-RS generator, other UIDs)."""
    single = folder / "single"
    single.mkdir(parents=True)
    single_studies, single_bytes = _write_files([single], count, pool, seed=21, study_size=study_size)
    parallel = [folder / f"parallel-{n}" for n in range(PARALLEL)]
    for path in parallel:
        path.mkdir()
    parallel_studies, parallel_bytes = _write_files(parallel, count, pool, seed=22, study_size=study_size)
    return CStoreFiles(single, parallel, single_studies, parallel_studies, count, single_bytes, parallel_bytes)


def _write_files(folders: list[Path], count: int, pool: list[bytes], *, seed: int,
                 study_size: int) -> tuple[list[str], int]:
    """Files 0..count-1 go to the folders in contiguous slices of (about) count/len(folders)."""
    studies = dicomgen.make_studies(max(1, -(-count // study_size)), seed=seed, accession_base=seed * 100_000)
    share = -(-count // len(folders))
    written = size = 0
    for study in studies:
        batch = min(study_size, count - written)
        for data in dicomgen.series_instances(study, batch, rows=512, columns=512, pool=pool):
            (folders[written // share] / f"{written:06d}.dcm").write_bytes(data)
            written += 1
            size += len(data)
    return [s.study_uid for s in studies], size


def read_into_cache(folders: list[Path]) -> int:
    """Read every input file once, so storescu finds them in the page cache whichever server
    goes first: this machine pages out memory left untouched for a while, the cached files too.
    Returns the bytes read."""
    total = 0
    for folder in folders:
        for path in sorted(folder.iterdir()):
            with path.open("rb") as fh:
                while chunk := fh.read(1 << 20):
                    total += len(chunk)
    return total


# ---- C-STORE with storescu ----------------------------------------------------------------

def cstore(endpoint: Endpoint, folders: list[Path], *, items: int, size: int, logs: Path) -> Throughput:
    """One `storescu +sd FOLDER` process (one association) per folder, all started together; the
    clock runs from the first start to the last exit."""
    commands = [[tool("storescu"), "-aet", CALLING_AE, "-aec", endpoint.ae_title, "-nh", "+sd",
                 endpoint.host, str(endpoint.port), str(folder)] for folder in folders]
    outcome = Throughput(items, size, 0.0)
    processes = []
    began = time.perf_counter()
    for n, command in enumerate(commands):
        log = (logs / f"storescu-{n}.log").open("wb")
        processes.append((subprocess.Popen(command, env=tool_env(), stdin=subprocess.DEVNULL, stdout=log,
                                           stderr=subprocess.STDOUT), log))
    try:
        for proc, log in processes:
            proc.wait(timeout=TOOL_TIMEOUT)
            log.close()
    finally:
        for proc, _ in processes:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    outcome.seconds = time.perf_counter() - began
    for n, (proc, _) in enumerate(processes):
        if proc.returncode != 0 and not outcome.first_error:
            outcome.first_error = f"storescu exited with {proc.returncode}: {_tail(logs / f'storescu-{n}.log')}"
    return outcome


def _tail(path: Path, size: int = 400) -> str:
    try:
        return " ".join(path.read_bytes()[-size:].decode(errors="replace").split())
    except OSError:
        return "(no log)"


# ---- a pynetdicom SCU on one association: C-ECHO, C-FIND ----------------------------------

def _nodelay(event: Any) -> None:
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _fix_pause_race() -> None:
    """Give this client minipacs's reactor (pacs.dimse.reactor). Stock pynetdicom's association
    thread marks itself paused on every turn of its loop, even while nothing pauses it: a request
    sent in that instant can have its response taken by the loop as an unexpected message, and
    then waits out the DIMSE timeout. A server that answers within a millisecond makes that
    likely (seen here: a C-ECHO waiting 120 s). The reactor also waits for work instead of
    polling every millisecond, which takes some of this client's own time out of the figures,
    for both servers alike. Installs once per process."""
    from pacs.dimse import reactor

    reactor.install()


class FindClient:
    """A Study Root C-FIND / C-ECHO SCU (pynetdicom) holding one association open."""

    def __init__(self, endpoint: Endpoint) -> None:
        import logging

        from pynetdicom import AE, _config, evt
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, Verification

        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        _fix_pause_race()
        # pynetdicom formats every message, PDU and identifier for its debug log whatever the
        # log level: time spent in this client, not in the server measured (same for both).
        _config.LOG_RESPONSE_IDENTIFIERS = False
        _config.LOG_REQUEST_IDENTIFIERS = False
        _config.LOG_HANDLER_LEVEL = "none"
        self.endpoint = endpoint
        self.model = StudyRootQueryRetrieveInformationModelFind
        ae = AE(ae_title=CALLING_AE)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_requested_context(Verification)
        self.assoc = ae.associate(endpoint.host, endpoint.port, ae_title=endpoint.ae_title,
                                  evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)])
        if not self.assoc.is_established:
            raise BenchmarkError(f"C-FIND SCU: association with {endpoint.ae_title}@{endpoint.host}:"
                                 f"{endpoint.port} was not accepted")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.assoc.is_established:
            self.assoc.release()

    def echo(self) -> None:
        began = time.monotonic()
        status = self.assoc.send_c_echo()
        if getattr(status, "Status", None) != 0:
            state = "still established" if self.assoc.is_established else "aborted or released"
            raise BenchmarkError(f"C-ECHO failed after {time.monotonic() - began:.1f} s (association {state}): "
                                 f"status {status or 'none'}")

    def find(self, keys: dict[str, str]) -> list[Any]:
        """Send one study-level C-FIND; return the matches once the final response arrived."""
        from pydicom.dataset import Dataset

        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        for keyword in FIND_KEYS:
            setattr(identifier, keyword, keys.get(keyword, ""))
        matches = []
        for status, answer in self.assoc.send_c_find(identifier, self.model):
            code = getattr(status, "Status", None)
            if code in (0xFF00, 0xFF01):
                matches.append(answer)
            elif code != 0x0000:
                raise BenchmarkError(f"C-FIND {keys}: status {code if code is None else hex(code)}")
        return matches


def echo_latency(client: FindClient, runs: int, warmup: int = 2) -> Latency:
    latency = Latency([])
    for n in range(warmup + runs):
        began = time.perf_counter()
        client.echo()
        if n >= warmup:
            latency.samples_ms.append((time.perf_counter() - began) * 1000)
    return latency


def find_latency(client: FindClient, queries: list[dict[str, str]], warmup: int = 2) -> Latency:
    """Each query's round trip, from sending the C-FIND-RQ to the final C-FIND-RSP."""
    latency = Latency([])
    for n, keys in enumerate(queries[:warmup] + queries):
        began = time.perf_counter()
        matches = client.find(keys)
        elapsed = (time.perf_counter() - began) * 1000
        if n >= warmup:
            latency.samples_ms.append(elapsed)
            latency.results.append(len(matches))
    return latency


def find_keys(query: str) -> dict[str, str]:
    """A QIDO-RS query string of the benchmark ("PatientID=P01", "PatientName=*KALO*") as C-FIND keys."""
    keyword, _, value = query.partition("=")
    return {keyword: value}


def stored_instances(client: FindClient, study_uids: list[str]) -> int:
    """Instances the server holds in these studies (NumberOfStudyRelatedInstances)."""
    total = 0
    for uid in study_uids:
        for answer in client.find({"StudyInstanceUID": uid}):
            total += int(answer.get("NumberOfStudyRelatedInstances", 0) or 0)
    return total


# ---- C-MOVE to storescp, C-GET with getscu ------------------------------------------------

@contextmanager
def receiver(port: int, work: Path) -> Iterator[Path]:
    """A dcmtk storescp (AE RECEIVER_AE) on ``port`` writing to a folder it yields."""
    received = work / "received"
    received.mkdir(parents=True, exist_ok=True)
    command = [tool("storescp"), "-aet", RECEIVER_AE, "-od", str(received), str(port)]
    with running_process(command, env=tool_env(), cwd=work, log_name="storescp.log") as proc:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise BenchmarkError(f"storescp exited with {proc.returncode}: {_tail(work / 'storescp.log')}")
            echo = subprocess.run([tool("echoscu"), "-aet", CALLING_AE, "-aec", RECEIVER_AE, "127.0.0.1", str(port)],
                                  check=False, env=tool_env(), capture_output=True, timeout=30)
            if echo.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise BenchmarkError(f"storescp on port {port} does not answer C-ECHO")
            time.sleep(0.2)
        yield received


def retrieve(kind: str, endpoint: Endpoint, study: str, series: str, *, items: int, size: int, received: Path,
             runs: int, logs: Path) -> Throughput:
    """C-MOVE (to the running storescp, whose folder is ``received``) or C-GET (getscu writing to
    ``received``) of one series, ``runs`` times; the median run is kept. A run whose files do not
    all arrive counts the missing ones as failures."""
    keys = ["-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={study}", "-k", f"SeriesInstanceUID={series}"]
    if kind == "move":
        command = [tool("movescu"), "-aet", CALLING_AE, "-aec", endpoint.ae_title, "-aem", RECEIVER_AE, "-S", *keys]
    else:
        command = [tool("getscu"), "-aet", CALLING_AE, "-aec", endpoint.ae_title, "-S", *keys, "-od", str(received)]
    command += [endpoint.host, str(endpoint.port)]
    outcomes = []
    for run in range(runs):
        _empty(received)
        log_path = logs / f"{kind}-{run}.log"
        with log_path.open("wb") as log:
            began = time.perf_counter()
            proc = subprocess.run(command, check=False, env=tool_env(), stdin=subprocess.DEVNULL, stdout=log,
                                  stderr=subprocess.STDOUT, timeout=TOOL_TIMEOUT)
            seconds = time.perf_counter() - began
        arrived = sum(1 for _ in received.iterdir())
        outcome = Throughput(items, size, seconds, failures=max(0, items - arrived))
        if outcome.failures or proc.returncode != 0:
            outcome.first_error = (f"{Path(command[0]).name} exited with {proc.returncode}, {arrived} of {items} "
                                   f"files arrived: {_tail(log_path)}")
        outcomes.append(outcome)
    _empty(received)
    outcomes.sort(key=lambda t: t.seconds)
    return outcomes[len(outcomes) // 2]


def _empty(folder: Path) -> None:
    for entry in folder.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
