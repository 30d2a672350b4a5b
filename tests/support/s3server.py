"""Run a throwaway S3-compatible server (moto) for integration tests.

Usage::

    with running_s3_server() as endpoint, pytest.MonkeyPatch.context() as mp:
        for name, value in s3_test_env().items():
            mp.setenv(name, value)
        store = S3BlobStore("bucket", endpoint_url=endpoint, create_bucket=True)

The server gets fake credentials in its own environment, but boto3 clients read credentials
from the *caller's* environment, so callers must set ``s3_test_env()`` there too (otherwise
boto3 raises NoCredentialsError, or signs with a developer's real keys).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.processes import stop_process

STARTUP_TIMEOUT = 20.0
_POLL_INTERVAL = 0.05
_START_ATTEMPTS = 3


def s3_test_env() -> dict[str, str]:
    """Environment variables boto3 needs to talk to the test server."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _moto_command(port: int) -> list[str]:
    # The script installed alongside this interpreter, else the module run by it. A
    # moto_server found on PATH is not used: it may belong to another Python (pyenv shims).
    script = Path(sys.executable).parent / "moto_server"
    prog = [str(script)] if script.exists() else [sys.executable, "-m", "moto.server"]
    return [*prog, "-H", "127.0.0.1", "-p", str(port)]


def _port_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _wait_until_listening(proc: subprocess.Popen[bytes], port: int, deadline: float) -> bool:
    """True once ``port`` accepts connections; False if the process exited first."""
    while time.monotonic() < deadline:
        if _port_answers(port):
            return True
        try:
            # Doubles as the poll delay and as an early-exit check (port taken, import error).
            proc.wait(timeout=_POLL_INTERVAL)
            return False
        except subprocess.TimeoutExpired:
            pass
    raise TimeoutError(f"moto server did not listen on port {port} within {STARTUP_TIMEOUT:.0f} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    stop_process(proc, timeout=5)


@contextmanager
def running_s3_server() -> Iterator[str]:
    """Start moto on a free local port, yield its endpoint URL, stop it on exit."""
    env = {**os.environ, **s3_test_env()}
    deadline = time.monotonic() + STARTUP_TIMEOUT
    with tempfile.TemporaryFile() as log:
        for _ in range(_START_ATTEMPTS):
            port = free_port()
            # The server logs every request; a file (not a pipe) can never fill up and block it.
            proc = subprocess.Popen(
                _moto_command(port), env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
            try:
                started = _wait_until_listening(proc, port, deadline)
            except BaseException:
                _stop(proc)
                raise
            if started:
                break
            # Most likely another process grabbed the free port between probe and bind.
        else:
            log.seek(0)
            tail = log.read()[-2000:].decode(errors="replace")
            raise RuntimeError(f"moto server failed to start:\n{tail}")
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            _stop(proc)
