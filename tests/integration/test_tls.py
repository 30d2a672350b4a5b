"""TLS on the DICOM listener (pynetdicom and dcmtk peers, client certificates) and on the HTTP
server, with certificates made for the test run."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.uid import CTImageStorage
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification

from pacs import tls
from pacs.config import ConfigError, Settings
from pacs.dimse.server import DicomServer
from pacs.index.remote_aes import RemoteAE
from pacs.services import Services
from tests.support.certs import CertSet, KeyPair, make_certs
from tests.support.dimse import (
    CALLING_AE,
    dcmtk,
    echo_status,
    running_listener,
    scu,
)
from tests.support.factories import make_ct
from tests.support.s3server import free_port
from tests.support.server import running_server


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertSet:
    return make_certs(tmp_path_factory.mktemp("certs"))


@contextmanager
def tls_listener(services: Services, certs: CertSet, **changes: Any) -> Iterator[DicomServer]:
    """The listener with its TLS port (both on free ports); TESTSCU is a known remote AE."""
    if services.remote_aes.find(CALLING_AE) is None:
        services.remote_aes.add(RemoteAE(CALLING_AE, "127.0.0.1", 104))
    with running_listener(
        services,
        dicom_tls_port=0,
        dicom_tls_cert=str(certs.server.cert),
        dicom_tls_key=str(certs.server.key),
        **changes,
    ) as server:
        yield server


def tls_port(server: DicomServer) -> int:
    assert server.tls_port is not None, "the TLS listener is not running"
    return server.tls_port


@contextmanager
def peer_association(
    port: int, certs: CertSet | None, client: KeyPair | None = None, contexts: Any = (Verification,)
) -> Iterator[Association]:
    """An association attempt from a pynetdicom peer: over TLS trusting `certs`' CA (presenting
    `client` when given), or plain TCP when `certs` is None. Its socket is closed on exit: when the
    listener ends a connection with the request unread the peer gets a reset, and pynetdicom's
    requestor then leaves its socket open (AssociationSocket._shutdown_socket skips close() when
    shutdown() fails with ENOTCONN)."""
    opened: list[socket.socket] = []
    tls_args = None if certs is None else (certs.client_context(client), "localhost")
    peer = scu(list(contexts))
    peer.connection_timeout = 5  # the TLS handshake is part of connecting: a stalled one fails the test
    assoc = peer.associate(
        "127.0.0.1",
        port,
        ae_title="MINIPACS",
        tls_args=tls_args,
        evt_handlers=[(evt.EVT_CONN_OPEN, lambda event: opened.append(event.assoc.dul.socket.socket))],
    )
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        for sock in opened:
            sock.close()


def peer_echo_status(port: int, certs: CertSet | None, client: KeyPair | None = None) -> int | None:
    """Status of one C-ECHO (see peer_association); None when the association is not established."""
    with peer_association(port, certs, client) as assoc:
        return int(assoc.send_c_echo().Status) if assoc.is_established else None


# ---- DICOM TLS listener: pynetdicom peers --------------------------------------------------


def test_echo_and_store_over_tls(services: Services, certs: CertSet) -> None:
    ds = make_ct(PatientID="P-TLS")
    with tls_listener(services, certs) as server:
        with peer_association(tls_port(server), certs, contexts=[Verification, CTImageStorage]) as assoc:
            assert assoc.is_established
            connection = assoc.dul.socket.socket  # type: ignore[union-attr]
            assert isinstance(connection, ssl.SSLSocket) and connection.version() in ("TLSv1.2", "TLSv1.3")
            assert int(assoc.send_c_echo().Status) == 0
            assert int(assoc.send_c_store(ds).Status) == 0
        assert echo_status(server.port) == 0  # the plain listener is still there

    [stored] = services.index.locate(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    with services.blobs.open(stored.blob_key) as blob:
        kept = pydicom.dcmread(blob)
    assert kept.PatientID == "P-TLS" and kept.PixelData == ds.PixelData


def test_plain_peer_on_tls_port_is_turned_away_and_listener_keeps_serving(services: Services, certs: CertSet) -> None:
    with tls_listener(services, certs) as server:
        port = tls_port(server)
        assert peer_echo_status(port, None) is None  # a plain A-ASSOCIATE-RQ is no TLS ClientHello
        # A peer that connects and says nothing must not hold up the handshakes of others.
        with socket.create_connection(("127.0.0.1", port)):
            started = time.monotonic()
            assert peer_echo_status(port, certs) == 0
            assert time.monotonic() - started < 5
        assert peer_echo_status(port, certs) == 0
        assert echo_status(server.port) == 0


def test_server_certificate_is_checked_by_the_peer(services: Services, certs: CertSet, tmp_path: Path) -> None:
    other = make_certs(tmp_path / "other")  # another CA: the peer must not trust our listener
    with tls_listener(services, certs) as server:
        assert peer_echo_status(tls_port(server), other) is None


def test_client_certificate_required_with_ca(services: Services, certs: CertSet) -> None:
    with tls_listener(services, certs, dicom_tls_ca=str(certs.ca)) as server:
        port = tls_port(server)
        assert peer_echo_status(port, certs) is None  # no client certificate
        assert peer_echo_status(port, certs, certs.stranger) is None  # one the CA did not sign
        assert peer_echo_status(port, certs, certs.client) == 0
        assert echo_status(server.port) == 0  # the plain listener asks for no certificate


# ---- DICOM TLS listener: dcmtk ---------------------------------------------------------------


def echoscu(port: int, *tls_options: str | Path) -> int:
    """Exit status of Debian's echoscu against the listener (dcmtk checks our certificate: +cf)."""
    return dcmtk("echoscu", *tls_options, "-aet", CALLING_AE, "-aec", "MINIPACS", "127.0.0.1", port).returncode


