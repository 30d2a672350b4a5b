"""`minipacs ae add|list|remove` and the DICOM listener of `minipacs serve`, as a user runs them
(separate processes, SQLite in a temp data folder)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.dimse import dcmtk, dcmtk_ok
from tests.support.s3server import free_port


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "MINIPACS_DATA_DIR": str(tmp_path / "data")}


def minipacs(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pacs.cli", *args], check=False, env=env, capture_output=True,
                          text=True, timeout=60)


def listed(env: dict[str, str]) -> list[list[str]]:
    result = minipacs(env, "ae", "list")
    assert result.returncode == 0, result.stderr
    return [line.split() for line in result.stdout.splitlines()]


def test_add_list_remove(env: dict[str, str]) -> None:
    assert listed(env) == [line.split() for line in ["no remote AEs; add one with: minipacs ae add NAME HOST PORT"]]
    added = minipacs(env, "ae", "add", "WORKSTATION", "10.0.0.5", "11113")
    assert added.returncode == 0, added.stderr
    assert "WORKSTATION" in added.stdout
    assert minipacs(env, "ae", "add", "VIEWER", "viewer.local", "104").returncode == 0

    again = minipacs(env, "ae", "add", "WORKSTATION", "10.0.0.6", "11113")
    assert again.returncode != 0
    assert "WORKSTATION already exists" in again.stderr

    # Entries from the setting are listed with the stored ones.
    with_setting = {**env, "MINIPACS_REMOTE_AES": "CONFIGURED@192.0.2.1:4242"}
    default = ["technologist", "access=all"]
    assert listed(with_setting) == [
        ["CONFIGURED", "192.0.2.1:4242", *default], ["VIEWER", "viewer.local:104", *default],
        ["WORKSTATION", "10.0.0.5:11113", *default],
    ]

    removed = minipacs(env, "ae", "remove", "WORKSTATION")
    assert removed.returncode == 0, removed.stderr
    assert listed(env) == [["VIEWER", "viewer.local:104", *default]]

    # A peer can be bound to a role and narrowed to storing or querying.
    narrowed = minipacs(env, "ae", "add", "READER", "10.0.0.7", "104", "--role", "radiologist", "--access", "query")
    assert narrowed.returncode == 0, narrowed.stderr
    assert ["READER", "10.0.0.7:104", "radiologist", "access=query"] in listed(env)
    wrong = minipacs(env, "ae", "add", "X", "10.0.0.8", "104", "--access", "everything")
    assert wrong.returncode != 0 and "access 'everything' is not one of all, store, query" in wrong.stderr
    missing = minipacs(env, "ae", "remove", "WORKSTATION")
    assert missing.returncode != 0
    assert "no remote AE WORKSTATION" in missing.stderr


INVALID = [
    ("ABCDEFGHIJKLMNOPQ", "104", "1 to 16"),  # 17 characters
    ("BACK\\SLASH", "104", "backslash"),
    ("ÜBERWEISER", "104", "ASCII"),  # AE titles are ASCII (PS3.5 6.2)
    ("GOOD", "0", "not a TCP port"),
    ("GOOD", "65536", "not a TCP port"),
    ("GOOD", "http", "invalid int value"),
]


def test_invalid_entries_are_refused(env: dict[str, str]) -> None:
    for name, port, says in INVALID:
        result = minipacs(env, "ae", "add", name, "127.0.0.1", port)
        assert result.returncode != 0, (name, port)
        assert says in result.stderr, (name, port, result.stderr)
        assert "Traceback" not in result.stderr
    assert listed(env)[0][0] == "no"  # nothing was stored


def test_serve_answers_echoscu_and_stops_on_sigterm(env: dict[str, str], tmp_path: Path) -> None:
    http_port, dicom_port = free_port(), free_port()
    # Only known calling AEs may associate by default.
    assert minipacs(env, "ae", "add", "KNOWNSCU", "127.0.0.1", "104").returncode == 0
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "pacs.cli", "serve"],
            env={**env, "MINIPACS_HTTP_PORT": str(http_port), "MINIPACS_DICOM_PORT": str(dicom_port),
                 "MINIPACS_HL7_PORT": "off",
                 "MINIPACS_AE_TITLE": "TESTPACS"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            # The DICOM listener starts before the HTTP side, so a healthy HTTP side means both.
            deadline = time.monotonic() + 30
            while True:
                assert process.poll() is None, log_path.read_text()
                try:
                    if httpx.get(f"http://127.0.0.1:{http_port}/health", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "minipacs serve did not start"
                time.sleep(0.05)
            result = dcmtk_ok("echoscu", "-v", "-aet", "KNOWNSCU", "-aec", "TESTPACS", "127.0.0.1", dicom_port)
            assert "Received Echo Response (Success)" in result.stderr + result.stdout
            stranger = dcmtk("echoscu", "-aet", "STRANGER", "-aec", "TESTPACS", "127.0.0.1", dicom_port)
            assert stranger.returncode != 0
            assert "Association Rejected" in stranger.stderr + stranger.stdout
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                code = process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                raise
    output = log_path.read_text()
    assert f"TESTPACS on 127.0.0.1:{dicom_port}" in output
    assert "Application shutdown complete" in output
    assert "Traceback" not in output
    # The port is free again: nothing answers.
    assert dcmtk("echoscu", "-to", "2", "-aec", "TESTPACS", "127.0.0.1", dicom_port).returncode != 0
    # uvicorn re-raises the SIGTERM it caught once HTTP is drained; serve turns it into a clean
    # exit so the DICOM listener is stopped too (a -15 here means it died instead).
    assert code == 0, output
