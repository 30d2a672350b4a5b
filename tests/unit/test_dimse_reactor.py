"""pacs.dimse.reactor: pynetdicom's reactor threads wait for their work, not in 1 ms naps."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from pacs.dimse import reactor, tuning


def test_reactor_waits_end_as_soon_as_there_is_work() -> None:
    """The replaced idle sleeps return when work arrives (and at the latest when the sleep
    would have ended): a queued message, bytes on the socket."""
    import queue
    from types import SimpleNamespace

    pending: queue.Queue[object] = queue.Queue()
    assoc = SimpleNamespace(dimse=SimpleNamespace(msg_queue=pending))
    threading.Timer(0.05, pending.put, args=("message",)).start()
    began = time.monotonic()
    reactor._wait_for_message(assoc, 5.0)
    assert time.monotonic() - began < 2.0 and pending.get_nowait() == "message"

    left, right = socket.socketpair()
    try:
        provider = SimpleNamespace(socket=SimpleNamespace(socket=left))
        threading.Timer(0.05, right.send, args=(b"x",)).start()
        began = time.monotonic()
        reactor._wait_for_data(provider, 5.0)
        assert time.monotonic() - began < 2.0
        assert left.recv(1) == b"x"

        # Our side queueing a PDU (another thread's send_pdu) ends the wait as well.
        queued: list[object] = []
        send_pdu = reactor._ringing(lambda self, primitive: queued.append(primitive))
        reactor._wait_for_data(provider, 0.001)  # the first wait sets up the bell
        threading.Timer(0.05, send_pdu, args=(provider, "P-DATA")).start()
        began = time.monotonic()
        reactor._wait_for_data(provider, 5.0)
        assert time.monotonic() - began < 2.0 and queued == ["P-DATA"]
        began = time.monotonic()
        reactor._wait_for_data(provider, 0.2)  # the ring was answered once, not left ringing
        assert time.monotonic() - began >= 0.15
    finally:
        left.close()
        right.close()
        for end in getattr(provider, "_bell", ()):
            end.close()


def test_a_reactor_wait_never_keeps_a_message_from_its_taker() -> None:
    """The association reactor waits on the message queue while a sub-operation (C-MOVE's
    send_c_store) blocks in get() on the same queue: the wake-up of a put must reach the getter."""
    import queue
    from types import SimpleNamespace

    for _ in range(50):
        pending: queue.Queue[object] = queue.Queue()
        assoc = SimpleNamespace(dimse=SimpleNamespace(msg_queue=pending))
        waiter = threading.Thread(target=reactor._wait_for_message, args=(assoc, 5.0))
        waiter.start()
        got: list[object] = []

        def take(into: list[object] = got, source: queue.Queue[object] = pending) -> None:
            into.append(source.get(timeout=5.0))

        taker = threading.Thread(target=take)
        taker.start()
        time.sleep(0.01)  # both are waiting now
        began = time.monotonic()
        pending.put("response")
        taker.join()
        assert got == ["response"] and time.monotonic() - began < 2.0
        waiter.join()


def test_a_sender_is_told_the_reactor_paused_only_once_it_is_parked() -> None:
    """A reactor that went through the open checkpoint just before a sender closed it runs on,
    and may take the sender's response for itself: the sender must wait for it to come back
    and park (pynetdicom's own flag said "paused" as soon as the reactor reached the checkpoint)."""
    nudged: list[bool] = []
    checkpoint = reactor._Checkpoint(lambda: nudged.append(True))
    assert checkpoint.wait(1.0)  # open: the reactor goes through
    checkpoint.clear()
    assert nudged == [True]  # the reactor is woken from its idle wait to come back now
    assert not checkpoint.holds_reactor(0.05)  # it went through before the clear: not parked

    parked = threading.Event()

    def park() -> None:
        parked.set()
        checkpoint.wait()  # closed: stays here until set()

    thread = threading.Thread(target=park)
    thread.start()
    assert parked.wait(5.0)
    assert checkpoint.holds_reactor(5.0)
    assert thread.is_alive()
    checkpoint.set()
    thread.join(5.0)
    assert not thread.is_alive()
    assert not checkpoint.holds_reactor(0.01)  # open again: nothing is held


def test_associations_pause_their_reactor_through_the_checkpoint() -> None:
    """Installed on every association: a request from another thread waits for the parked
    reactor, while the reactor's own thread (a C-GET service sending) keeps pynetdicom's flag."""
    from pynetdicom import AE, association

    assert tuning.apply()
    assoc = association.Association(AE(), "requestor")
    assert isinstance(assoc._reactor_checkpoint, reactor._Checkpoint)
    assoc._is_paused = False
    assert assoc._is_paused  # not running: nothing to race with
    assoc._kill = True
    assert assoc._is_paused



@pytest.fixture
def echo_server() -> Iterator[tuple[object, int]]:
    """A Verification SCP with the replacements installed; yields (server, port)."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    assert tuning.apply()
    scp = AE()
    scp.add_supported_context(Verification)
    server = scp.start_server(("127.0.0.1", 0), block=False)
    try:
        yield server, server.server_address[1]
    finally:
        server.shutdown()


def _associate(port: int) -> object:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    scu = AE()
    scu.add_requested_context(Verification)
    assoc = scu.associate("127.0.0.1", port)
    assert assoc.is_established
    return assoc


def _switches(thread: threading.Thread) -> int:
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    return sum(int(line.split()[1]) for line in status.splitlines() if "ctxt_switches:" in line)


def _served(server: object) -> object:
    deadline = time.monotonic() + 5.0
    while not server.active_associations:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the association never showed up on the server"
        time.sleep(0.01)
    return server.active_associations[0]  # type: ignore[attr-defined]


def test_an_idle_association_leaves_its_threads_asleep(echo_server: tuple[object, int]) -> None:
    """pynetdicom's loops woke each of an association's two threads every millisecond."""
    server, port = echo_server
    assoc = _associate(port)
    try:
        served = _served(server)
        threads = [served, served.dul]  # type: ignore[attr-defined]
        time.sleep(0.2)  # negotiation over
        before = [_switches(t) for t in threads]
        time.sleep(1.0)
        woken = sum(_switches(t) - b for t, b in zip(threads, before))
        assert woken < 150, f"{woken} context switches in an idle second"
    finally:
        assoc.release()  # type: ignore[attr-defined]


def test_every_step_is_woken_for_not_waited_out(echo_server: tuple[object, int], monkeypatch: pytest.MonkeyPatch) -> None:
    """With the fallback wait made 10 s long, association, echo, release and abort (by either
    side) each still take moments: every event the loops look for wakes them."""
    monkeypatch.setattr(reactor, "IDLE_WAIT", 10.0)
    server, port = echo_server

    def timed(step: object) -> float:
        began = time.monotonic()
        step()  # type: ignore[operator]
        return time.monotonic() - began

    for _ in range(2):
        assoc = _associate(port)
        assert timed(assoc.send_c_echo) < 3.0  # type: ignore[attr-defined]
        assert timed(assoc.release) < 3.0  # type: ignore[attr-defined]
        left = _served_or_none(server)
        assert left is None or timed(partial(left.join, 5.0)) < 3.0  # type: ignore[attr-defined]

    assoc = _associate(port)
    served = _served(server)
    assert timed(assoc.abort) < 3.0  # type: ignore[attr-defined]
    assert timed(lambda: served.join(5.0)) < 3.0 and not served.is_alive()  # type: ignore[attr-defined]

    assoc = _associate(port)
    served = _served(server)
    assert timed(served.abort) < 3.0  # type: ignore[attr-defined]  # our side aborts, from another thread
    assert timed(lambda: served.join(5.0)) < 3.0 and not served.is_alive()  # type: ignore[attr-defined]
    deadline = time.monotonic() + 3.0
    while assoc.is_established and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.01)
    assert not assoc.is_established  # type: ignore[attr-defined]


def _served_or_none(server: object) -> object | None:
    active = server.active_associations  # type: ignore[attr-defined]
    return active[0] if active else None


def test_a_stop_order_from_another_thread_ends_the_upper_layer_wait() -> None:
    from types import SimpleNamespace

    left, right = socket.socketpair()
    provider = SimpleNamespace(socket=SimpleNamespace(socket=left), _kill_thread=False)
    try:
        reactor._wait_for_data(provider, 0.001)  # the first wait sets up the bell
        threading.Timer(0.05, reactor._set_kill, args=(provider, True)).start()
        began = time.monotonic()
        reactor._wait_for_data(provider, 5.0)
        assert time.monotonic() - began < 2.0
    finally:
        left.close()
        right.close()
        for end in provider.__dict__.get("_bell", ()):
            end.close()


def test_a_nudge_before_the_wait_is_not_lost() -> None:
    """A primitive put while the reactor was busy must not leave it to wait out IDLE_WAIT."""
    import queue
    from types import SimpleNamespace

    assoc = SimpleNamespace(dimse=SimpleNamespace(msg_queue=queue.Queue()))
    reactor._nudge(assoc)
    began = time.monotonic()
    reactor._wait_for_message(assoc, 5.0)
    assert time.monotonic() - began < 2.0
    began = time.monotonic()
    reactor._wait_for_message(assoc, 0.2)  # the nudge was used up
    assert time.monotonic() - began >= 0.15


def test_associations_on_descriptors_past_1024_are_served() -> None:
    """select() refuses descriptors of 1024 and above; pynetdicom took such a connection for
    closed and aborted it. A worker with many connections and files open gets there."""
    import os
    import resource

    from pynetdicom import AE, evt
    from pynetdicom.sop_class import Verification

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1400:
        pytest.skip(f"at most {hard} open files allowed")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1400), hard))
    fillers: list[int] = []
    try:
        while not fillers or fillers[-1] < 1100:
            fillers.append(os.open(os.devnull, os.O_RDONLY))
        assert tuning.apply()
        scp = AE()
        scp.add_supported_context(Verification)
        seen: list[int] = []
        server = scp.start_server(("127.0.0.1", 0), block=False, evt_handlers=[
            (evt.EVT_C_ECHO, lambda event: (seen.append(event.assoc.dul.socket.socket.fileno()), 0x0000)[1])])
        try:
            scu = AE()
            scu.add_requested_context(Verification)
            assoc = scu.associate("127.0.0.1", server.server_address[1])
            assert assoc.is_established
            assert [assoc.send_c_echo().Status for _ in range(3)] == [0x0000] * 3
            assoc.release()
        finally:
            server.shutdown()
        assert seen and min(seen) >= 1024
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
