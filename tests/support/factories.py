"""Test data made on the spot: CT-like instances and STOW request bodies."""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from dicomweb.multipart import iter_multipart, multipart_content_type, new_boundary


def make_ct(size: int = 64, *, seed: int = 0, **overrides: Any) -> Dataset:
    """A valid CT image instance with random 16-bit pixels; any attribute can be overridden
    by keyword (``PatientName="Doe^Jane"``), or removed by passing None."""
    rng = np.random.default_rng(seed)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Test^Patient"
    ds.PatientID = "PID-0001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = "20240115"
    ds.StudyTime = "101500"
    ds.AccessionNumber = "ACC0001"
    ds.StudyID = "1"
    ds.StudyDescription = "CT HEAD"
    ds.ReferringPhysicianName = "Referring^Doctor"
    ds.Modality = "CT"
    ds.SeriesNumber = 1
    ds.SeriesDescription = "AXIAL"
    ds.InstanceNumber = 1
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.PixelData = rng.integers(0, 4096, size=(size, size), dtype=np.uint16).tobytes()
    for keyword, value in overrides.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def make_series(count: int, *, size: int = 64, **overrides: Any) -> list[Dataset]:
    """Instances of one series (same study/series UIDs, numbered 1..count)."""
    study = overrides.pop("StudyInstanceUID", generate_uid())
    series = overrides.pop("SeriesInstanceUID", generate_uid())
    return [
        make_ct(size, seed=i, StudyInstanceUID=study, SeriesInstanceUID=series, InstanceNumber=i + 1, **overrides)
        for i in range(count)
    ]


def to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def stow_body(parts: Iterable[bytes | Dataset], part_type: str = "application/dicom") -> tuple[bytes, str]:
    """(body, Content-Type) of a STOW-RS request carrying the given instances."""
    boundary = new_boundary()
    encoded = [p if isinstance(p, bytes) else to_bytes(p) for p in parts]
    body = b"".join(iter_multipart([({"Content-Type": part_type}, [data]) for data in encoded], boundary))
    return body, multipart_content_type("application/dicom", boundary)


def split_multipart(content_type: str, body: bytes) -> list[tuple[dict[str, str], bytes]]:
    """Parse a multipart/related answer into (headers, body) pairs (test-side parser)."""
    from dicomweb.multipart import MultipartReader, PartData, PartEnd, PartStart, boundary_of, parse_content_type

    reader = MultipartReader(boundary_of(parse_content_type(content_type)))
    parts: list[tuple[dict[str, str], bytes]] = []
    headers: dict[str, str] = {}
    chunks: list[bytes] = []
    for event in [*reader.feed(body), *reader.close()]:
        if isinstance(event, PartStart):
            headers, chunks = event.headers, []
        elif isinstance(event, PartData):
            chunks.append(event.data)
        elif isinstance(event, PartEnd):
            parts.append((headers, b"".join(chunks)))
    return parts
