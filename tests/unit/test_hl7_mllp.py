"""MLLP framing (HL7 MLLP release 2): blocks from a byte stream however it is cut, junk between
blocks, blocks cut short, and blocks over the maximum kept to their head."""

from __future__ import annotations

import pytest

from worklist.hl7.mllp import HEAD_BYTES, Broken, Message, MllpDecoder, Oversized, frame

ONE = b"MSH|^~\\&|A|B|C|D|20260101||ADT^A08|1|P|2.5\rPID|1||X\r"
TWO = ONE.replace(b"|1|P|", b"|2|P|")


def test_frame() -> None:
    assert frame(b"abc") == b"\x0babc\x1c\r"


def test_blocks_in_one_chunk_and_whitespace_between() -> None:
    decoder = MllpDecoder(1024)
    assert decoder.feed(frame(ONE) + b"\r\n" + frame(TWO)) == [Message(ONE), Message(TWO)]
    assert not decoder.in_block


@pytest.mark.parametrize("size", [1, 2, 7, 64])
def test_blocks_split_anywhere(size: int) -> None:
    decoder = MllpDecoder(1024)
    stream = frame(ONE) + frame(TWO)
    events = [e for start in range(0, len(stream), size) for e in decoder.feed(stream[start : start + size])]
    assert events == [Message(ONE), Message(TWO)]


def test_end_block_without_carriage_return() -> None:
    assert MllpDecoder(1024).feed(b"\x0b" + ONE + b"\x1c" + frame(TWO)) == [Message(ONE), Message(TWO)]


def test_junk_outside_a_block_is_fatal() -> None:
    events = MllpDecoder(1024).feed(ONE)
    assert events == [Broken(ONE, "bytes outside an MLLP block (not <VT>...<FS><CR>)", True)]
    after_a_block = MllpDecoder(1024).feed(frame(ONE) + b"junk" + frame(TWO))
    assert [type(e) for e in after_a_block] == [Message, Broken]


def test_a_new_start_block_gives_up_the_previous_block() -> None:
    events = MllpDecoder(1024).feed(b"\x0b" + ONE[:20] + frame(TWO))
    assert events == [Broken(ONE[:20], "a new start block before the end block", False), Message(TWO)]


def test_finish_reports_a_block_in_progress() -> None:
    decoder = MllpDecoder(1024)
    assert decoder.finish("closed") == []
    decoder.feed(b"\x0b" + ONE[:30])
    assert decoder.in_block
    assert decoder.finish("closed") == [Broken(ONE[:30], "closed", True)]
    assert not decoder.in_block


def test_a_block_over_the_maximum_keeps_only_its_head() -> None:
    decoder = MllpDecoder(100_000)
    body = ONE + b"x" * 300_000
    events = []
    for start in range(0, len(body), 32_768):
        events += decoder.feed((b"\x0b" if start == 0 else b"") + body[start : start + 32_768])
        assert decoder._block is not None and len(decoder._block) <= 100_000  # never more than the maximum
    events += decoder.feed(b"\x1c\r" + frame(TWO))
    assert events == [Oversized(body[:HEAD_BYTES], len(body)), Message(TWO)]


def test_a_block_of_exactly_the_maximum_is_taken() -> None:
    assert MllpDecoder(len(ONE)).feed(frame(ONE)) == [Message(ONE)]
    assert isinstance(MllpDecoder(len(ONE) - 1).feed(frame(ONE))[0], Oversized)
