"""The MLLP listener on both backends, with what goes wrong on the wire: blocks cut short or never
framed, wrong encoding characters, character sets, a 10 MB message, a message over the maximum,
a burst of 200 on one connection. After each bad input the listener keeps serving."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacs.index.hl7_log import Hl7Log, LoggedMessage, MessageFilter
from pacs.index.orders import OrderFilter
from pacs.services import Services
from tests.support.hl7 import CR, FS, VT, MllpClient, message, new_order, obr, orc, pid, running_hl7_listener, seg
from tests.support.s3server import free_port
from worklist.hl7.listener import Hl7Listener

BLOCK_TIMEOUT = 1.0


@pytest.fixture
def listener(services: Services) -> Iterator[Hl7Listener]:
    with running_hl7_listener(services, block_timeout=BLOCK_TIMEOUT) as running:
        yield running


def logged(services: Services) -> list[LoggedMessage]:
    return list(reversed(Hl7Log(services.engine).search(MessageFilter(limit=1000))))


def still_serving(listener: Hl7Listener, control_id: str = "AFTER") -> None:
    with MllpClient(listener.port) as client:
        ack = client.exchange(new_order(control_id, f"P-{control_id}"))
    assert (ack.code, ack.control_id) == ("AA", control_id), ack.raw


def test_200_messages_in_a_burst_on_one_connection(services: Services, listener: Hl7Listener) -> None:
    burst = b"".join(VT + new_order(f"B-{n:03d}", f"P-{n:03d}").encode() + FS + CR for n in range(200))
    with MllpClient(listener.port) as client:
        client.send_raw(burst)  # all at once: answered in order, one by one
        acks = [client.ack() for _ in range(200)]
    assert [a.control_id for a in acks] == [f"B-{n:03d}" for n in range(200)]
    assert {a.code for a in acks} == {"AA"}
    orders = services.orders.search(OrderFilter(limit=1000))
    assert sorted(o.placer_order_number or "" for o in orders) == [f"P-{n:03d}" for n in range(200)]
    assert len({o.order_number for o in orders}) == len({o.accession_number for o in orders}) == 200
    assert [(m.control_id, m.ack_code, m.duplicate) for m in logged(services)] == [
        (f"B-{n:03d}", "AA", False) for n in range(200)
    ]


def test_a_10_mb_message_is_taken_whole(services: Services, listener: Hl7Listener) -> None:
    # An order with a 10 MB observation (an embedded document, base64): kept, not refused.
    document = "QUJD" * (10 * 1024 * 1024 // 4)
    sent = new_order("BIG-1", "P-BIG", extra=(seg("OBX", {1: "1", 2: "ED", 3: "PDF^Referral", 5: f"^AP^PDF^Base64^{document}"}),))
    assert len(sent) > 10 * 1024 * 1024
    with MllpClient(listener.port) as client:
        ack = client.exchange(sent)
        assert (ack.code, ack.control_id) == ("AA", "BIG-1"), ack.text
        assert client.exchange(new_order("BIG-2", "P-BIG-2")).code == "AA"
    [big, _] = logged(services)
    assert big.size == len(sent.rstrip("\r")) + 1
    assert Hl7Log(services.engine).get(big.pk).raw == sent.replace("\r", "\r")


def test_a_message_over_the_maximum_is_refused_and_the_connection_goes_on(services: Services) -> None:
    with running_hl7_listener(services, hl7_max_message_bytes=64 * 1024) as small, MllpClient(small.port) as client:
        too_big = new_order("HUGE-1", "P-HUGE", extra=(seg("NTE", {1: "1", 3: "x" * 200_000}),))
        ack = client.exchange(too_big)
        assert (ack.code, ack.control_id, ack.error_code) == ("AE", "HUGE-1", "102")
        assert "more than the maximum of 65,536 bytes" in ack.text
        assert client.exchange(new_order("SMALL-1", "P-SMALL")).code == "AA"
    assert [o.placer_order_number for o in services.orders.search(OrderFilter())] == ["P-SMALL"]
    refused = logged(services)[0]
    assert (refused.control_id, refused.ack_code) == ("HUGE-1", "AE")
    assert refused.size < 70 * 1024  # only the head is kept


def test_bytes_outside_a_block_end_the_connection(services: Services, listener: Hl7Listener) -> None:
    with MllpClient(listener.port) as client:
        client.send_raw(new_order("NOFRAME", "P-NOFRAME").encode() + b"\n")  # no <VT> ... <FS><CR>
        assert client.closed_by_server()
        assert client.buffer == b""  # nothing to answer: it is not MLLP
    with MllpClient(listener.port) as client:
        client.send_raw(b"\x00\xff binary junk\x00")
        assert client.closed_by_server()
    still_serving(listener)
    entries = logged(services)
    assert [(e.ack_code, e.outcome) for e in entries[:2]] == [
        ("", "not answered: bytes outside an MLLP block (not <VT>...<FS><CR>)"),
    ] * 2
    assert entries[0].control_id == "NOFRAME"
    assert Hl7Log(services.engine).get(entries[1].pk).raw.startswith("\\x00\\xff binary junk")
    assert [o.placer_order_number for o in services.orders.search(OrderFilter())] == ["P-AFTER"]


def cut(sent: str) -> bytes:
    """The message cut off inside PID."""
    return sent[: sent.index("\rPID") + 10].encode()


def test_blocks_cut_short(services: Services, listener: Hl7Listener) -> None:
    with MllpClient(listener.port) as client:
        # A new block before the end of the first: the first was given up by its sender.
        client.send_raw(VT + cut(new_order("CUT-1", "P-CUT-1")) + VT + new_order("WHOLE-1", "P-WHOLE").encode()
                        + FS + CR)
        assert client.ack().control_id == "WHOLE-1"
        # <FS> without <CR> is taken.
        client.send_raw(VT + new_order("NOCR-1", "P-NOCR").encode() + FS)
        assert client.ack().code == "AA"
        # The connection closes in the middle of a block.
        client.send_raw(VT + cut(new_order("CUT-2", "P-CUT-2")))
    with MllpClient(listener.port) as client:
        client.send_raw(VT + cut(new_order("CUT-3", "P-CUT-3")))  # then silence
        started = time.monotonic()
        assert client.closed_by_server()
        assert time.monotonic() - started < BLOCK_TIMEOUT + 5
    still_serving(listener)
    deadline = time.monotonic() + 5
    while len(logged(services)) < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    outcomes = {e.control_id: (e.ack_code, e.outcome) for e in logged(services)}
    assert outcomes["CUT-1"] == ("", "not answered: a new start block before the end block")
    assert outcomes["CUT-2"] == ("", "not answered: the connection closed before the end block")
    assert outcomes["CUT-3"] == ("", f"not answered: no data for {BLOCK_TIMEOUT:g} s inside a block")
    placers = sorted(o.placer_order_number or "" for o in services.orders.search(OrderFilter()))
    assert placers == ["P-AFTER", "P-NOCR", "P-WHOLE"]


TRUNCATED = [
    ("inside MSH", "MSH|^~\\&|RIS|HOSP|MINIPACS|RADIOLOGY|2026", "", "MSH-10"),
    ("after MSH-10", "MSH|^~\\&|RIS|HOSP|MINIPACS|RADIOLOGY|20260102||ORM^O01|TR-2", "TR-2", "MSH-12"),
    ("before ORC", new_order("TR-3", "P-TR").split("\rORC")[0], "TR-3", "no ORC segment"),
    ("inside PID-3", new_order("TR-4", "P-TR").split("PAT-1")[0][:-1], "TR-4", "no ORC segment"),
]


@pytest.mark.parametrize("where, sent, control_id, words", TRUNCATED, ids=[t[0] for t in TRUNCATED])
def test_a_truncated_message_is_answered_ae(
    services: Services, listener: Hl7Listener, where: str, sent: str, control_id: str, words: str
) -> None:
    with MllpClient(listener.port) as client:
        ack = client.exchange(sent)
        assert (ack.code, ack.error_code, ack.control_id) == ("AE", "101", control_id), ack.raw
        assert words in ack.text
        assert client.exchange(new_order("AFTER", "P-AFTER")).code == "AA"
    first = logged(services)[0]
    assert (first.ack_code, first.control_id or "") == ("AE", control_id)
    assert Hl7Log(services.engine).get(first.pk).raw == sent  # kept as received
    assert [o.placer_order_number for o in services.orders.search(OrderFilter())] == ["P-AFTER"]


ENCODING = [
    ("three encoding characters", "MSH|^~&|"),
    ("a repeated encoding character", "MSH|^^\\&|"),
    ("the field separator among them", "MSH|^~|&|"),
    ("a letter among them", "MSH|^~\\A|"),
]


@pytest.mark.parametrize("what, start", ENCODING, ids=[e[0] for e in ENCODING])
def test_wrong_encoding_characters_are_answered_ae(
    services: Services, listener: Hl7Listener, what: str, start: str
) -> None:
    sent = start + "RIS|HOSP|MINIPACS|RADIOLOGY|20260102||ORM^O01|ENC-1|P|2.5\r" + pid() + "\r"
    with MllpClient(listener.port) as client:
        ack = client.exchange(sent)
        assert (ack.code, ack.error_code) == ("AE", "102"), ack.raw
        assert "MSH-2 encoding characters" in ack.text and ack.field("ERR", 2) == "MSH"
        assert client.exchange(new_order("AFTER", "P-AFTER")).code == "AA"
    assert logged(services)[0].ack_code == "AE"


def test_not_hl7_inside_a_block(services: Services, listener: Hl7Listener) -> None:
    with MllpClient(listener.port) as client:
        for junk in (b"\x00\x01\x02 not hl7", b"MSH1bad", b"", b"GET / HTTP/1.1\r\n\r\n"):
            ack = client.exchange(junk)
            assert (ack.code, ack.control_id) == ("AE", ""), ack.raw
            assert "MSH" in ack.text
        assert client.exchange(new_order("AFTER", "P-AFTER")).code == "AA"
    assert [e.ack_code for e in logged(services)] == ["AE"] * 4 + ["AA"]


def test_character_sets(services: Services, listener: Hl7Listener) -> None:
    latin = message("ORM^O01", "CS-1", pid(name="Müller^Zoë"), orc("NW", "P-CS-1"), obr("P-CS-1"), charset="8859/1")
    utf8 = message("ORM^O01", "CS-2", pid(name="Straße^Łucja"), orc("NW", "P-CS-2"), obr("P-CS-2"),
                   charset="UNICODE UTF-8")
    undeclared = message("ORM^O01", "CS-3", pid(name="Ñúñez^Ana"), orc("NW", "P-CS-3"), obr("P-CS-3"))
    with MllpClient(listener.port) as client:
        latin_ack = client.exchange(latin.encode("latin-1"))
        assert latin_ack.code == "AA" and latin_ack.field("MSH", 18) == "8859/1"  # answered in its character set
        assert client.exchange(utf8.encode()).code == "AA"
        assert client.exchange(undeclared.encode("latin-1")).code == "AA"  # not UTF-8: read as Latin-1
        wrong = client.exchange(utf8.replace("CS-2", "CS-4").encode("latin-1", errors="replace").replace(b"?", b"\xe9"))
        assert wrong.code == "AE" and "not valid UNICODE UTF-8" in wrong.text
        unknown = client.exchange(message("ORM^O01", "CS-5", pid(), charset="EBCDIC"))
        assert unknown.code == "AE" and "MSH-18" in unknown.text
    names = {o.placer_order_number: o.patient_name for o in services.orders.search(OrderFilter())}
    assert names == {"P-CS-1": "Müller^Zoë", "P-CS-2": "Straße^Łucja", "P-CS-3": "Ñúñez^Ana"}


def test_connections_are_served_side_by_side(services: Services, listener: Hl7Listener) -> None:
    idle = MllpClient(listener.port)
    idle.send_raw(VT + b"MSH|^~\\&|")  # a block begun and left hanging on one connection
    try:
        started = time.monotonic()
        still_serving(listener)  # does not wait for it
        assert time.monotonic() - started < BLOCK_TIMEOUT
    finally:
        idle.sock.close()


def test_connections_over_the_limit_are_closed(services: Services) -> None:
    with running_hl7_listener(services) as listener:
        listener.server.max_connections = 2
        first, second = MllpClient(listener.port), MllpClient(listener.port)
        assert first.exchange(new_order("C-1", "P-C-1")).code == "AA"
        assert second.exchange(new_order("C-2", "P-C-2")).code == "AA"
        with MllpClient(listener.port) as third:
            assert third.closed_by_server()
        first.sock.close()
        deadline = time.monotonic() + 5
        while True:  # a place frees once the server has seen the first one go
            try:
                still_serving(listener)
                break
            except ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.02)
        second.sock.close()


def test_serve_stops_when_the_hl7_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {"PATH": "/usr/bin:/bin", "MINIPACS_DATA_DIR": str(tmp_path / "data"), "MINIPACS_HL7_PORT": str(port),
               "MINIPACS_HTTP_PORT": str(free_port()), "MINIPACS_DICOM_PORT": str(free_port())}
        result = subprocess.run([sys.executable, "-m", "pacs.cli", "serve"], check=False, env=env,
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"cannot listen for HL7 on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
