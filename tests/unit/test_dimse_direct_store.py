"""pacs.dimse.direct_store: a C-STORE request is served by the upper-layer thread that received
it when nothing can be reordered, and by the association's reactor otherwise."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from pydicom import examples
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.sop_class import CTImageStorage, Verification

from pacs.dimse import direct_store, tuning


@pytest.fixture(autouse=True)
def _as_the_server_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """pynetdicom's standard logging handlers listen for every received message; the server
    turns them off (pacs.dimse.server), which the associations made here must see too."""
    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL", "none")


def _instance(number: int) -> Dataset:
    ds = examples.ct.copy()
    ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.77.{number}"
    return ds


@contextmanager
def _server(handlers: list[Any], *, network_timeout: float | None = None) -> Iterator[int]:
    assert tuning.apply()
    scp = AE()
    scp.add_supported_context(Verification)
    scp.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian])
    if network_timeout is not None:
        scp.network_timeout = network_timeout
    server = scp.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()


@contextmanager
def _association(port: int) -> Iterator[Any]:
    scu = AE()
    scu.add_requested_context(Verification)
    scu.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = scu.associate("127.0.0.1", port)
    assert assoc.is_established
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def _recording(into: list[type], status: int = 0x0000, wait: float = 0.0) -> Callable[[Any], int]:
    def handle(event: Any) -> int:
        into.append(type(threading.current_thread()))
        if wait:
            time.sleep(wait)
        return status

    return handle


def test_a_stream_of_c_stores_is_served_by_the_thread_that_received_it() -> None:
    served: list[type] = []
    with _server([(evt.EVT_C_STORE, _recording(served))]) as port, _association(port) as assoc:
        time.sleep(0.1)  # the reactor reaches its wait
        statuses = [assoc.send_c_store(_instance(n)).Status for n in range(5)]
    assert statuses == [0x0000] * 5
    assert served.count(DULServiceProvider) >= 4  # the reactor may be between waits once


def test_the_handler_s_status_is_what_the_peer_gets() -> None:
    served: list[type] = []
    with _server([(evt.EVT_C_STORE, _recording(served, status=0xA700))]) as port, _association(port) as assoc:
        time.sleep(0.1)
        answer = assoc.send_c_store(_instance(1))
    assert answer.Status == 0xA700 and served == [DULServiceProvider]


def test_a_handler_that_raises_gets_pynetdicom_s_failure_status() -> None:
    def broken(event: Any) -> int:
        raise RuntimeError("disk on fire")

    with _server([(evt.EVT_C_STORE, broken)]) as port, _association(port) as assoc:
        time.sleep(0.1)
        assert assoc.send_c_store(_instance(1)).Status == 0xC211
        assert assoc.send_c_store(_instance(2)).Status == 0xC211  # the association still serves


def test_listeners_for_received_messages_keep_the_reactor_serving() -> None:
    served: list[type] = []
    received: list[object] = []
    handlers = [(evt.EVT_C_STORE, _recording(served)),
                (evt.EVT_DIMSE_RECV, lambda event: received.append(event.message))]
    with _server(handlers) as port, _association(port) as assoc:
        time.sleep(0.1)
        assert assoc.send_c_store(_instance(1)).Status == 0x0000
    assert served == [Association] and received


def test_other_services_stay_with_the_reactor() -> None:
    echoed: list[type] = []
    with _server([(evt.EVT_C_ECHO, _recording(echoed))]) as port, _association(port) as assoc:
        time.sleep(0.1)
        assert assoc.send_c_echo().Status == 0x0000
    assert echoed == [Association]


def test_a_busy_or_queued_reactor_is_not_overtaken() -> None:
    """With a message queued for the reactor, or the reactor not waiting, the request is queued."""

    class Provider:
        def __init__(self, queued: bool, idle: bool) -> None:
            import queue

            self.msg_queue: queue.Queue[object] = queue.Queue()
            if queued:
                self.msg_queue.put((1, "C-ECHO"))
            self.assoc = type("Assoc", (), {})()
            self.assoc.__dict__.update(is_acceptor=True, _minipacs_reactor_idle=idle)

    def message() -> Any:
        received: Any = direct_store.C_STORE_RQ()
        received.command_set = Dataset()
        received.command_set.AffectedSOPClassUID = CTImageStorage
        received.message_to_primitive = lambda: "C-STORE request"
        return received

    for queued, idle, served_here in ((False, True, True), (True, True, False), (False, False, False)):
        provider: Any = Provider(queued, idle)
        assoc = provider.assoc
        assoc.get_handlers = lambda event: []
        assoc.acceptor = type("Acceptor", (), {"accepted_common_extended": {}})()
        outcome = direct_store._request_to_serve_here(provider, message())
        assert (outcome == "C-STORE request") is served_here, (queued, idle)


def test_storing_longer_than_the_network_timeout_does_not_end_the_association() -> None:
    """The reactor would release an association idle for network_timeout; time spent storing in
    the upper-layer thread is not idle."""
    served: list[type] = []
    with _server([(evt.EVT_C_STORE, _recording(served, wait=1.5))], network_timeout=0.5) as port, \
            _association(port) as assoc:
        time.sleep(0.1)
        assert assoc.send_c_store(_instance(1)).Status == 0x0000
        assert assoc.is_established
        assert assoc.send_c_store(_instance(2)).Status == 0x0000
    assert served == [DULServiceProvider, DULServiceProvider]


@pytest.mark.parametrize("abort_after", [0.05, 0.3])
def test_a_peer_that_aborts_while_its_instance_is_stored_leaves_the_server_serving(abort_after: float) -> None:
    served: list[type] = []
    with _server([(evt.EVT_C_STORE, _recording(served, wait=0.2))]) as port:
        with _association(port) as assoc:
            assoc.dimse_timeout = 2  # pynetdicom's sender would otherwise wait for ever
            time.sleep(0.1)
            sender = threading.Thread(target=assoc.send_c_store, args=(_instance(1),), daemon=True)
            sender.start()
            time.sleep(abort_after)
            assoc.abort()
        time.sleep(0.3)  # the first store has ended meanwhile
        with _association(port) as again:
            assert again.send_c_store(_instance(2)).Status == 0x0000
    assert served == [DULServiceProvider, DULServiceProvider]
