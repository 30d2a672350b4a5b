"""HTTP connections shared fairly between worker processes.

Every worker waits on the same listening socket, and uvicorn's event loop accepts every
connection pending when it wakes. Clients that open their connections together (a viewer, a
STOW-RS uploader with several threads) then often land three to one or four to none: one worker
runs at full core while the other idles, as Python runs one thread at a time per process.

Here each worker accepts in a thread of its own and, like the DICOM listener
(pacs.dimse.listening), first waits a little for each connection it already serves, so the
least busy worker takes the next one. The accepted socket is handed to uvicorn's loop, which
serves it exactly as one it accepted itself.
"""

from __future__ import annotations

import asyncio
import logging
import select
import socket
import threading
import time
from typing import Any

import uvicorn

from pacs.dimse.listening import defer_seconds

log = logging.getLogger(__name__)
_POLL_SECONDS = 0.5  # how often the accepting thread looks whether the server is stopping


class BalancedServer(uvicorn.Server):
    """A uvicorn server for one worker among several sharing ``listener``."""

    def __init__(self, config: uvicorn.Config, listener: socket.socket) -> None:
        super().__init__(config)
        self.listener = listener
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._handing_over = 0  # accepted, not yet among uvicorn's connections
        self._count_lock = threading.Lock()  # the two threads that change it

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn's own start with no socket of its own (lifespan, its state, the protocol);
        # connections come from the accepting thread.
        await super().startup(sockets=[])
        if self.should_exit:
            return
        loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._accept, args=(loop,), name="http-accept", daemon=True)
        self._thread.start()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._stopping.set()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
        await super().shutdown(sockets)

    def _protocol(self) -> asyncio.Protocol:
        config = self.config
        return config.http_protocol_class(  # type: ignore[call-arg]
            config=config, server_state=self.server_state, app_state=self.lifespan.state,
        )

    def _accept(self, loop: asyncio.AbstractEventLoop) -> None:
        waiting = select.poll()
        waiting.register(self.listener, select.POLLIN)
        while not self._stopping.is_set():
            if not waiting.poll(_POLL_SECONDS * 1000):
                continue
            busy = self._handing_over + len(self.server_state.connections)
            if busy:
                time.sleep(defer_seconds(busy))
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                continue  # another worker took it
            except OSError as exc:
                log.warning("accepting an HTTP connection failed: %s", exc)
                time.sleep(0.05)  # out of file descriptors, say: do not spin
                continue
            conn.setblocking(False)
            with self._count_lock:
                self._handing_over += 1
            asyncio.run_coroutine_threadsafe(self._hand_over(loop, conn), loop)

    async def _hand_over(self, loop: Any, conn: socket.socket) -> None:
        try:
            await loop.connect_accepted_socket(self._protocol, conn, ssl=self.config.ssl)
        except Exception as exc:  # noqa: BLE001 - a failed TLS handshake, a peer gone already
            log.info("HTTP connection dropped before it was served: %s", exc)
            conn.close()
        finally:
            with self._count_lock:
                self._handing_over -= 1  # counted among uvicorn's connections from now on
