"""Rendered frames and thumbnails of stored instances (PS3.18 8.3.5, 10.4.1.1.3; WADO-URI).

What a frame's pixels mean comes from the DICOM JSON the index keeps for every instance, and
the frame itself from the layout recorded at ingest: a native frame is one ranged read, a
compressed one is its own fragments decoded alone. Neither reads the rest of the object (a
1,000-frame instance on S3 is never downloaded to show one frame); only objects without a
layout (deflated, unaligned 1-bit) are decoded from the whole file.

Encoded images are cached by (instance, blob, frame, options): instances do not change once
stored, and a replacement under the "overwrite" policy gets a new blob key.
"""

from __future__ import annotations

import json
from collections.abc import Hashable
from dataclasses import replace

import numpy as np
import pydicom

from pacs.dicom.frames import PIXEL_TAGS, frame_count
from pacs.errors import InvalidInput, NotAcceptable, NotFound, PacsError
from pacs.index.repository import StoredInstance
from pacs.pixels.cache import LRUCache
from pacs.pixels.frames import (
    can_read_natively,
    decode_compressed,
    decode_frame,
    decoded_attributes,
    native_frame,
)
from pacs.pixels.render import RenderAttributes, RenderOptions, render
from pacs.retrieve import RetrieveService

ATTRIBUTE_CACHE_BYTES = 8 * 2**20  # parsed render attributes, so scrolling frames skips the metadata
_PIXEL_KEYS = {f"{tag:08X}" for tag in PIXEL_TAGS}


class PixelService:
    def __init__(self, retrieve: RetrieveService, *, cache_bytes: int = 64 * 2**20) -> None:
        self.retrieve = retrieve
        self.cache: LRUCache[bytes] = LRUCache(cache_bytes)
        self._attributes: LRUCache[RenderAttributes] = LRUCache(ATTRIBUTE_CACHE_BYTES, sizeof=_attributes_size)

    def render(self, stored: StoredInstance, frame: int, options: RenderOptions) -> bytes:
        """Frame ``frame`` (1-based) of an instance as an encoded image."""
        key: Hashable = (stored.sop_instance_uid, stored.blob_key, frame, options)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        attributes = self.attributes(stored)
        count = self.frame_count(stored, attributes)
        if frame < 1:
            raise InvalidInput("frame numbers start at 1")
        if frame > count:
            raise NotFound(f"instance {stored.sop_instance_uid} has {count} frame(s); frame {frame} does not exist")
        pixels, described = self._pixels(stored, attributes, frame - 1)
        data = render(pixels, described.for_frame(frame - 1), options)
        self.cache.put(key, data)
        return data

    def thumbnail(self, stored: list[StoredInstance], size: int = 128) -> bytes:
        """A JPEG of the middle frame of the middle instance (among those with pixel data,
        when that is known), fitted in ``size`` x ``size``."""
        if not stored:
            raise NotFound("no instance to make a thumbnail of")
        with_pixels = [item for item in stored if item.frame_layout is not None] or stored
        middle = with_pixels[len(with_pixels) // 2]
        count = self.frame_count(middle, self.attributes(middle))
        return self.render(middle, count // 2 + 1, RenderOptions(viewport=(size, size)))

    def attributes(self, stored: StoredInstance) -> RenderAttributes:
        """The instance's render attributes, from its indexed DICOM JSON (cached)."""
        key: Hashable = (stored.sop_instance_uid, stored.blob_key)
        cached = self._attributes.get(key)
        if cached is not None:
            return cached
        documents = self.retrieve.metadata(
            stored.study_instance_uid, stored.series_instance_uid, stored.sop_instance_uid
        )
        document = json.loads(documents[0])
        if not _PIXEL_KEYS & document.keys():
            raise NotFound(f"instance {stored.sop_instance_uid} has no pixel data")
        attributes = RenderAttributes.from_json(document)
        if attributes.needs_file:
            attributes = self._with_file_palette(stored, attributes)
        self._attributes.put(key, attributes)
        return attributes

    def frame_count(self, stored: StoredInstance, attributes: RenderAttributes) -> int:
        if stored.frame_layout is not None:
            return frame_count(stored.frame_layout)  # what the stored bytes really hold
        return attributes.number_of_frames

    def _pixels(
        self, stored: StoredInstance, attributes: RenderAttributes, index: int
    ) -> tuple[np.ndarray, RenderAttributes]:
        """Frame ``index`` (0-based) and the attributes that describe the array returned."""
        kind = stored.frame_layout["kind"] if stored.frame_layout is not None else None
        if kind == "native" and can_read_natively(attributes):
            return native_frame(self._frame_bytes(stored, index), attributes), attributes
        if kind == "encapsulated":
            data = self._frame_bytes(stored, index)
            return decode_compressed(data, stored.transfer_syntax_uid, attributes), decoded_attributes(attributes)
        # The blob store's own file object (a real file on disk, a spooled download from S3):
        # a missing blob is its NotFound, not a decoder error.
        with self.retrieve.blobs.open(stored.blob_key) as fh:
            pixels = decode_frame(fh, index, transfer_syntax=stored.transfer_syntax_uid)
        return pixels, decoded_attributes(attributes)

    def _frame_bytes(self, stored: StoredInstance, index: int) -> bytes:
        # retrieve.frames cuts by the recorded layout and swaps big endian words.
        [frame] = self.retrieve.frames(stored, [index + 1])
        return b"".join(frame.chunks)

    def _with_file_palette(self, stored: StoredInstance, attributes: RenderAttributes) -> RenderAttributes:
        """Palette LUT data left out of the JSON (bulk data, segmented tables) read from the
        file's header."""
        try:
            with self.retrieve.blobs.open(stored.blob_key) as fh:
                header = RenderAttributes.from_dataset(pydicom.dcmread(fh, stop_before_pixels=True))
        except PacsError:
            raise
        except Exception as exc:  # pydicom raises many kinds on damaged input
            raise NotAcceptable(f"the palette of instance {stored.sop_instance_uid} cannot be read: {exc}") from exc
        return replace(attributes, palette=header.palette, palette_in_file=False)


def _attributes_size(attributes: RenderAttributes) -> int:
    tables = (attributes.modality_lut, attributes.voi_lut)
    size = 1024 + 64 * len(attributes.per_frame) + sum(t.data.nbytes for t in tables if t is not None)
    return size + (attributes.palette.table.nbytes if attributes.palette is not None else 0)
