"""Send audit events to a syslog collector as RFC 5424 messages, over UDP or TCP (RFC 6587 octet counting).

Auditing must never slow down or break the request that produced the event, so `send` only formats the
message and puts it in a bounded queue; one daemon thread delivers it. When the collector is down, TCP
keeps the oldest message and retries with a backoff (newer ones wait in the queue, and are dropped and
counted once it is full); UDP is best effort. Problems are logged at most once a minute.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import threading
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from time import monotonic
from urllib.parse import urlsplit

log = logging.getLogger("minipacs.audit.syslog")

FACILITY = 13  # "log audit" (RFC 5424 table 1)
SD_ID = "minipacs@32473"  # 32473 is the enterprise number reserved for examples (RFC 5612)
BOM = b"\xef\xbb\xbf"  # marks MSG as UTF-8 (RFC 5424 6.4)
NILVALUE = "-"
# RFC 5424 6.2 and 6.3.2 length limits
MAX_HOSTNAME, MAX_APP_NAME, MAX_PROCID, MAX_MSGID, MAX_SD_NAME = 255, 48, 128, 32, 32
MAX_UDP_PAYLOAD = 65_507  # 65535 minus the IPv4 and UDP headers: the largest datagram that can be sent

IO_TIMEOUT = 10.0  # a collector that stalls longer than this is treated as down
POLL_SLICE = 0.05  # how often a stalled connect/send rechecks whether close() has run out of time
BACKOFF_MIN, BACKOFF_MAX = 0.1, 5.0
LOG_INTERVAL = 60.0
JOIN_GRACE = 1.0  # close() waits this long past its timeout for the thread to notice the deadline


def format_rfc5424(
    msgid: str,
    message: str,
    structured: Mapping[str, str] | None,
    *,
    severity: int,
    app_name: str,
    hostname: str,
    procid: int | str,
    timestamp: datetime,
    max_size: int | None = None,
) -> bytes:
    """One RFC 5424 message; with `max_size`, MSG is cut (at a character boundary) to fit."""
    if not 0 <= severity <= 7:
        raise ValueError(f"syslog severity must be 0..7, got {severity}")
    if timestamp.tzinfo is None:
        raise ValueError("syslog timestamp must be timezone-aware")
    stamp = timestamp.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    fields = [
        f"<{FACILITY * 8 + severity}>1",
        stamp,
        _header_field(hostname, MAX_HOSTNAME),
        _header_field(app_name, MAX_APP_NAME),
        _header_field(str(procid), MAX_PROCID),
        _header_field(msgid, MAX_MSGID),
        _structured_data(structured or {}),
    ]
    head = " ".join(fields).encode("utf-8", "replace")
    body = BOM + message.encode("utf-8", "replace")
    if max_size is not None and len(head) + 1 + len(body) > max_size:
        body = _cut_utf8(body, max(0, max_size - len(head) - 1))
    return head + b" " + body if body else head  # MSG is optional (RFC 5424 6)


def _header_field(value: str, limit: int) -> str:
    # Header fields are 1*N PRINTUSASCII (RFC 5424 6.2); NILVALUE stands in for an empty one.
    return "".join(ch for ch in value if "!" <= ch <= "~")[:limit] or NILVALUE


def _sd_name(key: str) -> str:
    return "".join(ch for ch in key if "!" <= ch <= "~" and ch not in '="]')[:MAX_SD_NAME]


def _sd_value(value: str) -> str:
    # RFC 5424 6.3.3: '"', '\' and ']' must be escaped with a backslash inside PARAM-VALUE.
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _structured_data(structured: Mapping[str, str]) -> str:
    params = [f'{name}="{_sd_value(value)}"' for key, value in structured.items() if (name := _sd_name(key))]
    return f"[{SD_ID} {' '.join(params)}]" if params else NILVALUE


def _cut_utf8(data: bytes, limit: int) -> bytes:
    if len(data) <= limit:
        return data
    while limit > 0 and data[limit] & 0xC0 == 0x80:  # never split a multi-byte character
        limit -= 1
    return data[:limit]


def _parse_url(url: str) -> tuple[str, str, int]:
    problem = f"syslog URL must look like udp://HOST:PORT or tcp://HOST:PORT, got {url!r}"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # bad brackets or a port that is not a number in range
        raise ValueError(f"{problem} ({exc})") from None
    if parts.scheme not in ("udp", "tcp") or not parts.hostname or not port:
        raise ValueError(problem)
    if parts.path or parts.query or parts.fragment or parts.username is not None:
        raise ValueError(problem)
    return parts.scheme, parts.hostname, port


Deadline = Callable[[], float]  # when (monotonic) the current attempt must give up


def _wait(sock: socket.socket, events: int, deadline: Deadline) -> None:
    """Wait until `sock` is ready, giving up after IO_TIMEOUT or at the (moving) deadline."""
    give_up = monotonic() + IO_TIMEOUT
    with selectors.DefaultSelector() as selector:  # not select(): fds above 1024 are fine
        selector.register(sock, events)
        while (left := min(give_up, deadline()) - monotonic()) > 0:
            if selector.select(min(left, POLL_SLICE)):
                return
    raise TimeoutError("syslog collector did not respond in time")


def _send_all(sock: socket.socket, data: bytes, deadline: Deadline) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view) :]
        except BlockingIOError:
            _wait(sock, selectors.EVENT_WRITE, deadline)


class _UdpTransport:
    max_size: int | None = MAX_UDP_PAYLOAD
    retries = False  # a datagram lost to an error is gone; UDP never promised more

    def __init__(self, host: str, port: int) -> None:
        self._host, self._port = host, port
        self._sock: socket.socket | None = None
        self._addr: tuple[object, ...] = ()

    def send(self, data: bytes, deadline: Deadline) -> None:
        if self._sock is None:
            family, _, proto, _, addr = socket.getaddrinfo(self._host, self._port, type=socket.SOCK_DGRAM)[0]
            self._sock = socket.socket(family, socket.SOCK_DGRAM, proto)
            self._sock.setblocking(False)
            self._addr = addr
        try:
            try:
                self._sock.sendto(data, self._addr)
            except BlockingIOError:
                _wait(self._sock, selectors.EVENT_WRITE, deadline)
                self._sock.sendto(data, self._addr)
        except OSError:
            self.close()  # resolve the name again next time
            raise

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class _TcpTransport:
    max_size: int | None = None
    retries = True

    def __init__(self, host: str, port: int) -> None:
        self._host, self._port = host, port
        self._sock: socket.socket | None = None

    def send(self, data: bytes, deadline: Deadline) -> None:
        if self._sock is not None and _peer_closed(self._sock):
            self.close()
        if self._sock is None:
            self._sock = self._connect(deadline)
        try:
            _send_all(self._sock, b"%d %s" % (len(data), data), deadline)  # RFC 6587 3.4.1
        except OSError:
            self.close()  # a partly written frame leaves the stream unusable: start a new connection
            raise

    def _connect(self, deadline: Deadline) -> socket.socket:
        error: OSError = OSError(f"no address for {self._host}")
        for family, kind, proto, _, addr in socket.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM):
            sock = socket.socket(family, kind, proto)
            try:
                sock.setblocking(False)
                code = sock.connect_ex(addr)
                if code in (errno.EINPROGRESS, errno.EWOULDBLOCK):
                    _wait(sock, selectors.EVENT_WRITE, deadline)
                    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    raise OSError(code, os.strerror(code))
                return sock
            except OSError as exc:
                sock.close()
                error = exc
        raise error

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _peer_closed(sock: socket.socket) -> bool:
    # A collector never writes, so a readable socket means it has closed (or reset) the connection.
    # Noticing that before writing saves the message that would otherwise vanish into the dead socket.
    while True:
        try:
            chunk = sock.recv(4096)
        except BlockingIOError:
            return False
        except OSError:
            return True
        if not chunk:
            return True


class _Throttle:
    """True at most once per interval: keeps a down collector from flooding the log."""

    def __init__(self, interval: float = LOG_INTERVAL) -> None:
        self._interval = interval
        self._last: float | None = None

    def ready(self) -> bool:
        now = monotonic()
        if self._last is not None and now - self._last < self._interval:
            return False
        self._last = now
        return True


class SyslogSender:
    """Deliver RFC 5424 messages to `udp://HOST:PORT` or `tcp://HOST:PORT` from a background thread.

    `dropped` counts messages given to `send` that were never delivered: queue full, UDP errors,
    still queued when `close` ran out of time, or sent after `close`.
    """

    def __init__(
        self, url: str, *, app_name: str = "minipacs", hostname: str | None = None, queue_size: int = 10000
    ) -> None:
        scheme, host, port = _parse_url(url)
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {queue_size}")
        self.url = url
        self.app_name = app_name
        self.hostname = socket.gethostname() if hostname is None else hostname
        self.dropped = 0
        self._transport = _UdpTransport(host, port) if scheme == "udp" else _TcpTransport(host, port)
        self._queue_size = queue_size
        self._pending: deque[bytes] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._deadline = float("inf")  # set by close(): when to stop trying
        self._full_log = _Throttle()
        self._error_log = _Throttle()

    def send(self, msgid: str, message: str, structured: Mapping[str, str] | None = None, *, severity: int = 5) -> None:
        """Queue one message; never blocks on the network and never raises because of it."""
        data = format_rfc5424(
            msgid,
            message,
            structured,
            severity=severity,
            app_name=self.app_name,
            hostname=self.hostname,
            procid=os.getpid(),
            timestamp=datetime.now(UTC),  # the event's time, not the delivery's
            max_size=self._transport.max_size,
        )
        with self._cond:
            if not self._closing and len(self._pending) < self._queue_size:
                self._pending.append(data)
                self._ensure_thread()
                self._cond.notify()
                return
            self.dropped += 1
            warn = not self._closing and self._full_log.ready()
            dropped = self.dropped
        if warn:  # logged outside the lock: a slow log handler must not hold up other callers
            log.warning("audit syslog queue to %s is full; %d messages dropped so far", self.url, dropped)

    def close(self, timeout: float = 2.0) -> None:
        """Deliver what is queued (giving up after `timeout` seconds), stop the thread, close the socket."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._deadline = monotonic() + timeout
            thread = self._thread
            self._cond.notify_all()
        if thread is not None:
            thread.join(timeout + JOIN_GRACE)
            if thread.is_alive():
                log.warning("audit syslog sender to %s did not stop in time", self.url)

    def _ensure_thread(self) -> None:
        if self._thread is None:  # started on first use: nothing runs for a sender that never sends
            self._thread = threading.Thread(target=self._run, name="audit-syslog", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            while (data := self._next()) is not None:
                self._deliver(data)
        finally:
            self._transport.close()

    def _next(self) -> bytes | None:
        with self._cond:
            while not self._pending and not self._closing:
                self._cond.wait()
            if self._pending and not self._out_of_time():
                return self._pending.popleft()
            self.dropped += len(self._pending)
            self._pending.clear()
            return None

    def _deliver(self, data: bytes) -> None:
        backoff = BACKOFF_MIN
        while True:
            try:
                self._transport.send(data, self._current_deadline)
                return
            except Exception as exc:  # the thread must outlive any one message
                network = isinstance(exc, OSError)
                if self._error_log.ready():
                    log.warning(
                        "audit syslog to %s failed: %s (further errors hidden for a minute)",
                        self.url,
                        exc,
                        exc_info=not network,  # anything but a network error is a bug worth a traceback
                    )
                if not network or not self._transport.retries or self._out_of_time():
                    with self._cond:
                        self.dropped += 1
                    return
            self._pause(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _current_deadline(self) -> float:
        return self._deadline

    def _out_of_time(self) -> bool:
        return monotonic() >= self._deadline

    def _pause(self, seconds: float) -> None:
        end = monotonic() + seconds
        with self._cond:  # close() notifies, so a shorter deadline takes effect at once
            while (left := min(end, self._deadline) - monotonic()) > 0:
                self._cond.wait(left)
