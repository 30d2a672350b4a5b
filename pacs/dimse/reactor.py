"""How pynetdicom's two threads per association wait when they have nothing to do.

Each association has a reactor thread, which serves the decoded messages, and an upper-layer
(DUL) thread, which reads the socket and runs the state machine. pynetdicom's loops sleep 1 ms
whenever there was nothing to do: an open association woke its two threads 2,000 times a second,
and while one of them worked (writing a received data set, storing an instance) the other woke
every millisecond to take the GIL from it. Here each waits for its own work:

- the reactor for a decoded message, a primitive from the peer (release, abort), a pause asked
  by a sending thread, or the end of the upper layer, each of which wakes it (``_nudge``);
- the upper layer for bytes on the socket, a PDU queued to send, or the order to stop, each of
  which rings its bell (a socket pair it polls with the socket).

The upper layer waits with poll(), and pynetdicom's readiness check of the socket polls too:
select() refuses descriptors of 1024 and above.

Both still look around every IDLE_WAIT seconds, for what nothing wakes them for: the network
timeout, and the ARTIM timer (the upper layer's wait ends when it expires). Installed by
pacs.dimse.tuning.apply.
"""

from __future__ import annotations

import queue
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from pynetdicom import association, transport
from pynetdicom import dul as dul_module

IDLE_WAIT = 0.05  # seconds: the longest a reactor thread waits without being woken
_REACTOR_SLEEP = 0.001  # what pynetdicom's loops sleep when idle
# On an association while its reactor waits for a message, set and read under the message
# queue's lock: the upper layer may then serve a C-STORE itself (pacs.dimse.direct_store).
IDLE_FLAG = "_minipacs_reactor_idle"


_installed = False


def install() -> None:
    """Replace pynetdicom's waits, once per process (a second install would wrap the first)."""
    global _installed
    if _installed:
        return
    _installed = True
    association.time = _ReactorClock(association.time)  # type: ignore[assignment]
    dul_module.time = _ReactorClock(dul_module.time)  # type: ignore[assignment]
    provider = dul_module.DULServiceProvider
    provider.__init__ = _with_user_queue(provider.__init__)  # type: ignore[method-assign]
    provider.send_pdu = _ringing(provider.send_pdu)  # type: ignore[method-assign]
    provider.run_reactor = _closing_bell(provider.run_reactor)  # type: ignore[method-assign]
    provider._kill_thread = property(_get_kill, _set_kill)  # type: ignore[assignment]
    association.Association.__init__ = _with_checkpoint(association.Association.__init__)  # type: ignore[method-assign]
    association.Association._is_paused = property(_get_paused, _set_paused)  # type: ignore[assignment]
    association.Association.kill = _nudging_kill(association.Association.kill)  # type: ignore[method-assign,assignment]
    transport.AssociationSocket.ready = property(_ready)  # type: ignore[method-assign,assignment]


