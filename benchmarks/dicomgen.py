"""Synthetic DICOM data for the benchmarks: CT-like instances, STOW-RS bodies, a huge multi-frame file.

Every instance is built as a header written by pydicom (everything but Pixel Data) followed by a
Pixel Data element appended by hand. Pixel Data is the last top-level element, so the result is a
valid Explicit VR Little Endian Part 10 file, and the pixels never pass through pydicom: a 2 GB
object can be written to disk frame by frame.
"""

from __future__ import annotations

import copy
import io
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

BOUNDARY = "minipacs-bench-3f6c1d0e9a7b4c2d"
STOW_CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
_PART_HEAD = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
_CLOSE = f"\r\n--{BOUNDARY}--\r\n".encode()
_SEPARATOR = b"\r\n"

COMMON_MODALITIES = ("CT", "MR", "CR", "US", "DX", "MG", "PT", "XA")
RARE_MODALITY = "NM"  # about one study in 500: a ModalitiesInStudy search that hits a few
_SYLLABLES = (
    "KA", "LO", "MER", "SI", "TAN", "VO", "RI", "BEL", "DOR", "NA", "FEL", "GU",
    "HAR", "IS", "JOR", "KUN", "LAV", "MOS", "NEL", "OR", "PEL", "QUIN", "RAS", "SOL",
)
_GIVEN = ("ANNA", "JOHN", "MARIA", "PETER", "LENA", "OMAR", "SOFIA", "LUCAS", "EMMA", "NOAH", "MIA", "LIAM")
_DESCRIPTIONS = {"CT": "CT CHEST", "MR": "MR BRAIN", "CR": "CR THORAX", "US": "US ABDOMEN", "DX": "DX KNEE",
                 "MG": "MG SCREENING", "PT": "PET WHOLE BODY", "XA": "XA CORONARY", "NM": "NM BONE SCAN"}


@dataclass(frozen=True)
class Study:
    """Patient and study attributes shared by every instance of one study."""

    patient_id: str
    patient_name: str
    birth_date: str
    sex: str
    study_uid: str
    study_date: str
    accession: str
    modality: str
    referring: str = "REFERRING^DOCTOR"


def make_studies(count: int, *, seed: int, accession_base: int = 0) -> list[Study]:
    """``count`` studies over about count/2.5 patients and twenty years of dates, with distinct
    accession numbers, so that each QIDO search used by the benchmark matches a few studies."""
    rng = random.Random(seed)
    patients = [_make_patient(rng, seed, k) for k in range(max(1, int(count / 2.5)))]
    first_day, days = date(2005, 1, 1), 20 * 365
    studies = []
    for i in range(count):
        patient_id, name, birth, sex = rng.choice(patients)
        modality = RARE_MODALITY if i % 500 == 7 else rng.choice(COMMON_MODALITIES)
        day = first_day + timedelta(days=rng.randrange(days))
        studies.append(
            Study(patient_id, name, birth, sex, generate_uid(), day.strftime("%Y%m%d"),
                  f"A{seed % 100:02d}{accession_base + i:07d}", modality)
        )
    return studies


def _make_patient(rng: random.Random, seed: int, k: int) -> tuple[str, str, str, str]:
    surname = "".join(rng.choice(_SYLLABLES) for _ in range(3))
    birth = date(1930, 1, 1) + timedelta(days=rng.randrange(80 * 365))
    return f"P{seed % 100:02d}{k:07d}", f"{surname}^{rng.choice(_GIVEN)}", birth.strftime("%Y%m%d"), rng.choice("MF")


