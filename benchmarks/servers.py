"""Start and stop the servers a benchmark run needs: minipacs, Orthanc, a moto S3 server, and
fresh PostgreSQL databases. Everything binds to loopback on free ports, lives in temp folders,
and is torn down by the context managers even when the run is interrupted.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ORTHANC_BINARY = Path("/usr/sbin/Orthanc")
ORTHANC_PLUGINS = Path("/usr/share/orthanc/plugins")
PG_ADMIN_DSN = os.environ.get("MINIPACS_BENCH_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
STARTUP_TIMEOUT = 60.0


@dataclass
class Server:
    """A DICOMweb server under test: its DICOMweb root and, when we started it, its process."""

    name: str
    dicomweb_url: str
    pid: int | None = None
    description: str = ""
    helper_pids: list[int] = field(default_factory=list)  # services it depends on (the S3 server)
    database: str | None = None  # its PostgreSQL database
    notes: list[str] = field(default_factory=list)
    dicom_port: int | None = None  # its DICOM listener (loopback), when we started it
    ae_title: str = ""
    receiver_port: int | None = None  # where the C-MOVE destination registered on it listens


SOURCE_ROOT = Path(__file__).resolve().parent.parent


def source_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` for a minipacs process that runs this checkout's code, not whatever copy an
    editable install points at (the server starts in its data folder, away from this tree)."""
    paths = [str(SOURCE_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    return {**env, "PYTHONPATH": os.pathsep.join(paths)}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def orthanc_available() -> bool:
    return ORTHANC_BINARY.exists() and (ORTHANC_PLUGINS / "libOrthancDicomWeb.so").exists()


def orthanc_version() -> str:
    if not ORTHANC_BINARY.exists():
        return "not installed"
    out = subprocess.run([str(ORTHANC_BINARY), "--version"], check=False, capture_output=True, text=True, timeout=30).stdout
    return out.splitlines()[0].split()[-1] if out else "unknown"


# ---- processes ----------------------------------------------------------------------------

@contextmanager
def running_process(command: list[str], *, env: dict[str, str], cwd: Path, log_name: str) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` in a session of its own (so a Ctrl-C reaches us first and we stop it
    cleanly) with output to a log file in ``cwd``; stop it and its children on exit."""
    log = (cwd / log_name).open("wb")
    proc = subprocess.Popen(command, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            start_new_session=True)
    try:
        yield proc
    finally:
        stop_process_group(proc)
        log.close()


def stop_process_group(proc: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """SIGTERM the process group we created for ``proc``, then SIGKILL whatever is left."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM:  # leader gone; make sure no worker outlives it
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return


def wait_until_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = STARTUP_TIMEOUT,
                     *, any_status: bool = False) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}; log:\n{_tail(log)}")
        try:
            status = httpx.get(url, timeout=2.0).status_code
            if status == 200 or any_status:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server did not answer {url} within {timeout:.0f} s; log:\n{_tail(log)}")


def _tail(path: Path, size: int = 3000) -> str:
    try:
        return path.read_bytes()[-size:].decode(errors="replace")
    except OSError:
        return "(no log)"


_removal_deferred: list[Path] | None = None  # inside removal_at_end(): folders left to remove
_base: Path | None = None


def _work_base() -> Path:
    """The folder of this process's temp folders. On ext4 it gets the T attribute, so that its
    subfolders are spread over the disk like top-level folders: each server then writes where
    no earlier run's files were deleted lately, which ext4 without a journal makes every file
    creation scan past (seen to cost minipacs a third of its kernel time in STOW-RS, in /tmp
    after a test run). Where chattr cannot set it, the folders are made as usual."""
    global _base
    if _base is None:
        _base = Path(tempfile.mkdtemp(prefix="bench-work-"))
        subprocess.run(["chattr", "+T", str(_base)], check=False, capture_output=True)
        atexit.register(shutil.rmtree, _base, ignore_errors=True)
    return _base


FAILED_LOGS = Path("bench-failed-logs")


@contextmanager
def temp_folder(prefix: str) -> Iterator[Path]:
    """A folder removed when the run ends; when the block fails, its logs are kept first, in
    FAILED_LOGS (under the current folder)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=_work_base()))
    try:
        yield path
    except BaseException:
        _keep_logs(path)
        raise
    finally:
        if _removal_deferred is not None:
            _removal_deferred.append(path)
        else:
            shutil.rmtree(path, ignore_errors=True)


def _keep_logs(folder: Path) -> None:
    for log in folder.rglob("*.log"):
        kept = FAILED_LOGS / folder.name / log.relative_to(folder)
        try:
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log, kept)
        except OSError:
            continue
        print(f"[bench] the run failed: kept {kept}", file=sys.stderr)


@contextmanager
def removal_at_end() -> Iterator[None]:
    """Keep the temp folders of a whole run until it ends: deleting one server's 12,000 files
    would make the next server measured pay for the inode scan described in _work_base."""
    global _removal_deferred
    _removal_deferred = []
    try:
        yield
    finally:
        folders, _removal_deferred = _removal_deferred, None
        for path in folders:
            shutil.rmtree(path, ignore_errors=True)


# ---- PostgreSQL and S3 --------------------------------------------------------------------

@contextmanager
def fresh_database(label: str) -> Iterator[str]:
    """Create an empty database on the local PostgreSQL; drop it (forcibly) afterwards."""
    import psycopg

    name = f"bench_{label}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_available() -> str | None:
    """None when the local PostgreSQL answers, else the reason it does not."""
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=5):
            return None
    except Exception as exc:  # noqa: BLE001  # driver missing, server down, auth refused: all mean "skip"
        return f"PostgreSQL unavailable ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"


@contextmanager
def running_moto(workdir: Path) -> Iterator[tuple[str, int]]:
    """A moto S3 server on a free loopback port; yields its endpoint URL and process id."""
    script = Path(sys.executable).parent / "moto_server"
    prog = [str(script)] if script.exists() else [sys.executable, "-m", "moto.server"]
    port = free_port()
    with running_process([*prog, "-H", "127.0.0.1", "-p", str(port)], env={**os.environ, **S3_ENV},
                         cwd=workdir, log_name="moto.log") as proc:
        endpoint = f"http://127.0.0.1:{port}"
        wait_until_ready(endpoint + "/", proc, workdir / "moto.log", any_status=True)
        yield endpoint, proc.pid


# ---- minipacs -----------------------------------------------------------------------------

MINIPACS_AE = "MINIPACS"
ORTHANC_AE = "ORTHANC"
CALLING_AE = "BENCHSCU"  # the benchmark's DIMSE clients (Orthanc answers C-FIND/C-MOVE/C-GET to known AEs only)
RECEIVER_AE = "BENCHSCP"  # the storescp that C-MOVE sends to


@contextmanager
def running_minipacs(backend: str, workers: int, qido_max_limit: int, storage: str = "s3",
                     receiver_port: int | None = None) -> Iterator[Server]:
    """minipacs on ``backend``; on postgres its blobs go to ``storage`` (s3: a moto server, or folder).
    With ``receiver_port``, RECEIVER_AE at that loopback port is its one remote AE (C-MOVE destination)."""
    with ExitStack() as stack:
        data = stack.enter_context(temp_folder("minipacs-bench-"))
        port, dicom_port = free_port(), free_port()
        env = {**os.environ, "MINIPACS_DATA_DIR": str(data / "data"), "MINIPACS_HTTP_PORT": str(port),
               "MINIPACS_HTTP_WORKERS": str(workers or "auto"), "MINIPACS_QIDO_MAX_LIMIT": str(qido_max_limit),
               "MINIPACS_AUTH": "off", "MINIPACS_LOG_LEVEL": "warning", "MINIPACS_DICOM_PORT": str(dicom_port),
               "MINIPACS_DICOM_HOST": "127.0.0.1", "MINIPACS_AE_TITLE": MINIPACS_AE, "MINIPACS_HL7_PORT": "off",
               "MINIPACS_REMOTE_AES": f"{RECEIVER_AE}@127.0.0.1:{receiver_port}" if receiver_port else ""}
        env.pop("MINIPACS_CONFIG", None)
        helpers: list[int] = []
        database: str | None = None
        description = "SQLite index + folder storage"
        if backend == "postgres":
            database = stack.enter_context(fresh_database("minipacs"))
            env["MINIPACS_DATABASE_URL"] = f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}"
            description = "PostgreSQL index + folder storage"
            if storage == "s3":
                endpoint, moto_pid = stack.enter_context(running_moto(data))
                helpers.append(moto_pid)
                env.update({**S3_ENV, "MINIPACS_STORAGE_URL": "s3://minipacs-bench/blobs",
                            "MINIPACS_S3_ENDPOINT_URL": endpoint})
                description = "PostgreSQL index + S3 (moto server on loopback)"
        command = [sys.executable, "-m", "pacs.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
        proc = stack.enter_context(running_process(command, env=source_env(env), cwd=data, log_name="minipacs.log"))
        wait_until_ready(f"http://127.0.0.1:{port}/health", proc, data / "minipacs.log")
        stack.callback(_stacks_if_failed, proc)
        yield Server("minipacs", f"http://127.0.0.1:{port}/dicom-web", proc.pid,
                     f"{description}, {workers or 'one per core (auto)'} worker process(es)", helper_pids=helpers, database=database,
                     dicom_port=dicom_port, ae_title=MINIPACS_AE, receiver_port=receiver_port)


def _stacks_if_failed(proc: subprocess.Popen[bytes]) -> None:
    """When the run failed, every minipacs process writes its threads' stacks to the log (SIGUSR1),
    which the failed run keeps: where a stuck server was waiting."""
    if sys.exc_info()[0] is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGUSR1)
    except OSError:
        return
    time.sleep(1.0)


# ---- Orthanc ------------------------------------------------------------------------------

def orthanc_config(work: Path, http_port: int, dicom_port: int, database: str | None,
                   overrides: dict[str, Any], receiver_port: int | None = None) -> dict[str, Any]:
    """With ``receiver_port``, RECEIVER_AE (the C-MOVE destination) and CALLING_AE (so that the
    benchmark may C-FIND, C-MOVE and C-GET) are registered DICOM modalities at that port."""
    plugins = [str(ORTHANC_PLUGINS / "libOrthancDicomWeb.so")]
    config: dict[str, Any] = {
        "Name": "BENCH", "HttpPort": http_port, "DicomPort": dicom_port, "DicomAet": ORTHANC_AE,
        "StorageDirectory": str(work / "storage"), "IndexDirectory": str(work / "index"),
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "Plugins": plugins,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    if receiver_port:
        config["DicomModalities"] = {ae: [ae, "127.0.0.1", receiver_port] for ae in (RECEIVER_AE, CALLING_AE)}
    if database is not None:
        plugins.append(str(ORTHANC_PLUGINS / "libOrthancPostgreSQLIndex.so"))
        config["PostgreSQL"] = {"EnableIndex": True, "EnableStorage": False, "Host": "127.0.0.1", "Port": 5432,
                                "Database": database, "Username": "postgres", "Password": ""}
    config.update(overrides)
    return config


@contextmanager
def running_orthanc(backend: str, overrides: dict[str, Any], receiver_port: int | None = None) -> Iterator[Server]:
    with ExitStack() as stack:
        work = stack.enter_context(temp_folder("orthanc-bench-"))
        database = stack.enter_context(fresh_database("orthanc")) if backend == "postgres" else None
        port, dicom_port = free_port(), free_port()
        config = orthanc_config(work, port, dicom_port, database, overrides, receiver_port)
        (work / "config.json").write_text(json.dumps(config, indent=2))
        env = {**os.environ, "TCP_NODELAY": "1"}
        proc = stack.enter_context(running_process([str(ORTHANC_BINARY), str(work / "config.json")],
                                                   env=env, cwd=work, log_name="orthanc.log"))
        wait_until_ready(f"http://127.0.0.1:{port}/system", proc, work / "orthanc.log")
        description = ("PostgreSQL index + folder storage (no S3 plugin in Debian)" if database
                       else "SQLite index + folder storage")
        notes = [f"Orthanc settings changed from defaults: {', '.join(sorted(overrides))}"] if overrides else []
        yield Server("Orthanc", f"http://127.0.0.1:{port}/dicom-web", proc.pid,
                     f"{description}, Orthanc {orthanc_version()} defaults", notes=notes, database=database,
                     dicom_port=dicom_port, ae_title=str(config["DicomAet"]), receiver_port=receiver_port)
