"""Run `minipacs serve` as a real process for tests that need a server on a socket."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from pacs.config import Settings
from tests.support.processes import stop_process
from tests.support.s3server import free_port

STARTUP_TIMEOUT = 30.0


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes `minipacs serve` use these settings."""
    env = {"MINIPACS_DATA_DIR": str(settings.data_dir), "MINIPACS_DUPLICATE_POLICY": settings.duplicate_policy}
    if settings.database_url:
        env["MINIPACS_DATABASE_URL"] = settings.database_url
    if settings.storage_url:
        env["MINIPACS_STORAGE_URL"] = settings.storage_url
    if settings.s3_endpoint_url:
        env["MINIPACS_S3_ENDPOINT_URL"] = settings.s3_endpoint_url
    if settings.s3_region:
        env["MINIPACS_S3_REGION"] = settings.s3_region
    return env


def create_user(settings: Settings, role: str, *, password: str | None = None, **user: str) -> tuple[str, str]:
    """A new user of `role` in the archive these settings name: (user name, API token)."""
    from pacs.services import Services

    services = Services.build(settings)
    try:
        name = f"{role}-{uuid.uuid4().hex[:8]}"
        services.accounts.add_user(name, role, password, **user)
        return name, services.accounts.issue_token(name).secret
    finally:
        services.close()


@contextmanager
def running_server(
    settings: Settings,
    *,
    log_path: Path | None = None,
    extra_env: dict[str, str] | None = None,
    verify: ssl.SSLContext | bool = True,
    arguments: list[str] | None = None,
) -> Iterator[str]:
    """Start `minipacs serve` on a free port; yield its base URL; stop it with SIGTERM. With
    MINIPACS_HTTP_TLS_CERT in `extra_env` the URL is https://, checked with `verify`."""
    port = free_port()
    env = {
        **os.environ, **settings_env(settings), "MINIPACS_HTTP_PORT": str(port), "MINIPACS_HL7_PORT": "off",
        "MINIPACS_DICOM_PORT": str(free_port()), **(extra_env or {}),
    }
    log = open(log_path or settings.data_dir.parent / "server.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "pacs.cli", "serve", *(arguments or [])], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    scheme = "https" if env.get("MINIPACS_HTTP_TLS_CERT") else "http"
    url = f"{scheme}://127.0.0.1:{port}"
    try:
        _wait_until_healthy(url, process, verify)
        yield url
    finally:
        stop_process(process)
        log.close()


def _wait_until_healthy(url: str, process: subprocess.Popen[bytes], verify: ssl.SSLContext | bool = True) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"minipacs serve exited with status {process.returncode} before answering")
        try:
            if httpx.get(f"{url}/health", timeout=1, verify=verify).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError("minipacs serve did not answer /health in time")
