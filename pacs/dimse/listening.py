"""Serving associations on a listening socket opened elsewhere (by `minipacs serve`'s
supervisor, shared by every worker process) instead of one pynetdicom binds itself."""

from __future__ import annotations

import socket
import threading
from datetime import datetime
from typing import Any

from pynetdicom import AE
from pynetdicom.transport import ThreadedAssociationServer


def serve_on(ae: AE, listener: socket.socket, *, evt_handlers: list[Any], ssl_context: Any = None) -> ThreadedAssociationServer:
    """Like ``AE.start_server(block=False)``, on ``listener``."""

    class AdoptingServer(ThreadedAssociationServer):
        def server_bind(self) -> None:
            if self.socket is not None:
                self.socket.close()  # the one socketserver made; the shared listener replaces it
            self.socket = listener
            self.server_address = listener.getsockname()

        def server_activate(self) -> None:
            pass  # listening already

    server = ae.make_server(
        listener.getsockname(), ae_title=ae.ae_title, ssl_context=ssl_context, evt_handlers=evt_handlers,
        server_class=AdoptingServer,
    )
    stamp = datetime.now().strftime("%Y%m%d%H%M%S")
    thread = threading.Thread(target=server.serve_forever, name=f"AcceptorServer@{stamp}", daemon=True)
    thread.start()
    ae._servers.append(server)  # so ae.shutdown() stops it like any other
    return server
