"""The audit syslog sender: RFC 5424 bytes on the wire, RFC 6587 framing, and a caller that is never held up."""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest

from pacs.audit.syslog import MAX_UDP_PAYLOAD, SyslogSender, format_rfc5424

BOM = b"\xef\xbb\xbf"
LOGGER = "minipacs.audit.syslog"
SYSLOG = re.compile(
    rb"<(?P<pri>\d{1,3})>(?P<version>\d) (?P<timestamp>\S+) (?P<hostname>\S+) (?P<app>\S+) (?P<procid>\S+)"
    rb" (?P<msgid>\S+) (?P<sd>-|\[.*?(?<!\\)\])(?: (?P<msg>.*))?\Z",
    re.DOTALL,
)
SD_PARAM = re.compile(r'(\S+?)="((?:[^"\\]|\\.)*)"')


def parse(data: bytes) -> dict[str, bytes]:
    match = SYSLOG.match(data)
    assert match is not None, data[:200]
    return {key: value or b"" for key, value in match.groupdict().items()}


def sd_params(sd: bytes) -> dict[str, str]:
    return {name: re.sub(r"\\(.)", r"\1", value) for name, value in SD_PARAM.findall(sd.decode())}


def split_frames(buffer: bytes) -> tuple[list[bytes], bytes]:
    """RFC 6587 octet counting: `LEN SP MSG`, repeated; returns the frames and any incomplete tail."""
    frames: list[bytes] = []
    while True:
        size, space, rest = buffer.partition(b" ")
        if not space or not size.isdigit() or len(rest) < int(size):
            return frames, buffer
        frames.append(rest[: int(size)])
        buffer = rest[int(size) :]


def read_frames(conn: socket.socket, count: int, timeout: float = 2.0) -> list[bytes]:
    """Read from an accepted connection until `count` frames have arrived."""
    buffer, frames = b"", list[bytes]()
    conn.settimeout(timeout)
    while len(frames) < count:
        chunk = conn.recv(65536)
        assert chunk, f"connection closed after {len(frames)} of {count} frames"
        more, buffer = split_frames(buffer + chunk)
        frames += more
    return frames


def read_to_end(conn: socket.socket) -> bytes:
    conn.settimeout(2.0)
    chunks = []
    while chunk := conn.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def message_of(frame: bytes) -> str:
    msg = parse(frame)["msg"]
    assert msg.startswith(BOM)
    return msg[len(BOM) :].decode()


@pytest.fixture
def udp_collector() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2.0)
    try:
        yield sock
    finally:
        sock.close()


@pytest.fixture
def tcp_collector() -> Iterator[socket.socket]:
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(2.0)
    try:
        yield sock
    finally:
        sock.close()


