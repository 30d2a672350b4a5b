"""C-FIND answers that arrive already encoded (pacs.dicom.encoded.EncodedDataset) are sent as
they are: pynetdicom's query SCP encodes every pending identifier with pydicom, element by
element, which for a worklist answer costs more than building it. Applied once per serving
process; for an encoding other than the one the answer carries, and for any other data set,
pynetdicom's own encoder runs as before. The bytes sent are the same either way
(tests/unit/test_mwl_encode.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pynetdicom
from pydicom.dataset import Dataset
from pynetdicom import service_class

from pacs.dicom.encoded import EncodedDataset

log = logging.getLogger(__name__)
SUPPORTED = ("3.0.",)  # service_class.encode is looked up at call time in these versions
_applied = False


def apply() -> bool:
    global _applied
    if _applied:
        return True
    if not pynetdicom.__version__.startswith(SUPPORTED):
        log.info("pynetdicom %s: C-FIND answers encoded by pynetdicom", pynetdicom.__version__)
        return False
    service_class.encode = _encoder(service_class.encode)  # type: ignore[attr-defined]
    _applied = True
    return True


def _encoder(original: Callable[..., bytes | None]) -> Callable[..., bytes | None]:
    def encode(ds: Dataset, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False) -> bytes | None:
        if isinstance(ds, EncodedDataset) and (is_implicit_vr, is_little_endian, deflated) == ds.encoding:
            return ds.encoded
        return original(ds, is_implicit_vr, is_little_endian, deflated)

    return encode
