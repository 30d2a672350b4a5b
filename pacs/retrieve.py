"""Find and stream stored instances, frames and bulk data (shared by WADO-RS, and later C-GET/C-MOVE).

Frames are cut from storage with ranged reads using the layout recorded at ingest; only objects
without a usable layout (deflated data sets, unaligned 1-bit frames) are parsed at request time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice

import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian

from pacs.dicom.frames import frame_count, frame_ranges, native_layout
from pacs.errors import InvalidInput, NotFound
from pacs.index.repository import IndexRepository, StoredInstance
from storage.base import BlobStore

BULK_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
_WORD_SIZES = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}  # bytes swapped per word for big endian
READ_AHEAD = 3  # object-store reads opened ahead of the one being streamed


@dataclass(frozen=True)
class Frame:
    number: int
    chunks: Iterator[bytes]


class RetrieveService:
    def __init__(self, index: IndexRepository, blobs: BlobStore) -> None:
        self.index = index
        self.blobs = blobs

    def locate(
        self, study: str, series: str | None = None, sop: str | None = None, *, referred_by: str | None = None
    ) -> list[StoredInstance]:
        return self.index.locate(study, series, sop, referred_by=referred_by)

    def metadata(
        self, study: str, series: str | None = None, sop: str | None = None, *, referred_by: str | None = None
    ) -> list[str]:
        return self.index.metadata(study, series, sop, referred_by=referred_by)

    def iter_file(self, stored: StoredInstance) -> Iterator[bytes]:
        return self.blobs.iter_range(stored.blob_key)

    def iter_files(self, stored: list[StoredInstance]) -> Iterator[tuple[StoredInstance, Iterator[bytes]]]:
        """Each instance with its byte stream, in order. From an object store the next few reads
        are opened ahead, so their time to first byte overlaps the current transfer instead of
        adding up over a series; bodies are still read one at a time (memory stays flat)."""
        if not stored or self.blobs.local_path(stored[0].blob_key) is not None:
            for item in stored:
                yield item, self.iter_file(item)
            return
        upcoming = iter(stored)
        with ThreadPoolExecutor(max_workers=READ_AHEAD, thread_name_prefix="read-ahead") as pool:
            opened: deque[tuple[StoredInstance, Future[Iterator[bytes]]]] = deque(
                (item, pool.submit(self.iter_file, item)) for item in islice(upcoming, READ_AHEAD)
            )
            while opened:
                item, future = opened.popleft()
                following = next(upcoming, None)
                if following is not None:
                    opened.append((following, pool.submit(self.iter_file, following)))
                yield item, future.result()

    def frames(self, stored: StoredInstance, numbers: list[int]) -> list[Frame]:
        """Frames by 1-based number, validated before any byte is sent."""
        if any(n < 1 for n in numbers):
            raise InvalidInput("frame numbers start at 1")
        layout = stored.frame_layout
        if layout is None:
            return self._frames_by_parsing(stored, numbers)
        count = frame_count(layout)
        _check_numbers(numbers, count, stored)
        return [Frame(n, self._read_frame(stored, n - 1)) for n in numbers]

    def _read_frame(self, stored: StoredInstance, index: int) -> Iterator[bytes]:
        layout = stored.frame_layout
        assert layout is not None
        swap = layout.get("byteswap", 0)
        for offset, length in frame_ranges(layout, index):
            if swap:
                data = self.blobs.read_range(stored.blob_key, offset, length)
                yield _swap_bytes(data, swap)
            else:
                yield from self.blobs.iter_range(stored.blob_key, offset, length)

    def _frames_by_parsing(self, stored: StoredInstance, numbers: list[int]) -> list[Frame]:
        with self.blobs.open(stored.blob_key) as fh:
            ds = pydicom.dcmread(fh)
        if "PixelData" not in ds:
            raise NotFound(f"instance {stored.sop_instance_uid} has no pixel data")
        data = ds.PixelData
        rows, columns = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1))
        bits = int(ds.BitsAllocated)
        count = int(ds.get("NumberOfFrames", 1) or 1)
        _check_numbers(numbers, count, stored)
        layout = native_layout(0, len(data), rows=rows, columns=columns, samples=samples,
                               bits_allocated=bits, frames=count, little=True)
        if layout is not None:
            return [Frame(n, iter([data[r[0] : r[0] + r[1]] for r in frame_ranges(layout, n - 1)])) for n in numbers]
        # Unaligned 1-bit frames: unpack, cut, repack (PS3.5 8.1.1 bit order).
        per_frame = rows * columns * samples
        bits_array = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
        return [
            Frame(n, iter([np.packbits(bits_array[(n - 1) * per_frame : n * per_frame], bitorder="little").tobytes()]))
            for n in numbers
        ]

    def bulk(self, stored: StoredInstance, tag: int) -> tuple[str, list[Iterator[bytes]]]:
        """(transfer syntax, parts) for a BulkDataURI: pixel data comes from the recorded offsets
        (one part per frame when encapsulated); other large values from the stored object."""
        if tag in (0x7FE00010, 0x7FE00008, 0x7FE00009) and stored.frame_layout is not None:
            if stored.frame_layout["kind"] == "encapsulated":
                frames = self.frames(stored, list(range(1, frame_count(stored.frame_layout) + 1)))
                return stored.transfer_syntax_uid, [f.chunks for f in frames]
            if stored.pixel_offset is not None and stored.pixel_length is not None:
                chunks = self.blobs.iter_range(stored.blob_key, stored.pixel_offset, stored.pixel_length)
                swap = stored.frame_layout.get("byteswap", 0)
                return ExplicitVRLittleEndian, [_swapped(chunks, swap) if swap else chunks]
        with self.blobs.open(stored.blob_key) as fh:
            ds = pydicom.dcmread(fh, stop_before_pixels=tag < 0x7FE00000)
        # Only binary values are ever given a BulkDataURI; bytes(value) of a number or a name
        # would be garbage (bytes(8) is eight zero bytes) or a TypeError.
        if tag not in ds or ds[tag].VR not in BULK_VRS:
            raise NotFound(f"instance {stored.sop_instance_uid} has no bulk data at {tag:08X}")
        value = ds[tag].value
        raw = bytes(value or b"")
        if not ds.original_encoding[1]:  # big endian: bulk data is always sent little endian
            raw = _swap_bytes(raw, _WORD_SIZES.get(ds[tag].VR, 1))
        return ExplicitVRLittleEndian, [iter([raw])]


def _check_numbers(numbers: list[int], count: int, stored: StoredInstance) -> None:
    beyond = [n for n in numbers if n > count]
    if beyond:
        raise NotFound(f"instance {stored.sop_instance_uid} has {count} frame(s); frame {beyond[0]} does not exist")


def _swap_bytes(data: bytes, word: int) -> bytes:
    if word <= 1 or len(data) % word:
        return data
    return np.frombuffer(data, dtype=f">u{word}").astype(f"<u{word}").tobytes()


def _swapped(chunks: Iterator[bytes], word: int) -> Iterator[bytes]:
    carry = b""
    for chunk in chunks:
        data = carry + chunk
        cut = len(data) - len(data) % word
        carry = data[cut:]
        yield _swap_bytes(data[:cut], word)
    if carry:
        yield carry
