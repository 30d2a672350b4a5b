"""C-GET/C-MOVE sub-operations in a transfer syntax the peer accepted.

An instance goes out as stored whenever the association can carry it (byte for byte: the data
set is read without decoding). Only when the peer accepted none of that, it is converted
(pacs.pixels.transcode) to an accepted syntax: uncompressed first, then a lossless compressed
one; a lossy syntax is never chosen for the peer, since nobody asked for the loss.
"""

from __future__ import annotations

import io
from typing import BinaryIO

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom.association import Association
from pynetdicom.events import Event

from pacs.dicom.fastheader import Unsupported
from pacs.dimse import tuning
from pacs.index.repository import StoredInstance
from pacs.pixels.transcode import producible_from, transcode_file

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
# Preference order when the stored syntax was not accepted.
FALLBACKS = (*UNCOMPRESSED, JPEGLSLossless, JPEG2000Lossless, RLELossless)


class StoreAssociation:
    """The association C-STORE sub-operations go out on: for C-GET the peer's own, for C-MOVE
    the one pynetdicom opens to the destination, caught by :meth:`capture` (an EVT_ACCEPTED
    handler) before any sub-operation is sent."""

    def __init__(self, assoc: Association | None = None) -> None:
        self.assoc = assoc

    def capture(self, event: Event) -> None:
        self.assoc = event.assoc

    def accepted_syntaxes(self, sop_class_uid: str) -> list[str]:
        """Transfer syntaxes accepted for sending ``sop_class_uid`` (we are the storage SCU)."""
        if self.assoc is None:
            return []
        return [
            str(context.transfer_syntax[0])
            for context in self.assoc.accepted_contexts
            if context.abstract_syntax == sop_class_uid and context.as_scu
        ]

    def read(self, item: StoredInstance, stored: BinaryIO) -> Dataset:
        """``item`` (its stored file open as ``stored``) ready to send: as stored, or converted
        to a syntax the peer accepted. Raises NotAcceptable when the conversion fails."""
        target = conversion_target(item.transfer_syntax_uid, self.accepted_syntaxes(item.sop_class_uid))
        if target is None:
            if tuning.sends_stored_bytes():
                try:
                    return tuning.StoredBytes(stored.read(), item.sop_class_uid, item.sop_instance_uid)
                except Unsupported:
                    stored.seek(0)
            # Values stay raw (undecoded); pynetdicom writes them back byte for byte.
            return pydicom.dcmread(stored)
        # Through bytes, so the data set's encoding agrees with its new Transfer Syntax UID:
        # pynetdicom refuses (or mislabels) a data set whose raw elements say otherwise.
        converted = io.BytesIO()
        transcode_file(stored, target, converted)
        converted.seek(0)
        return pydicom.dcmread(converted)


def conversion_target(stored: str, accepted: list[str]) -> str | None:
    """The syntax to convert to, or None to send as stored: when the peer accepted the stored
    syntax, when pynetdicom can re-encode it itself (between uncompressed syntaxes of one byte
    order), and when nothing accepted can be produced (the sub-operation then fails as before)."""
    if stored in accepted or _reencodable(stored, accepted):
        return None
    producible = producible_from(stored)
    return next((str(uid) for uid in FALLBACKS if uid in accepted and uid in producible), None)


def _reencodable(stored: str, accepted: list[str]) -> bool:
    try:
        source = UID(stored)
        if source.is_compressed:
            return False
        return any(not UID(uid).is_compressed and UID(uid).is_little_endian == source.is_little_endian for uid in accepted)
    except ValueError:  # not a transfer syntax pydicom knows
        return False
