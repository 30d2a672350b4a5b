"""The listener under hostile or heavy use, on both backends: calling-AE allowlist, peers that
abort or vanish mid-transfer, garbage on the socket, and 20 simultaneous associations."""

from __future__ import annotations

import io
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelFind, Verification

from pacs.config import Settings
from pacs.dimse import server as dimse_server
from pacs.dimse.server import DicomServer
from pacs.index.remote_aes import RemoteAE
from pacs.services import Services
from tests.support.dimse import association, dcmtk, echo_status, running_listener, scu, temp_files
from tests.support.factories import make_ct, make_series
from tests.support.storage_listing import blob_keys

SUCCESS, PENDING = 0x0000, 0xFF00


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{message} not met within {timeout} s"
        time.sleep(0.01)


def association_outcome(port: int, ae_title: str) -> str:
    """"accepted", "rejected" or "failed" for an association from `ae_title`."""
    assoc = scu([Verification], ae_title=ae_title).associate("127.0.0.1", port, ae_title="MINIPACS")
    if assoc.is_established:
        status = int(assoc.send_c_echo().Status)
        assoc.release()
        return "accepted" if status == SUCCESS else "failed"
    return "rejected" if assoc.is_rejected else "failed"


# ---- calling-AE allowlist -------------------------------------------------------------------