def url(scheme: str, sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{scheme}://{host}:{port}"


def test_udp_datagram_has_the_rfc5424_wire_format(udp_collector: socket.socket) -> None:
    sender = SyslogSender(url("udp", udp_collector), hostname="pacs-01")
    before = datetime.now(UTC)
    try:
        sender.send("STORE", "stored 1 instance für Müller", {"user": 'dr "x"] \\ y', "study uid=": "1.2.3"})
        data, _ = udp_collector.recvfrom(65536)
    finally:
        sender.close()

    fields = parse(data)
    assert fields["pri"] == b"109"  # facility 13 (log audit) * 8 + severity 5 (notice)
    assert fields["version"] == b"1"
    stamp = datetime.strptime(fields["timestamp"].decode(), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert before - timedelta(seconds=1) <= stamp <= datetime.now(UTC)
    assert fields["hostname"] == b"pacs-01"
    assert fields["app"] == b"minipacs"
    assert fields["procid"] == str(os.getpid()).encode()
    assert fields["msgid"] == b"STORE"
    assert fields["sd"] == b'[minipacs@32473 user="dr \\"x\\"\\] \\\\ y" studyuid="1.2.3"]'
    assert sd_params(fields["sd"]) == {"user": 'dr "x"] \\ y', "studyuid": "1.2.3"}
    assert fields["msg"] == BOM + "stored 1 instance für Müller".encode()
    assert sender.dropped == 0


def test_format_is_exact_and_header_fields_are_printable_and_bounded() -> None:
    data = format_rfc5424(
        "READ STUDY" + "X" * 40,
        "",
        {},
        severity=0,
        app_name="mini pacs é" + "a" * 60,
        hostname="",
        procid=42,
        timestamp=datetime(2024, 1, 2, 3, 4, 5, 6000, tzinfo=timezone(timedelta(hours=2))),
    )
    app = "minipacs" + "a" * 40  # space and non-ASCII dropped, then cut to 48
    msgid = ("READSTUDY" + "X" * 40)[:32]
    assert data == f"<104>1 2024-01-02T01:04:05.006000Z - {app} 42 {msgid} - ".encode() + BOM


def test_sd_names_are_sanitized_and_empty_structured_data_is_nil() -> None:
    def sd(structured: dict[str, str] | None) -> bytes:
        stamp = datetime.now(UTC)
        data = format_rfc5424("X", "m", structured, severity=5, app_name="a", hostname="h", procid=1, timestamp=stamp)
        return parse(data)["sd"]

    assert sd(None) == b"-"
    assert sd({'= ]"': "only unusable characters in the name"}) == b"-"
    assert sd({"k" * 40: "v", "é-ok": "ü"}) == f'[minipacs@32473 {"k" * 32}="v" -ok="ü"]'.encode()


def test_udp_truncates_an_oversized_message_at_a_character_boundary(udp_collector: socket.socket) -> None:
    sender = SyslogSender(url("udp", udp_collector), hostname="h")
    try:
        sender.send("EXPORT", "é" * 100_000)
        data, _ = udp_collector.recvfrom(65536)
    finally:
        sender.close()
    assert MAX_UDP_PAYLOAD - 1 <= len(data) <= MAX_UDP_PAYLOAD
    message = message_of(data)  # still valid UTF-8
    assert message and set(message) == {"é"}


def test_tcp_frames_by_octet_count(tcp_collector: socket.socket) -> None:
    sender = SyslogSender(url("tcp", tcp_collector), hostname="h")
    texts = ["first message with spaces and ümlauts", "second\nmessage 12 "]
    for text in texts:
        sender.send("READ", text)
    sender.close()  # flushes both, then ends the connection: the collector reads them together
    conn, _ = tcp_collector.accept()
    with conn:
        frames, tail = split_frames(read_to_end(conn))
    assert tail == b""
    assert [message_of(frame) for frame in frames] == texts


def test_close_flushes_queued_messages(tcp_collector: socket.socket) -> None:
    sender = SyslogSender(url("tcp", tcp_collector), hostname="h")
    for n in range(200):
        sender.send("READ", f"event {n}")
    sender.close()
    conn, _ = tcp_collector.accept()
    with conn:
        frames, _ = split_frames(read_to_end(conn))
    assert [message_of(frame) for frame in frames] == [f"event {n}" for n in range(200)]
    assert sender.dropped == 0


def test_tcp_reconnects_after_the_collector_restarts(tcp_collector: socket.socket) -> None:
    address = tcp_collector.getsockname()
    sender = SyslogSender(url("tcp", tcp_collector), hostname="h")
    try:
        sender.send("READ", "one")
        conn, _ = tcp_collector.accept()
        with conn:
            assert [message_of(f) for f in read_frames(conn, 1)] == ["one"]
        tcp_collector.close()  # the collector goes away entirely...
        sender.send("READ", "two")
        with socket.create_server(address) as restarted:  # ...and comes back on the same port
            sender.send("READ", "three")
            restarted.settimeout(2.0)
            conn, _ = restarted.accept()
            with conn:
                conn.settimeout(2.0)
                received: list[str] = []
                while "three" not in received:
                    received += [message_of(f) for f in read_frames(conn, 1)]
    finally:
        sender.close()
    # "two" was sent while the collector was down; it is kept and retried, so it arrives first
    assert received == ["two", "three"]


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "127.0.0.1:514",
        "http://127.0.0.1:514",
        "udp://127.0.0.1",
        "tcp://:514",
        "udp://127.0.0.1:0",
        "udp://127.0.0.1:70000",
        "udp://127.0.0.1:syslog",
        "udp://[::1:514",
        "tcp://127.0.0.1:514/path",
        "tcp://user@127.0.0.1:514",
    ],
)
def test_invalid_urls_raise(bad: str) -> None:
    with pytest.raises(ValueError, match="udp://HOST:PORT or tcp://HOST:PORT"):
        SyslogSender(bad)


def test_ipv6_literal_urls_are_accepted() -> None:
    SyslogSender("udp://[::1]:514").close()
    SyslogSender("tcp://[2001:db8::1]:6514").close()


@pytest.fixture
def stalled_collector() -> Iterator[str]:
    """A TCP collector that never accepts, with its accept queue full: a new connection hangs in the handshake."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=0)
    fillers: list[socket.socket] = []
    try:
        while len(fillers) < 8:
            filler = socket.socket()
            fillers.append(filler)
            filler.settimeout(0.05)
            try:
                filler.connect(listener.getsockname())
            except TimeoutError:
                break  # the queue is full: the next handshake will hang too
        else:
            pytest.fail("could not fill the listen backlog")
        yield url("tcp", listener)
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def test_full_queue_drops_without_blocking(stalled_collector: str, caplog: pytest.LogCaptureFixture) -> None:
    sender = SyslogSender(stalled_collector, hostname="h", queue_size=2)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        started = time.monotonic()
        for n in range(100):
            sender.send("READ", f"event {n}")
        elapsed = time.monotonic() - started
        assert sender.dropped >= 97  # at most one in flight and two queued
        started = time.monotonic()
        sender.close(timeout=0.1)
        closing = time.monotonic() - started
    assert elapsed < 1.0  # a blocked send would wait out the 10 s I/O timeout
    assert closing < 1.0
    assert sender.dropped == 100  # nothing ever got through
    full = [r for r in caplog.records if r.name == LOGGER and "full" in r.getMessage()]
    assert len(full) == 1  # one warning, not one per dropped message


def test_network_errors_are_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    with socket.create_server(("127.0.0.1", 0)) as gone:
        address = url("tcp", gone)  # nothing listens here once it is closed
    sender = SyslogSender(address, hostname="h")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        sender.send("READ", "nobody is listening")
        sender.close(timeout=0.3)  # retries with a backoff until close gives up
    failures = [r for r in caplog.records if r.name == LOGGER and "failed" in r.getMessage()]
    assert len(failures) == 1
    assert sender.dropped == 1


def test_send_after_close_is_counted_as_dropped(udp_collector: socket.socket) -> None:
    sender = SyslogSender(url("udp", udp_collector))
    sender.close()
    sender.send("READ", "too late")
    assert sender.dropped == 1
