"""How `minipacs serve` runs: listening sockets opened once, then one serving process or several
pre-forked worker processes.

Every worker is a whole server: HTTP, DICOM and HL7 over one Services (one database pool, one
group committer, one audit queue). With several workers the supervisor opens every listening
socket before forking, so the workers accept from the same sockets (the kernel hands each new
connection to one of them) and a port is taken, or refused, once. Python runs one thread at a
time per process; separate processes are what lets ingest use every core. Workers are forked
after the application's modules are imported, so those pages are shared rather than loaded once
per worker, and a worker that dies is replaced. Workers keep no state another worker needs:
everything lives in the database and the blob store.
"""

from __future__ import annotations

import faulthandler
import gc
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING

from pacs.config import Settings

if TYPE_CHECKING:
    from pacs.dimse.server import DicomServer
    from pacs.services import Services
    from worklist.hl7.listener import Hl7Listener

log = logging.getLogger(__name__)

RESTART_WINDOW = 30.0  # seconds: a worker dying more often than MAX_RESTARTS times in it stops the server
MAX_RESTARTS = 5
STOP_GRACE = 20.0  # seconds workers get to finish their requests on shutdown


@dataclass
class Listeners:
    """The sockets every worker serves; None for a service that is switched off."""

    http: socket.socket
    dicom: socket.socket | None = None
    dicom_tls: socket.socket | None = None
    hl7: socket.socket | None = None

    def close(self) -> None:
        for sock in (self.http, self.dicom, self.dicom_tls, self.hl7):
            if sock is not None:
                sock.close()


class ListenError(OSError):
    """A port cannot be listened on; the message names the service and address."""


def open_listeners(settings: Settings, *, dicom_tls: bool) -> Listeners:
    opened: list[socket.socket] = []

    def listen(service: str, host: str, port: int) -> socket.socket:
        try:
            sock = listening_socket(host, port)
        except OSError as exc:
            for other in opened:
                other.close()
            raise ListenError(f"cannot listen for {service} on {host}:{port}: {exc.strerror or exc}") from exc
        opened.append(sock)
        return sock

    listeners = Listeners(listen("HTTP", settings.http_host, settings.http_port))
    if settings.dicom_enabled:
        listeners.dicom = listen("DICOM", settings.dicom_host, settings.dicom_port)
        if dicom_tls:
            listeners.dicom_tls = listen("DICOM TLS", settings.dicom_host, settings.dicom_tls_port)
    if settings.hl7_enabled:
        listeners.hl7 = listen("HL7", settings.effective_hl7_host, settings.hl7_port)
    return listeners