def test_allowlist_admits_known_calling_aes_only(services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    # The listener re-reads the list every few seconds; a shorter period keeps the test short.
    monkeypatch.setattr(dimse_server, "_ALLOWLIST_REFRESH_SECONDS", 0.5)
    services.remote_aes.add(RemoteAE("KNOWN", "127.0.0.1", 11113))
    with running_listener(services, dicom_allowlist=True) as server:
        assert association_outcome(server.port, "KNOWN") == "accepted"
        assert association_outcome(server.port, "STRANGER") == "rejected"
        result = dcmtk("echoscu", "-aet", "STRANGER", "-aec", "MINIPACS", "127.0.0.1", server.port)
        assert result.returncode != 0 and "Rejected" in result.stderr + result.stdout

        # Changes take effect while the listener runs.
        services.remote_aes.add(RemoteAE("LATER", "127.0.0.1", 11114))
        services.remote_aes.remove("KNOWN")
        wait_until(lambda: association_outcome(server.port, "LATER") == "accepted", 5.0, "LATER admitted")
        assert association_outcome(server.port, "KNOWN") == "rejected"
        result = dcmtk("echoscu", "-aet", "LATER", "-aec", "MINIPACS", "127.0.0.1", server.port)
        assert result.returncode == 0, result.stderr


def test_allowlist_with_no_known_ae_admits_nobody(services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dimse_server, "_ALLOWLIST_REFRESH_SECONDS", 0.5)
    with running_listener(services, dicom_allowlist=True) as server:
        assert association_outcome(server.port, "ANYONE") == "rejected"
        services.remote_aes.add(RemoteAE("ANYONE", "127.0.0.1", 11113))
        wait_until(lambda: association_outcome(server.port, "ANYONE") == "accepted", 5.0, "ANYONE admitted")
        # Removing the last one closes the door again.
        services.remote_aes.remove("ANYONE")
        wait_until(lambda: association_outcome(server.port, "ANYONE") == "rejected", 5.0, "ANYONE refused")


def test_allowlist_off_admits_anyone(listener: DicomServer) -> None:
    assert association_outcome(listener.port, "WHOEVER") == "accepted"


# ---- peers that give up mid-transfer --------------------------------------------------------


def send_half_a_c_store(assoc: Association, ds: Dataset) -> socket.socket:
    """Send the command and about half the data set of a C-STORE, then nothing more."""
    context = next(c for c in assoc.accepted_contexts if c.abstract_syntax == CTImageStorage)
    assert context.context_id is not None
    syntax = context.transfer_syntax[0]
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = ds.SOPClassUID
    request.AffectedSOPInstanceUID = ds.SOPInstanceUID
    request.Priority = 2
    request.DataSet = io.BytesIO(encode(ds, syntax.is_implicit_VR, syntax.is_little_endian))  # type: ignore[arg-type]
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    fragments = list(message.encode_msg(context.context_id, 16384))
    assert len(fragments) > 4
    raw = assoc.dul.socket.socket  # type: ignore[union-attr]
    assert raw is not None
    for primitive in fragments[: len(fragments) // 2]:
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        raw.sendall(pdu.encode())
    return raw


@pytest.mark.parametrize("how", ["a-abort", "connection-drop"])
def test_peer_leaving_mid_store_leaves_nothing_behind(
    how: str, listener: DicomServer, services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pynetdicom receives a data set into a temp file (STORE_RECV_CHUNKED_DATASET); point the
    # temp folder at one of ours to see what stays there.
    receiving = tmp_path / "receiving"
    receiving.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(receiving))
    ds = make_ct(512)
    assoc = scu([CTImageStorage]).associate("127.0.0.1", listener.port, ae_title="MINIPACS")
    assert assoc.is_established
    raw = send_half_a_c_store(assoc, ds)
    wait_until(lambda: any(receiving.iterdir()), message="the listener receiving the data set")
    if how == "a-abort":
        assoc.abort()
    else:
        raw.shutdown(socket.SHUT_RDWR)
        raw.close()
        assoc.abort()  # only tidies up this side: the connection is already gone
    wait_until(lambda: not listener.ae.active_associations, message="the listener ending the association")

    assert services.index.counts()["instances"] == 0
    assert blob_keys(services) == set()
    assert temp_files(services) == []
    assert list(receiving.iterdir()) == []  # the partial data set is not kept
    # The listener still works, and the same instance can be sent again in full.
    with association(listener.port, [CTImageStorage]) as again:
        assert int(again.send_c_store(ds).Status) == SUCCESS
    assert services.index.counts()["instances"] == 1
    assert list(receiving.iterdir()) == []


def test_garbage_on_the_socket_is_survived(listener: DicomServer) -> None:
    for payload in (b"GET / HTTP/1.1\r\nHost: pacs\r\n\r\n", b"\x01\x00\x00\x00\x00\x04abc", b"\x04\x00\xff\xff\xff\xff"):
        with socket.create_connection(("127.0.0.1", listener.port), timeout=5) as sock:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            try:
                sock.recv(1024)  # an A-ABORT, or the connection closed
            except OSError:
                pass
        assert echo_status(listener.port) == SUCCESS


def test_bare_tcp_connections_do_not_hold_association_slots(sqlite_settings: Settings) -> None:
    """Port probes (load balancers, monitoring, scanners) connect and close without a word; each
    must not hold one of the listener's association slots until the ACSE timeout. (Transport
    only: SQLite is enough.)"""
    services = Services.build(sqlite_settings)
    try:
        with running_listener(services, dicom_max_associations=3) as server:
            # A connect returns once the kernel has queued it, maybe before the listener accepts
            # it: count the connections the listener has seen close, so none is still to come.
            closed: list[object] = []
            assert server.server is not None
            server.server.bind(evt.EVT_CONN_CLOSE, closed.append)
            probes = server.ae.maximum_associations + 3
            for _ in range(probes):
                socket.create_connection(("127.0.0.1", server.port), timeout=5).close()
            wait_until(lambda: len(closed) >= probes and not server.ae.active_associations, 5.0,
                       "the probes' acceptors ending")
            assert echo_status(server.port) == SUCCESS
    finally:
        services.close()


# ---- load -----------------------------------------------------------------------------------


def test_twenty_simultaneous_associations(listener: DicomServer, services: Services) -> None:
    peers = 20
    start = threading.Barrier(peers)
    outcomes: dict[int, tuple[list[int], list[int], set[str]] | str] = {}

    def peer(n: int) -> None:
        instances = make_series(3, size=16, PatientID=f"LOAD-{n:02d}")
        try:
            with association(listener.port, [CTImageStorage, StudyRootQueryRetrieveInformationModelFind],
                             ae_title=f"PEER{n:02d}") as assoc:
                start.wait(timeout=30)
                stored = [int(assoc.send_c_store(ds).Status) for ds in instances]
                query = Dataset()
                query.QueryRetrieveLevel = "IMAGE"
                query.PatientID = f"LOAD-{n:02d}"
                query.SOPInstanceUID = ""
                responses = list(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind))
            statuses = [int(status.Status) for status, _ in responses]
            found = {str(ds.SOPInstanceUID) for _, ds in responses if ds is not None}
            assert found <= {ds.SOPInstanceUID for ds in instances}
            outcomes[n] = (stored, statuses, found)
        except Exception as exc:  # noqa: BLE001 - every peer's failure is reported below
            outcomes[n] = repr(exc)

    threads = [threading.Thread(target=peer, args=(n,)) for n in range(peers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    failures = {n: o for n, o in outcomes.items() if isinstance(o, str)}
    assert failures == {} and len(outcomes) == peers
    for outcome in outcomes.values():
        assert not isinstance(outcome, str)
        stored, statuses, found = outcome
        assert stored == [SUCCESS] * 3
        assert statuses == [PENDING] * 3 + [SUCCESS]
        assert len(found) == 3
    assert services.index.counts() == {"patients": peers, "studies": peers, "series": peers, "instances": 3 * peers}
    assert len(blob_keys(services)) == 3 * peers
    assert echo_status(listener.port) == SUCCESS