def test_dcmtk_echoscu_with_client_certificate(services: Services, certs: CertSet) -> None:
    with_certificate = ("+tls", certs.client.key, certs.client.cert, "+cf", certs.ca)
    with tls_listener(services, certs, dicom_tls_ca=str(certs.ca)) as server:
        port = tls_port(server)
        assert echoscu(port, *with_certificate) == 0
        assert echoscu(port, "+tla", "+cf", certs.ca) != 0  # no client certificate
        assert echoscu(port) != 0  # plain TCP
        assert echoscu(port, *with_certificate) == 0  # still serving


def test_dcmtk_anonymous_tls_when_no_ca_is_set(services: Services, certs: CertSet, tmp_path: Path) -> None:
    with tls_listener(services, certs) as server:
        assert echoscu(tls_port(server), "+tla", "+cf", certs.ca) == 0
        assert echoscu(tls_port(server), "+tla", "+cf", make_certs(tmp_path).ca) != 0  # untrusted


# ---- HTTPS and `minipacs serve` ----------------------------------------------------------------


def test_serve_over_https_with_dicom_tls(sqlite_settings: Settings, certs: CertSet) -> None:
    dicom_port, dicom_tls_port = free_port(), free_port()
    env = {
        "MINIPACS_AUTH": "off",
        "MINIPACS_HTTP_TLS_CERT": str(certs.server.cert),
        "MINIPACS_HTTP_TLS_KEY": str(certs.server.key),
        "MINIPACS_DICOM_PORT": str(dicom_port),
        "MINIPACS_DICOM_TLS_PORT": str(dicom_tls_port),
        "MINIPACS_DICOM_TLS_CERT": str(certs.server.cert),
        "MINIPACS_DICOM_TLS_KEY": str(certs.server.key),
        "MINIPACS_DICOM_ALLOWLIST": "off",
    }
    trust = certs.client_context()
    log_path = sqlite_settings.data_dir.parent / "server.log"
    with running_server(sqlite_settings, extra_env=env, verify=trust, log_path=log_path) as url:
        assert url.startswith("https://")
        answer = httpx.get(f"{url}/health", verify=trust)
        assert answer.status_code == 200
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/health")  # the system CAs do not vouch for the test certificate
        with pytest.raises(httpx.TransportError):
            httpx.get(url.replace("https://", "http://", 1) + "/health", timeout=5)
        assert echoscu(dicom_tls_port, "+tla", "+cf", certs.ca) == 0
        assert peer_echo_status(dicom_tls_port, certs) == 0
        announced = log_path.read_text()
    assert f"Health:    {url}/health" in announced
    assert f"DICOM TLS: MINIPACS on 127.0.0.1:{dicom_tls_port}" in announced


@pytest.mark.parametrize(
    ("variable", "wrong"),
    [("MINIPACS_DICOM_TLS_CERT", "missing.pem"), ("MINIPACS_HTTP_TLS_KEY", "missing.key")],
)
def test_serve_refuses_unreadable_tls_files(
    sqlite_settings: Settings, certs: CertSet, variable: str, wrong: str
) -> None:
    env = {
        **os.environ,
        "MINIPACS_DATA_DIR": str(sqlite_settings.data_dir),
        "MINIPACS_HTTP_PORT": str(free_port()),
        "MINIPACS_DICOM_PORT": str(free_port()),
        "MINIPACS_DICOM_TLS_PORT": str(free_port()),
    }
    for kind in ("HTTP", "DICOM"):
        env[f"MINIPACS_{kind}_TLS_CERT"] = str(certs.server.cert)
        env[f"MINIPACS_{kind}_TLS_KEY"] = str(certs.server.key)
    env[variable] = str(sqlite_settings.data_dir.parent / wrong)
    command = [sys.executable, "-m", "pacs.cli", "serve"]
    result = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"configuration error: {variable}: cannot read" in result.stderr
    assert "Traceback" not in result.stderr


def test_tls_file_mistakes_are_config_errors(sqlite_settings: Settings, certs: CertSet) -> None:
    mismatched = sqlite_settings.replace(dicom_tls_cert=str(certs.server.cert), dicom_tls_key=str(certs.client.key))
    with pytest.raises(ConfigError, match="MINIPACS_DICOM_TLS_CERT / MINIPACS_DICOM_TLS_KEY"):
        tls.dicom_server_context(mismatched)
    not_a_ca = sqlite_settings.replace(
        dicom_tls_cert=str(certs.server.cert), dicom_tls_key=str(certs.server.key), dicom_tls_ca=str(certs.server.key)
    )
    with pytest.raises(ConfigError, match="MINIPACS_DICOM_TLS_CA"):
        tls.dicom_server_context(not_a_ca)
    http = sqlite_settings.replace(http_tls_cert=str(certs.ca), http_tls_key=str(certs.server.key))
    with pytest.raises(ConfigError, match="MINIPACS_HTTP_TLS_CERT"):
        tls.check_files(http)
    assert tls.dicom_server_context(sqlite_settings) is None
