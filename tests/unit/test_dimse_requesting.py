"""pacs.dimse.requesting: a request the peer answered before its requestor looked at the
connection is reported as answered, not as a connection that failed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from pacs.dimse import tuning


@pytest.fixture
def refusing_server() -> Iterator[int]:
    """A pynetdicom listener that rejects every calling AE but one."""
    assert tuning.apply()
    ae = AE(ae_title="REFUSER")
    ae.add_supported_context(Verification)
    ae.require_calling_aet = ["SOMEONEELSE"]
    server = ae.start_server(("127.0.0.1", 0), block=False)
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()


def _until_answered_and_closed(event: Any) -> None:
    """Hold the requestor, after its request went out, until the upper layer has read the
    peer's answer and closed the connection: the moment a loaded machine may pick."""
    dul = event.assoc.dul
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (dul.socket.socket is None and not dul.to_user_queue.empty()):
        time.sleep(0.005)


def test_a_rejection_read_before_the_requestor_looked_is_a_rejection(refusing_server: int) -> None:
    requestor = AE(ae_title="STRANGER")
    requestor.add_requested_context(Verification)
    requestor.acse_timeout = 10
    assoc = requestor.associate(
        "127.0.0.1", refusing_server, ae_title="REFUSER",
        evt_handlers=[(evt.EVT_REQUESTED, _until_answered_and_closed)],
    )
    assert assoc.dul.socket.socket is None  # the handler saw the answer in and the connection closed
    assert assoc.is_rejected and not assoc.is_aborted and not assoc.is_established
    assert assoc.acceptor.primitive.result == 0x01  # rejected permanent, as the peer said


# pynetdicom shuts the socket of a refused connection down without closing it.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_connection_that_failed_is_still_one() -> None:
    import socket

    assert tuning.apply()
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    requestor = AE(ae_title="STRANGER")
    requestor.add_requested_context(Verification)
    assoc = requestor.associate("127.0.0.1", port, ae_title="REFUSER")
    assert not assoc.is_established and not assoc.is_rejected
    assert assoc.is_aborted  # pynetdicom's report of a failed connection