def pixel_pool(rows: int, columns: int, count: int = 4, *, seed: int = 1) -> list[bytes]:
    """A few frames of CT-like 12-bit noise to cycle through (values 0..4095)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 4096, size=(rows, columns), dtype=np.uint16).tobytes() for _ in range(count)]


def ct_phantom(rows: int, columns: int, index: int = 0, *, noise_hu: float = 12.0) -> np.ndarray:
    """A smooth CT-like axial slice as stored values (HU + 1024, 12 bits in uint16): air, a body
    of fat and soft tissue, two lungs, heart, aorta and a vertebra, plus mild Gaussian noise.
    ``index`` moves the organs a little and seeds the noise, so each slice is distinct. Random
    noise over the whole range (``pixel_pool``) is a codec's worst case; this compresses 2.5:1
    losslessly (JPEG-LS, JPEG 2000), in the range of real CT slices."""
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    y, x = (y - rows / 2) / (rows / 2), (x - columns / 2) / (columns / 2)
    shift = (index % 50) * 0.002
    hu = np.full((rows, columns), -1000.0, dtype=np.float32)
    shapes = [  # (centre x, centre y, radius x, radius y, HU), drawn in order
        (0.0, 0.05, 0.86, 0.66, -100.0), (0.0, 0.05, 0.80, 0.60, 40.0),
        (-0.36 - shift, 0.0, 0.28 - shift, 0.42, -850.0), (0.36 + shift, 0.0, 0.28 - shift, 0.42, -850.0),
        (0.08, -0.05 + shift, 0.2, 0.17, 50.0), (-0.06, 0.3, 0.04, 0.04, 180.0),
        (0.0, 0.5, 0.09, 0.08, 700.0), (0.0, 0.5, 0.05, 0.045, 250.0),
    ]
    for cx, cy, rx, ry, value in shapes:
        hu[((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1] = value
    hu += np.random.default_rng(1000 + index).normal(0.0, noise_hu, size=hu.shape).astype(np.float32)
    return np.clip(hu + 1024, 0, 4095).astype(np.uint16)


def header_dataset(study: Study, series_uid: str, series_number: int, instance_number: int,
                   rows: int, columns: int, frames: int = 1) -> Dataset:
    """A CT image header with the attributes a real scanner writes (no Pixel Data)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid = generate_uid()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study.study_date
    ds.StudyTime, ds.SeriesTime, ds.ContentTime = "101500", "101700", f"1018{instance_number % 60:02d}"
    ds.AccessionNumber = study.accession
    ds.Modality = study.modality
    ds.Manufacturer, ds.ManufacturerModelName = "ACME Imaging", "Volumetric 64"
    ds.InstitutionName, ds.StationName = "General Hospital", "CT01"
    ds.ReferringPhysicianName = study.referring
    ds.StudyDescription = _DESCRIPTIONS.get(study.modality, "IMAGING")
    ds.SeriesDescription = "AXIAL 1.0 SOFT TISSUE"
    ds.PatientName, ds.PatientID = study.patient_name, study.patient_id
    ds.PatientBirthDate, ds.PatientSex = study.birth_date, study.sex
    ds.BodyPartExamined, ds.SliceThickness, ds.KVP = "CHEST", "1.0", "120"
    ds.ProtocolName = "CHEST ROUTINE"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study.study_uid, series_uid
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", series_number, instance_number
    ds.ImagePositionPatient = ["-250.0", "-250.0", f"{-instance_number * 1.0:.1f}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[study.study_uid, "frame-of-reference"])
    ds.SliceLocation = f"{-instance_number * 1.0:.1f}"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = rows, columns
    ds.PixelSpacing = ["0.976562", "0.976562"]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
    return ds


def header_bytes(ds: Dataset, pixel_length: int) -> bytes:
    """Part 10 file bytes up to and including the Pixel Data element header (OW, explicit length)."""
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue() + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixel_length)


def encode_instance(study: Study, series_uid: str, series_number: int, instance_number: int,
                    rows: int, columns: int, pixels: bytes) -> bytes:
    ds = header_dataset(study, series_uid, series_number, instance_number, rows, columns)
    return header_bytes(ds, len(pixels)) + pixels


def stow_body(instances: list[bytes]) -> bytes:
    """A multipart/related STOW-RS body carrying the given Part 10 files."""
    pieces: list[bytes] = []
    for data in instances:
        pieces += [_PART_HEAD, data, _SEPARATOR]
    pieces.append(_CLOSE[len(_SEPARATOR):])
    return b"".join(pieces)


def series_instances(study: Study, count: int, *, rows: int, columns: int, pool: list[bytes],
                     series_number: int = 1) -> Iterator[bytes]:
    """``count`` encoded instances of one new series of ``study``."""
    series_uid = generate_uid()
    for n in range(1, count + 1):
        yield encode_instance(study, series_uid, series_number, n, rows, columns, pool[n % len(pool)])


def write_multiframe(path: Path, *, frames: int, rows: int, columns: int, pool: list[bytes] | None = None,
                     ds: Dataset | None = None) -> int:
    """Write a ``frames``-frame 16-bit CT to ``path`` one frame at a time, cycling through
    ``pool`` (default: one frame of noise), with header ``ds`` (default: a new CT); returns the
    file size."""
    if ds is None:
        study = make_studies(1, seed=99, accession_base=9_000_000)[0]
        ds = header_dataset(study, generate_uid(), 1, 1, rows, columns, frames=frames)
    pool = pool or pixel_pool(rows, columns, 1, seed=7)
    with path.open("wb") as out:
        out.write(header_bytes(ds, len(pool[0]) * frames))
        for n in range(frames):
            out.write(pool[n % len(pool)])
    return path.stat().st_size


def encode_compressed(ds: Dataset, pixels: np.ndarray, transfer_syntax: str) -> bytes:
    """A Part 10 file of header ``ds`` with ``pixels`` compressed losslessly by pydicom's encoders
    (JPEG-LS: pyjpegls; JPEG 2000: pylibjpeg-openjpeg)."""
    ds = copy.deepcopy(ds)
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OW"
    # Lossless: the instance keeps its UID (pydicom makes a new one by default).
    ds.compress(transfer_syntax, encoding_plugin="pylibjpeg" if transfer_syntax == JPEG2000Lossless else "",
                generate_instance_uid=False)
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def stream_file_as_stow(path: Path, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """The STOW-RS body around one file, read from disk in chunks (never held in memory)."""
    yield _PART_HEAD
    with path.open("rb") as fh:
        while chunk := fh.read(chunk_size):
            yield chunk
    yield _CLOSE


def stow_envelope_size() -> int:
    """Bytes the multipart framing adds around one part (for Content-Length of a streamed body)."""
    return len(_PART_HEAD) + len(_CLOSE)
