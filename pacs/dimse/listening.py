"""Serving associations on a listening socket opened elsewhere (by `minipacs serve`'s
supervisor, shared by every worker process) instead of one pynetdicom binds itself."""

from __future__ import annotations

import socket
import threading
import time
from datetime import datetime
from typing import Any

from pynetdicom import AE
from pynetdicom.transport import ThreadedAssociationServer

# Workers sharing a listening socket all wake for each new connection, and the first to accept
# takes it. Python runs one thread at a time per process, so two busy associations in one worker
# share a core while another worker idles: a worker waits this long per association it is
# already serving before it accepts, so the least busy worker takes the connection.
DEFER_PER_ASSOCIATION = 0.005  # seconds
DEFER_MAX = 0.05


def defer_seconds(busy: int) -> float:
    """How long a worker serving ``busy`` connections waits before it accepts another."""
    return min(busy * DEFER_PER_ASSOCIATION, DEFER_MAX)


def serve_on(
    ae: AE, listener: socket.socket, *, evt_handlers: list[Any], ssl_context: Any = None, shared: bool = False,
) -> ThreadedAssociationServer:
    """Like ``AE.start_server(block=False)``, on ``listener``. ``shared``: other worker processes
    accept from the same socket, and a busier worker leaves new connections to an idler one."""
    starting = _Starting()

    class AdoptingServer(ThreadedAssociationServer):
        def server_bind(self) -> None:
            if self.socket is not None:
                self.socket.close()  # the one socketserver made; the shared listener replaces it
            self.socket = listener
            self.server_address = listener.getsockname()

        def server_activate(self) -> None:
            pass  # listening already

        def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
            if shared:
                busy = starting.count + sum(1 for assoc in ae.active_associations if assoc.is_acceptor)
                if busy:
                    time.sleep(defer_seconds(busy))
            # Non-blocking: a BlockingIOError here means another worker took the connection,
            # and socketserver goes back to waiting.
            return super().get_request()

        def process_request(self, request: Any, client_address: Any) -> None:
            starting.add(1)  # counted until its association thread runs (and counts itself)
            try:
                super().process_request(request, client_address)
            except BaseException:
                starting.add(-1)
                raise

        def process_request_thread(self, request: Any, client_address: Any) -> None:
            try:
                super().process_request_thread(request, client_address)
            finally:
                starting.add(-1)

    server = ae.make_server(
        listener.getsockname(), ae_title=ae.ae_title, ssl_context=ssl_context, evt_handlers=evt_handlers,
        server_class=AdoptingServer,
    )
    stamp = datetime.now().strftime("%Y%m%d%H%M%S")
    thread = threading.Thread(target=server.serve_forever, name=f"AcceptorServer@{stamp}", daemon=True)
    thread.start()
    ae._servers.append(server)  # so ae.shutdown() stops it like any other
    return server


class _Starting:
    """Connections accepted whose association thread has not started yet."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def add(self, change: int) -> None:
        with self._lock:
            self.count += change
