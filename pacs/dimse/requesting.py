"""An association request answered before its requestor looked at the connection.

pynetdicom's requestor queues its A-ASSOCIATE-RQ, waits until the connection is made, and only
then reads ``AssociationSocket._is_connected`` to tell a connection that failed. A peer that
answers at once (a rejection, an abort) may by then have had its answer read by the upper
layer's thread, which closes the connection on such an answer and clears that flag: the request
was then reported as a connection that failed ("Aborting Association", neither rejected nor
aborted by the peer), though the answer waited in the queue. Seen with the upper layer woken at
once by the peer's bytes (pacs.dimse.reactor) and a loaded machine, about once in 300 rejected
requests.

Here the negotiating thread, and only it, reads the flag as "the connection was made" once it has
been; the upper layer's own reads (is there data, must it close) keep the flag as it is.
Installed by pacs.dimse.tuning.apply.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from pynetdicom import acse, transport


def install() -> None:
    socket_class = transport.AssociationSocket
    socket_class._is_connected = property(_get_connected, _set_connected)  # type: ignore[assignment]
    acse.ACSE._negotiate_as_requestor = _negotiating(acse.ACSE._negotiate_as_requestor)  # type: ignore[method-assign,assignment]


def _get_connected(self: Any) -> bool:
    if self.__dict__.get("_connected_flag", False):
        return True
    return bool(self.__dict__.get("_was_connected")) and self.__dict__.get("_negotiator") is threading.current_thread()


def _set_connected(self: Any, value: bool) -> None:
    self.__dict__["_connected_flag"] = value
    if value:
        self.__dict__["_was_connected"] = True


def _negotiating(negotiate: Callable[[Any], None]) -> Callable[[Any], None]:
    def run(self: Any) -> None:
        sock = self.socket
        if sock is None:
            negotiate(self)
            return
        sock.__dict__["_negotiator"] = threading.current_thread()
        try:
            negotiate(self)
        finally:
            sock.__dict__.pop("_negotiator", None)

    return run
