"""The `minipacs` command line, run as a real process: help, import, db upgrade, serve."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from pacs.config import Settings
from pacs.index.database import open_engine
from pacs.index.schema import metadata
from pacs.services import Services
from tests.support import postgres
from tests.support.factories import make_ct, make_series, to_bytes
from tests.support.s3server import free_port

SCRIPT = Path(sys.executable).parent / "minipacs"


def minipacs(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `python -m pacs.cli ARGS` with a clean MINIPACS_* environment plus ``env``."""
    return subprocess.run(
        [sys.executable, "-m", "pacs.cli", *args], env=_environment(env), capture_output=True, text=True,
        timeout=timeout,
    )


def _environment(extra: dict[str, str] | None) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MINIPACS_")}
    return {**base, **(extra or {})}


@pytest.fixture
def data_env(tmp_path: Path) -> dict[str, str]:
    return {"MINIPACS_DATA_DIR": str(tmp_path / "data")}


# ---- help -----------------------------------------------------------------------------------


def test_console_script_prints_help() -> None:
    assert SCRIPT.exists(), "the minipacs console script is not installed (pip install -e .)"
    result = subprocess.run([str(SCRIPT), "--help"], env=_environment(None), capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: minipacs")
    for command in ("serve", "import", "db", "bench"):
        assert re.search(rf"^\s+{command}\s", result.stdout, re.MULTILINE), command


@pytest.mark.parametrize(
    ("command", "words"),
    [
        (["serve"], ["--host", "--port", "--workers", "--dicom-port", "--no-dicom"]),
        (["import"], ["paths", "--quiet"]),
        (["db"], ["upgrade"]),
        (["db", "upgrade"], ["usage: minipacs db upgrade"]),
        (["bench"], ["usage: minipacs bench"]),
    ],
)
def test_each_command_has_help(command: list[str], words: list[str]) -> None:
    result = minipacs(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: minipacs {' '.join(command)}")
    for word in words:
        assert word in result.stdout


def test_no_command_prints_help_and_fails(data_env: dict[str, str]) -> None:
    result = minipacs(env=data_env)
    assert result.returncode == 2
    assert "usage: minipacs" in result.stdout and "serve" in result.stdout


def test_db_without_subcommand_prints_db_help(data_env: dict[str, str]) -> None:
    result = minipacs("db", env=data_env)
    assert result.returncode == 2
    assert result.stdout.startswith("usage: minipacs db")
    assert "upgrade" in result.stdout


# ---- configuration errors ------------------------------------------------------------------------


BAD_SETTINGS = [
    ("MINIPACS_DUPLICATE_POLICY", "sometimes"),
    ("MINIPACS_HTTP_PORT", "abc"),
    ("MINIPACS_HTTP_PORT", "70000"),
    ("MINIPACS_DICOM_PORT", "-1"),
    ("MINIPACS_QIDO_MAX_LIMIT", "many"),
    ("MINIPACS_AE_TITLE", "A_TITLE_FAR_TOO_LONG"),
]


@pytest.mark.parametrize(("name", "value"), BAD_SETTINGS)
def test_bad_setting_exits_2_naming_the_variable(name: str, value: str, data_env: dict[str, str], tmp_path: Path) -> None:
    result = minipacs("db", "upgrade", env={**data_env, name: value})
    assert result.returncode == 2
    assert result.stderr.startswith("minipacs: configuration error:")
    assert name in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()  # nothing was created


@pytest.mark.parametrize("command", [["serve"], ["import", "/nonexistent"]])
def test_every_command_checks_the_settings_first(command: list[str], data_env: dict[str, str], tmp_path: Path) -> None:
    for name, value in BAD_SETTINGS[:2]:
        result = minipacs(*command, env={**data_env, name: value})
        assert result.returncode == 2, result.stdout
        assert name in result.stderr
    assert not (tmp_path / "data").exists()


def test_unreadable_config_file_exits_2(tmp_path: Path, data_env: dict[str, str]) -> None:
    config = tmp_path / "minipacs.toml"
    config.write_text("http_port = [unclosed\n")
    result = minipacs("--config", str(config), "db", "upgrade", env=data_env)
    assert result.returncode == 2
    assert str(config) in result.stderr
    missing = minipacs("db", "upgrade", env={**data_env, "MINIPACS_CONFIG": str(tmp_path / "nope.toml")})
    assert missing.returncode == 2 and "nope.toml" in missing.stderr


# ---- db upgrade -------------------------------------------------------------------------------


def _schema_differences(url: str) -> list[object]:
    engine = open_engine(url)
    try:
        with engine.connect() as conn:
            return list(compare_metadata(MigrationContext.configure(conn), metadata))
    finally:
        engine.dispose()


def test_db_upgrade_on_fresh_sqlite_is_idempotent(data_env: dict[str, str], tmp_path: Path) -> None:
    first = minipacs("db", "upgrade", env=data_env)
    assert first.returncode == 0, first.stderr
    database = tmp_path / "data" / "index.sqlite3"
    assert database.exists()
    assert re.fullmatch(rf"database sqlite:///{re.escape(str(database))} is at revision \w+\n", first.stdout)
    second = minipacs("db", "upgrade", env=data_env)
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout
    url = f"sqlite:///{database}"
    assert _schema_differences(url) == []
    engine = open_engine(url)
    try:
        assert {"patients", "studies", "series", "instances", "alembic_version"} <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


@pytest.fixture
def fresh_postgres() -> Iterator[str]:
    if not postgres.available():
        pytest.fail("PostgreSQL is not reachable at 127.0.0.1:5432")
    name = f"minipacs_cli_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres.ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        postgres.drop_database(name)


def test_db_upgrade_on_fresh_postgres_is_idempotent(fresh_postgres: str, data_env: dict[str, str]) -> None:
    url = postgres.sqlalchemy_url(fresh_postgres)
    # Trust authentication accepts any password: a handy way to check it is never printed.
    with_password = url.replace("postgres@", "postgres:s3cr3t-pw@", 1)
    env = {**data_env, "MINIPACS_DATABASE_URL": with_password}
    first = minipacs("db", "upgrade", env=env)
    assert first.returncode == 0, first.stderr
    assert f"/{fresh_postgres} is at revision" in first.stdout
    assert "s3cr3t-pw" not in first.stdout + first.stderr
    second = minipacs("db", "upgrade", env=env)
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout
    assert _schema_differences(url) == []


def test_db_upgrade_reports_an_unreachable_database(data_env: dict[str, str]) -> None:
    port = free_port()  # nothing listens there
    url = f"postgresql+psycopg://postgres:hidden-pw@127.0.0.1:{port}/nothing"
    result = minipacs("db", "upgrade", env={**data_env, "MINIPACS_DATABASE_URL": url})
    assert result.returncode != 0
    assert "hidden-pw" not in result.stdout + result.stderr


# ---- import ----------------------------------------------------------------------------------


def _tree(root: Path) -> dict[str, Path]:
    """A folder of mixed content: DICOM files at several depths, text, and a broken file."""
    series = make_series(3, PatientID="IMPORTED")
    other = make_ct(PatientID="IMPORTED-2")
    files = {
        "a.dcm": to_bytes(series[0]),
        "notes.txt": b"just some notes, not DICOM\n",
        "nested/b.dcm": to_bytes(series[1]),
        "nested/deeper/IM0001": to_bytes(series[2]),  # no extension, as from a DICOMDIR
        "nested/deeper/broken.dcm": to_bytes(other)[:-700],  # cut in the pixel data
        "z.dcm": to_bytes(other),
    }
    paths = {}
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        paths[name] = path
    return paths


def _summary(stdout: str) -> tuple[int, int, int, int]:
    match = re.search(r"stored (\d+), already present (\d+), rejected (\d+) \(of (\d+) files\)", stdout)
    assert match, stdout
    stored, present, rejected, total = (int(g) for g in match.groups())
    return stored, present, rejected, total


def test_import_tree_then_again(tmp_path: Path, data_env: dict[str, str]) -> None:
    source = tmp_path / "incoming"
    paths = _tree(source)
    before = {name: path.read_bytes() for name, path in paths.items()}

    first = minipacs("import", "--quiet", str(source), env=data_env)
    assert first.returncode == 0, first.stderr
    assert _summary(first.stdout) == (4, 0, 2, 6)
    rejected = {line.split(": ", 1)[0]: line for line in first.stdout.splitlines() if line.startswith("  rejected ")}
    assert set(rejected) == {f"  rejected {paths['notes.txt']}", f"  rejected {paths['nested/deeper/broken.dcm']}"}
    assert "truncated" in rejected[f"  rejected {paths['nested/deeper/broken.dcm']}"]

    second = minipacs("import", "--quiet", str(source), env=data_env)
    assert second.returncode == 0, second.stderr
    assert _summary(second.stdout) == (0, 4, 2, 6)

    # The sources are left as they were; the archive holds the four instances, byte for byte.
    assert {name: path.read_bytes() for name, path in paths.items()} == before
    services = Services.build(Settings.from_mapping({"data_dir": tmp_path / "data"}))
    try:
        assert services.index.counts() == {"patients": 2, "studies": 2, "series": 2, "instances": 4}
        import pydicom

        for name in ("a.dcm", "nested/b.dcm", "nested/deeper/IM0001", "z.dcm"):
            ds = pydicom.dcmread(paths[name])
            [stored] = services.index.locate(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
            assert b"".join(services.blobs.iter_range(stored.blob_key)) == before[name]
    finally:
        services.close()


def test_import_progress_goes_to_stderr(tmp_path: Path, data_env: dict[str, str]) -> None:
    source = tmp_path / "one"
    source.mkdir()
    (source / "x.dcm").write_bytes(to_bytes(make_ct()))
    result = minipacs("import", str(source), env=data_env)
    assert result.returncode == 0
    assert _summary(result.stdout) == (1, 0, 0, 1)
    assert "file" in result.stderr  # the progress bar
    assert "file/s" not in result.stdout


def test_import_of_files_and_missing_paths(tmp_path: Path, data_env: dict[str, str]) -> None:
    ds = make_ct()
    single = tmp_path / "single.dcm"
    single.write_bytes(to_bytes(ds))
    missing = tmp_path / "not-there"
    result = minipacs("--data-dir", str(tmp_path / "elsewhere"), "import", "--quiet", str(single), str(missing), env=data_env)
    assert result.returncode == 0, result.stderr
    assert _summary(result.stdout) == (1, 0, 0, 1)
    assert f"{missing}: no such file or folder" in result.stderr
    # --data-dir wins over MINIPACS_DATA_DIR.
    assert (tmp_path / "elsewhere" / "index.sqlite3").exists()
    assert not (tmp_path / "data").exists()


def test_import_skips_what_is_not_a_regular_file(tmp_path: Path, data_env: dict[str, str]) -> None:
    source = tmp_path / "odd"
    source.mkdir()
    (source / "good.dcm").write_bytes(to_bytes(make_ct()))
    (source / "dangling.dcm").symlink_to(tmp_path / "gone.dcm")
    os.mkfifo(source / "pipe.dcm")  # opening it would wait for a writer for ever
    result = minipacs("import", "--quiet", str(source), env=data_env, timeout=30)
    assert result.returncode == 0, result.stderr
    assert _summary(result.stdout) == (1, 0, 0, 1)
    assert f"{source / 'dangling.dcm'}: not a regular file, skipped" in result.stderr
    assert f"{source / 'pipe.dcm'}: not a regular file, skipped" in result.stderr
    assert "Traceback" not in result.stderr


def test_import_with_nothing_importable_fails(tmp_path: Path, data_env: dict[str, str]) -> None:
    source = tmp_path / "junk"
    source.mkdir()
    (source / "readme.txt").write_text("hello\n")
    result = minipacs("import", "--quiet", str(source), env=data_env)
    assert result.returncode == 1
    assert _summary(result.stdout) == (0, 0, 1, 1)


# ---- serve ------------------------------------------------------------------------------------------


class Server:
    def __init__(self, process: subprocess.Popen[str], log: Path, port: int, dicom_port: int, hl7_port: int) -> None:
        self.process, self.log, self.port, self.dicom_port = process, log, port, dicom_port
        self.hl7_port = hl7_port

    def output(self) -> str:
        return self.log.read_text()


@pytest.fixture
def server(tmp_path: Path, data_env: dict[str, str]) -> Iterator[Server]:
    port = free_port()
    log = tmp_path / "serve.log"
    # The DICOM listener gets a free port too: 11112 may be taken on a shared machine.
    dicom_port, hl7_port = free_port(), free_port()
    env = {**data_env, "MINIPACS_DICOM_PORT": str(dicom_port), "MINIPACS_HL7_PORT": str(hl7_port)}
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "pacs.cli", "serve", "--port", str(port)],
            env=_environment(env), stdout=out, stderr=subprocess.STDOUT, text=True,
        )
    running = Server(process, log, port, dicom_port, hl7_port)
    try:
        deadline = time.monotonic() + 30
        while "DICOMweb:" not in running.output() or not _answers(port):
            assert process.poll() is None, running.output()
            assert time.monotonic() < deadline, running.output()
            time.sleep(0.05)
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def first_admin_password(output: str) -> str:
    match = re.search(r"User: admin  Password: (\S+)", output)
    assert match, output
    return match.group(1)


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_serve_answers_and_stops_cleanly(server: Server, stop: signal.Signals, tmp_path: Path) -> None:
    root = f"http://127.0.0.1:{server.port}"
    assert f"DICOMweb:  {root}/dicom-web" in server.output()
    assert f"MINIPACS on 127.0.0.1:{server.dicom_port}" in server.output()
    assert _listening(server.dicom_port)
    assert f"HL7 v2:    MLLP on 127.0.0.1:{server.hl7_port}" in server.output()
    assert _listening(server.hl7_port)
    assert httpx.get(f"{root}/health").json() == {"status": "ok"}
    # Secure by default: nothing without a credential; the first administrator's password is
    # printed once at the first start.
    assert httpx.get(f"{root}/dicom-web/studies").status_code == 401
    auth = ("admin", first_admin_password(server.output()))
    studies = httpx.get(f"{root}/dicom-web/studies", headers={"Accept": "application/dicom+json"}, auth=auth)
    assert studies.status_code == 200 and studies.json() == []
    assert studies.headers["content-type"].startswith("application/dicom+json")
    # It stores too: the data folder given in the environment is the one used.
    body, content_type = _one_instance_body()
    stored = httpx.post(f"{root}/dicom-web/studies", content=body, headers={"Content-Type": content_type}, auth=auth)
    assert stored.status_code == 200
    assert len(list((tmp_path / "data" / "storage").rglob("*.dcm"))) == 1

    server.process.send_signal(stop)
    try:
        code = server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"minipacs serve did not stop on {stop.name}")
    assert code == 0, server.output()  # uvicorn re-raises the signal once drained; serve exits cleanly
    output = server.output()
    assert "Application shutdown complete" in output
    assert "Traceback" not in output
    assert not _answers(server.port)
    assert not _listening(server.dicom_port)
    assert not _listening(server.hl7_port)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _one_instance_body() -> tuple[bytes, str]:
    from tests.support.factories import stow_body

    return stow_body([make_ct()])


def test_serve_refuses_a_busy_port(tmp_path: Path, data_env: dict[str, str], server: Server) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pacs.cli", "serve", "--port", str(server.port), "--no-dicom", "--no-hl7"],
        env=_environment({"MINIPACS_DATA_DIR": str(tmp_path / "second")}), capture_output=True, text=True, timeout=30,
    )
    assert result.returncode != 0
    assert "address already in use" in (result.stdout + result.stderr).lower()
    assert _answers(server.port)  # the first one is unharmed


def test_bench_options_reach_the_benchmark_parser() -> None:
    # --quick and --target belong to the benchmark; an invalid choice proves they got there.
    result = minipacs("bench", "--quick", "--target", "nothing")
    assert result.returncode == 2
    assert "minipacs bench: error: argument --target: invalid choice: 'nothing'" in result.stderr