class _Checkpoint:
    """The association reactor's pause point (pynetdicom's ``_reactor_checkpoint`` Event), which
    also knows whether the reactor is parked at it.

    A thread about to send a request clears the checkpoint, then waits for ``_is_paused`` so the
    reactor cannot take the response for itself. pynetdicom's flag is set by the reactor on its
    way to the checkpoint and reset on its way out, so it can be seen set while the reactor
    already runs on: it then served the response as an unexpected message and the request
    waited out the DIMSE timeout (seen with C-FIND, and with C-STORE sub-operations of C-MOVE).
    Here the reactor parks under a lock, and a sender is told it is paused only once the reactor
    is parked at a closed checkpoint, where it stays until ``set``."""

    def __init__(self, nudge: Callable[[], None]) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._open = True
        self._parked = False
        self._nudge = nudge  # wakes the reactor from its idle wait, to reach the checkpoint now

    def set(self) -> None:
        with self._cond:
            self._open = True
            self._cond.notify_all()

    def clear(self) -> None:
        with self._cond:
            self._open = False
        self._nudge()

    def is_set(self) -> bool:
        return self._open

    def wait(self, timeout: float | None = None) -> bool:
        with self._cond:
            if self._open:
                return True
            self._parked = True
            self._cond.notify_all()
            try:
                return self._cond.wait_for(lambda: self._open, timeout)
            finally:
                self._parked = False

    def holds_reactor(self, timeout: float) -> bool:
        """True once the reactor is parked at the closed checkpoint (waiting up to ``timeout``)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._open or self._parked, timeout) and not self._open


def _with_checkpoint(init: Callable[..., None]) -> Callable[..., None]:
    def install(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self._reactor_checkpoint = _Checkpoint(lambda: _nudge(self))

    return install


def _nudge(assoc: Any) -> None:
    """Wake the association's reactor from its idle wait, or, if it is not waiting, keep it from
    starting one: the wake-up is remembered until its next wait (see _wait_for_message)."""
    dimse_provider = getattr(assoc, "dimse", None)
    waiting = getattr(dimse_provider, "msg_queue", None)
    if waiting is not None:
        with waiting.not_empty:
            assoc.__dict__["_nudged"] = True
            waiting.not_empty.notify_all()


def _nudging_kill(kill: Callable[[Any], None]) -> Callable[[Any], None]:
    """Association.kill from another thread: the reactor looks at its kill flag now."""

    def run(self: Any) -> None:
        if threading.current_thread() is not self:
            self._kill = True
            _nudge(self)
        kill(self)

    return run


class _NudgingQueue(queue.Queue):  # type: ignore[type-arg]
    """The upper layer's queue of primitives for the association (A-RELEASE, A-ABORT and the
    like, which the reactor looks for): a put wakes the reactor."""

    def __init__(self, provider: Any) -> None:
        super().__init__()
        self._provider = provider

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        _nudge(self._provider.assoc)


def _with_user_queue(init: Callable[..., None]) -> Callable[..., None]:
    def install(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.to_user_queue = _NudgingQueue(self)

    return install


def _get_kill(self: Any) -> bool:
    return bool(self.__dict__.get("_kill_flag", False))


def _set_kill(self: Any, value: bool) -> None:
    """The upper layer's stop flag; set by another thread (Association.kill, stop_dul), it rings
    the bell so that the loop sees it at once."""
    self.__dict__["_kill_flag"] = value
    if value and threading.current_thread() is not self:
        _ring(self)


def _get_paused(self: Any) -> bool:
    # The reactor's own thread (running a service that sends, as C-GET does) reads its flag.
    if threading.current_thread() is self or not isinstance(self._reactor_checkpoint, _Checkpoint):
        return bool(self.__dict__.get("_paused_flag", False))
    if self._kill or not self.is_alive():
        return True
    return self._reactor_checkpoint.holds_reactor(0.005)


def _set_paused(self: Any, value: bool) -> None:
    self.__dict__["_paused_flag"] = value


class _ReactorClock:
    """The ``time`` module as pynetdicom's association and dul modules see it: the reactor
    loops' idle sleep waits for their next piece of work instead; everything else is time's."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def sleep(self, seconds: float) -> None:
        thread = threading.current_thread()
        if isinstance(thread, association.Association) and seconds == _REACTOR_SLEEP:
            _wait_for_message(thread, IDLE_WAIT)
        elif isinstance(thread, dul_module.DULServiceProvider):
            _wait_for_data(thread, _upper_layer_wait(thread))
        else:
            self._real.sleep(seconds)


def _wait_for_message(assoc: Any, timeout: float) -> None:
    """Until the DIMSE provider has a decoded message for the association or the reactor is
    nudged (a nudge since the last wait counts), at most ``timeout`` seconds."""
    waiting = assoc.dimse.msg_queue
    with waiting.not_empty:
        if not len(waiting.queue) and not assoc.__dict__.pop("_nudged", False):
            assoc.__dict__[IDLE_FLAG] = True
            try:
                waiting.not_empty.wait(timeout)
            finally:
                assoc.__dict__[IDLE_FLAG] = False
            assoc.__dict__.pop("_nudged", None)
        if len(waiting.queue):
            # A put wakes one waiter; it may have been this one while another thread (a
            # send_c_store awaiting its response) is the one that takes the message: pass it on.
            waiting.not_empty.notify()


def _upper_layer_wait(provider: Any) -> float:
    """IDLE_WAIT, or less when the ARTIM timer runs out sooner."""
    timer = provider.artim_timer
    if getattr(timer, "_start_time", None) is None or getattr(timer, "_end_time", None) is not None:
        return IDLE_WAIT  # not running
    return max(0.0, min(IDLE_WAIT, timer.remaining))