def listening_socket(host: str, port: int, backlog: int = 512) -> socket.socket:
    """A TCP socket listening on (host, port). Non-blocking: when several workers wait on it,
    the ones that lose the race for a connection must go back to waiting, not block in accept."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


STALE_TEMP_SECONDS = 24 * 3600


def sweep_temp_files(settings: Settings) -> int:
    """Remove temp files a stopped or crashed server left in the data folder (partly received
    instances, spare files). Only day-old ones: another server sharing the folder may be
    receiving a large upload into a younger one."""
    removed = 0
    cutoff = time.time() - STALE_TEMP_SECONDS
    for folder in (settings.data_dir / "tmp", settings.data_dir / "tmp-spare"):
        for path in folder.glob("*") if folder.is_dir() else ():
            try:
                if path.is_file() and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except OSError:
                continue
    if removed:
        log.info("removed %d stale temp file(s) from %s", removed, settings.data_dir)
    return removed


def port_of(sock: socket.socket | None) -> int | None:
    return None if sock is None else int(sock.getsockname()[1])


# ---- one serving process ----------------------------------------------------------------

def serve_worker(settings: Settings, listeners: Listeners) -> None:
    """Serve HTTP, DICOM and HL7 in this process until SIGTERM or SIGINT."""
    import uvicorn

    from pacs.app import build_app
    from pacs.http_accept import BalancedServer
    from pacs.services import Services

    _tune_process(settings)
    services = Services.build(settings, migrate=False)
    dicom = hl7 = None
    try:
        dicom = _start_dicom(settings, services, listeners)
        hl7 = _start_hl7(settings, services, listeners)
        config = uvicorn.Config(
            build_app(settings, services, migrate=False),
            log_level=settings.log_level,
            access_log=False,  # request lines carry PHI (UIDs, names in query strings)
            timeout_graceful_shutdown=10,
            ssl_certfile=settings.http_tls_cert or None,
            ssl_keyfile=settings.http_tls_key or None,
            lifespan="on",
        )
        # uvicorn drains HTTP on SIGTERM, then re-raises the signal with the handler in place
        # before it started: make that one a clean exit, so the listeners below are stopped.
        signal.signal(signal.SIGTERM, _exit_cleanly)
        if settings.worker_count > 1:  # the other workers accept from the same socket
            BalancedServer(config, listeners.http).run()
        else:
            uvicorn.Server(config).run(sockets=[listeners.http])
    except SystemExit:
        pass
    finally:
        if hl7 is not None:
            hl7.stop()
        if dicom is not None:
            dicom.stop()
        services.close()


def _tune_process(settings: Settings) -> None:
    """Process-wide settings of a serving process."""
    from pydicom import config as pydicom_config

    # `kill -USR1 PID` writes every thread's stack to the log: what a stuck worker is waiting for.
    faulthandler.register(signal.SIGUSR1, all_threads=True, chain=False)

    # Temp files (pynetdicom's received C-STORE data sets among them) go to the data volume: a
    # RAM-backed /tmp would hold whole instances in memory, and storing them would be a copy
    # instead of a rename.
    temp = settings.data_dir / "tmp"
    temp.mkdir(parents=True, exist_ok=True)
    tempfile.tempdir = str(temp)
    # pydicom checks every value it converts against its VR's rules, only to warn: received
    # objects are kept as sent anyway, and the command sets of every DIMSE message pay for it.
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE


def _start_dicom(settings: Settings, services: Services, listeners: Listeners) -> DicomServer | None:
    if listeners.dicom is None:
        return None
    from pacs.dimse.server import DicomServer

    server = DicomServer(settings, services, listeners=(listeners.dicom, listeners.dicom_tls))
    server.start()
    return server


def _start_hl7(settings: Settings, services: Services, listeners: Listeners) -> Hl7Listener | None:
    if listeners.hl7 is None:
        return None
    from worklist.hl7.listener import Hl7Listener

    listener = Hl7Listener(settings, services, sock=listeners.hl7)
    listener.start()
    return listener


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


# ---- several worker processes -----------------------------------------------------------

class _Stop(Exception):
    pass


def supervise(settings: Settings, listeners: Listeners, workers: int) -> int:
    """Fork `workers` workers over the listeners, replace any that dies, stop them all on SIGTERM
    or SIGINT. Returns the exit status for the command."""
    _import_application(settings)
    faulthandler.register(signal.SIGUSR1, all_threads=True, chain=False)  # as in each worker
    gc.collect()
    gc.freeze()  # objects from before the fork stay out of the collector, so their pages stay shared
    children: dict[int, int] = {}  # pid -> worker number
    deaths: list[float] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        raise _Stop()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for number in range(workers):
            children[_fork_worker(settings, listeners, number)] = number
        while True:
            pid, status = os.wait()
            if pid not in children:
                continue
            number = children.pop(pid)
            log.error("worker %d (pid %d) ended unexpectedly (%s); starting another", number, pid,
                      _describe_status(status))
            deaths = [t for t in deaths if time.monotonic() - t < RESTART_WINDOW] + [time.monotonic()]
            if len(deaths) > MAX_RESTARTS:
                log.error("workers keep dying; stopping the server")
                _stop_children(children)
                return 1
            time.sleep(0.5)
            children[_fork_worker(settings, listeners, number)] = number
    except _Stop:
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the shutdown
        _stop_children(children)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _fork_worker(settings: Settings, listeners: Listeners, number: int) -> int:
    pid = os.fork()
    if pid:
        return pid
    # The worker. It never returns into the supervisor's code.
    status = 0
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        serve_worker(settings, listeners)
    except KeyboardInterrupt:
        pass
    except BaseException:
        log.exception("worker %d failed", number)
        status = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def _stop_children(children: dict[int, int]) -> None:
    for pid in children:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    while children and time.monotonic() < deadline:
        pid, _ = os.waitpid(-1, os.WNOHANG)
        if pid:
            children.pop(pid, None)
        else:
            time.sleep(0.05)
    for pid in children:
        log.warning("worker pid %d did not stop within %.0f s; killing it", pid, STOP_GRACE)
        _signal(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    children.clear()


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def _import_application(settings: Settings) -> None:
    """Import what workers run, before forking, so the pages are shared between them."""
    import uvicorn.protocols.http.httptools_impl  # noqa: F401

    import pacs.app
    import pacs.dimse.server
    import pacs.pixels.service
    import pacs.services  # noqa: F401
    import worklist.hl7.listener  # noqa: F401

    if settings.storage_url.startswith("s3://"):
        from storage.s3 import preload_models

        preload_models()