def _wait_for_data(provider: Any, timeout: float) -> None:
    """Until the peer's next bytes arrive, our side queues something to send (send_pdu rings the
    provider's bell) or the provider is told to stop, at most ``timeout`` seconds; timers and
    the rest are looked at when the wait ends, as after pynetdicom's own sleep."""
    sock = getattr(provider.socket, "socket", None) if provider.socket is not None else None
    if sock is None or (isinstance(sock, ssl.SSLSocket) and sock.pending()):
        time.sleep(min(timeout, _REACTOR_SLEEP))  # not connected yet, or TLS bytes already read
        return
    bell = _bell(provider)
    # Made by this very wait, the bell may have missed a ring: what it would announce is looked at.
    if getattr(provider, "_kill_thread", False) or _has_items(provider, "to_provider_queue") or _has_items(provider, "event_queue"):
        return
    try:
        readable = ready_to_read([sock, bell[0]], timeout)
    except (OSError, ValueError):  # closed meanwhile: the loop finds out itself
        time.sleep(min(timeout, _REACTOR_SLEEP))
        return
    if bell[0].fileno() in readable:
        _silence(bell[0])


def ready_to_read(sockets: list[Any], timeout: float) -> set[int]:
    """The descriptors of ``sockets`` with bytes to read, or an end or error to report, within
    ``timeout`` seconds: select() as pynetdicom uses it, by poll(), since select() refuses
    descriptors of 1024 and above (a busy worker has that many open) and pynetdicom then takes
    the connection for closed and aborts the association."""
    waiting = select.poll()
    for sock in sockets:
        waiting.register(sock, _READABLE)
    return {fd for fd, _ in waiting.poll(max(0, int(timeout * 1000)))}


_READABLE = select.POLLIN | select.POLLPRI  # errors and hang-ups are reported whatever is asked


def _ready(self: Any) -> bool:
    """pynetdicom's AssociationSocket.ready (data to read, checked without waiting) by poll()."""
    sock = self.socket
    if sock is None or self._is_connected is False:
        return False
    try:
        ready = bool(ready_to_read([sock], 0))
    except (OSError, TimeoutError, ValueError):
        self.event_queue.put("Evt17")  # transport connection closed, as pynetdicom's own
        return False
    if isinstance(sock, ssl.SSLSocket):
        return ready or bool(sock.pending())  # TLS bytes already read from the socket
    return ready


def _has_items(provider: Any, name: str) -> bool:
    waiting = getattr(provider, name, None)
    return waiting is not None and not waiting.empty()


def _bell(provider: Any) -> tuple[socket.socket, socket.socket]:
    """The provider's wake-up pair (read end, write end), made by its reactor thread on its first
    wait and closed when the reactor ends (see _closing_bell)."""
    bell = provider.__dict__.get("_bell")
    if bell is None:
        bell = socket.socketpair()
        for end in bell:
            end.setblocking(False)
        provider._bell = bell
    return bell


def _silence(read_end: socket.socket) -> None:
    try:
        while read_end.recv(4096):
            pass
    except OSError:  # drained (BlockingIOError) or closed
        pass


def _ringing(send_pdu: Callable[..., None]) -> Callable[..., None]:
    """DULServiceProvider.send_pdu that wakes the reactor waiting in _wait_for_data: a response
    goes out as soon as it is queued, not when the reactor next looks."""

    def send(self: Any, primitive: Any) -> None:
        send_pdu(self, primitive)
        if threading.current_thread() is not self:
            _ring(self)

    return send


def _ring(provider: Any) -> None:
    bell = provider.__dict__.get("_bell")
    if bell is not None:
        try:
            bell[1].send(b"\0")
        except OSError:  # already ringing (buffer full), or the reactor ended meanwhile
            pass


def _closing_bell(run_reactor: Callable[..., None]) -> Callable[..., None]:
    def run(self: Any) -> None:
        try:
            run_reactor(self)
        finally:
            bell = self.__dict__.pop("_bell", None)
            for end in bell or ():
                end.close()
            _nudge(self.assoc)  # the association's reactor stops when this one has

    return run
