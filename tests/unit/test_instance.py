"""inspect_instance: validation, index attributes, DICOM JSON metadata and frame layout."""

from __future__ import annotations

import copy
import threading
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
)

from pacs.dicom.attributes import Level
from pacs.dicom.frames import frame_count, frame_ranges
from pacs.dicom.instance import BASE_URL_TOKEN, inspect_instance
from pacs.errors import InvalidDicom
from tests.support.factories import make_ct, to_bytes


def save(tmp_path: Path, data: bytes | Dataset, name: str = "x.dcm") -> Path:
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else to_bytes(data))
    return path


def frames_from_file(path: Path, layout: dict) -> list[bytes]:
    data = path.read_bytes()
    return [b"".join(data[o : o + n] for o, n in frame_ranges(layout, i)) for i in range(frame_count(layout))]


def quiet_dataset(**overrides: object) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns when it is given an invalid value
        return make_ct(**overrides)


def quiet_bytes(ds: Dataset) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return to_bytes(ds)


def legacy_reference() -> Dataset:
    """A sequence item with a UID that has a leading-zero component (invalid, and common)."""
    item = Dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        item.ReferencedSOPInstanceUID = "1.2.3.0123.4"
    return item


# ---- what is read ---------------------------------------------------------------------------


def test_identifiers_attributes_and_layout(tmp_path: Path) -> None:
    ds = make_ct(32, PatientName="Doe^Jane", PatientID="P-1", AccessionNumber="A-9", StudyTime="101530.25")
    path = save(tmp_path, ds)
    parsed = inspect_instance(path)
    assert (parsed.sop_class_uid, parsed.sop_instance_uid) == (ds.SOPClassUID, ds.SOPInstanceUID)
    assert (parsed.study_instance_uid, parsed.series_instance_uid) == (ds.StudyInstanceUID, ds.SeriesInstanceUID)
    assert parsed.transfer_syntax_uid == "1.2.840.10008.1.2.1"
    assert parsed.has_part10_header
    assert parsed.attributes[Level.PATIENT]["patient_name"] == "Doe^Jane"
    assert parsed.attributes[Level.PATIENT]["patient_id"] == "P-1"
    assert parsed.attributes[Level.STUDY]["accession_number"] == "A-9"
    assert parsed.attributes[Level.SERIES]["modality"] == "CT"
    assert parsed.attributes[Level.SERIES]["series_number"] == 1
    assert parsed.attributes[Level.INSTANCE]["instance_number"] == 1
    data = path.read_bytes()
    assert parsed.pixel_offset is not None and parsed.pixel_length == len(ds.PixelData)
    assert data[parsed.pixel_offset : parsed.pixel_offset + parsed.pixel_length] == ds.PixelData
    assert parsed.layout is not None
    assert frames_from_file(path, parsed.layout) == [ds.PixelData]


def test_metadata_is_pydicoms_json_with_bulk_data_uris(tmp_path: Path) -> None:
    ds = make_ct(16)
    ds.add_new(0x00291010, "OB", b"\x01" * 4000)  # a large private binary value
    ds.add_new(0x00291011, "OB", b"\x02" * 10)  # a small one
    parsed = inspect_instance(save(tmp_path, ds))
    meta = parsed.metadata
    base = (
        f"{BASE_URL_TOKEN}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    )
    assert meta["7FE00010"] == {"vr": "OW", "BulkDataURI": f"{base}/bulk/7FE00010"}
    assert meta["00291010"] == {"vr": "OB", "BulkDataURI": f"{base}/bulk/00291010"}
    assert meta["00291011"] == {"vr": "OB", "InlineBinary": "AgICAgICAgICAg=="}
    assert meta["00083002"] == {"vr": "UI", "Value": ["1.2.840.10008.1.2.1"]}
    assert meta["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Test^Patient"}]}
    assert meta["00280010"] == {"vr": "US", "Value": [16]}
    assert list(meta) == sorted(meta)
    assert not any(tag.startswith("0002") for tag in meta)  # no File Meta Information
    assert parsed.metadata_json().startswith('{"00080005":')


def test_metadata_json_holds_every_value_as_read(tmp_path: Path) -> None:
    """Text beyond ASCII stays as it is, and an integer too large for the fast encoder (an
    over-long IS value from the wild) is written all the same."""
    import json

    ds = make_ct(16, SpecificCharacterSet="ISO_IR 192", PatientName="Jörg^Straß", StudyDescription="CT \u2028 thorax")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of the over-long IS
        ds.add_new(0x00200013, "IS", "123456789012345678901")  # beyond 64 bits
        path = save(tmp_path, ds)
        parsed = inspect_instance(path)
    text = parsed.metadata_json()
    assert json.loads(text) == parsed.metadata
    assert json.loads(text)["00200013"]["Value"] == [123456789012345678901]
    assert "Jörg^Straß" in text
    small = inspect_instance(save(tmp_path, make_ct(16, PatientName="Jörg^Straß"), "y.dcm"))
    assert json.loads(small.metadata_json()) == small.metadata


def test_non_conformant_values_are_kept_in_the_metadata(tmp_path: Path) -> None:
    # Legacy UIDs with a leading-zero component and odd strings are everywhere in the wild:
    # they must reach the metadata like pydicom reads them, even inside sequences.
    ds = quiet_dataset(ReferencedImageSequence=Sequence([legacy_reference()]), StudyID="X" * 30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pydicom warns about those values
        parsed = inspect_instance(save(tmp_path, quiet_bytes(ds)))
    [rendered] = parsed.metadata["00081140"]["Value"]
    assert rendered["00081155"] == {"vr": "UI", "Value": ["1.2.3.0123.4"]}
    assert parsed.metadata["00200010"] == {"vr": "SH", "Value": ["X" * 30]}
    assert pydicom_config.settings.reading_validation_mode == pydicom_config.WARN


def test_unrenderable_value_is_left_out_alone(tmp_path: Path) -> None:
    ds = make_ct(16)
    ds.add_new(0x00200013, "IS", None)
    data = to_bytes(ds).replace(b"\x20\x00\x13\x00IS\x00\x00", b"\x20\x00\x13\x00IS\x02\x00" + b"1A", 1)
    # The element grew by two bytes: only the lengths of what follows are relative, so it reads.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        parsed = inspect_instance(save(tmp_path, data))
    assert "00200013" not in parsed.metadata
    assert parsed.metadata["00100020"] == {"vr": "LO", "Value": ["PID-0001"]}
    assert parsed.attributes[Level.INSTANCE]["instance_number"] is None


def test_metadata_never_switches_pydicom_to_strict_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # pydicom's reading mode is process-wide: another thread parsing a file meanwhile would
    # have its non-conformant values refused.
    seen: list[int] = []
    original = type(pydicom_config.settings).reading_validation_mode

    def spy(self: object) -> int:
        mode = original.fget(self)  # type: ignore[union-attr]
        seen.append(mode)
        return mode

    monkeypatch.setattr(type(pydicom_config.settings), "reading_validation_mode", property(spy, original.fset))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ds = quiet_dataset(ReferencedImageSequence=Sequence([legacy_reference()]))
        inspect_instance(save(tmp_path, quiet_bytes(ds)))
    assert pydicom_config.RAISE not in seen


def test_big_endian_native_frames_are_swapped_on_the_way_out(tmp_path: Path) -> None:
    ds = make_ct(8)
    pixels = ds.PixelData
    # pydicom writes OW values as given: big endian pixel data must be supplied swapped.
    ds.PixelData = np.frombuffer(pixels, "<u2").astype(">u2").tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    path = save(tmp_path, ds)
    parsed = inspect_instance(path)
    assert parsed.transfer_syntax_uid == ExplicitVRBigEndian
    assert parsed.layout is not None and parsed.layout["byteswap"] == 2
    [frame] = frames_from_file(path, parsed.layout)
    assert np.frombuffer(frame, ">u2").astype("<u2").tobytes() == pixels


def test_implicit_little_endian(tmp_path: Path) -> None:
    ds = make_ct(8)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    path = save(tmp_path, ds)
    parsed = inspect_instance(path)
    assert parsed.transfer_syntax_uid == ImplicitVRLittleEndian
    assert parsed.layout is not None
    assert frames_from_file(path, parsed.layout) == [ds.PixelData]
    assert parsed.metadata["7FE00010"]["vr"] == "OW"


def test_multi_frame_native(tmp_path: Path) -> None:
    ds = make_ct(8, NumberOfFrames=3)
    ds.PixelData = b"".join(bytes([i]) * 128 for i in range(3))
    path = save(tmp_path, ds)
    parsed = inspect_instance(path)
    assert parsed.layout is not None
    assert frames_from_file(path, parsed.layout) == [bytes([i]) * 128 for i in range(3)]


def _encapsulated(syntax: str, frames: list[bytes], **options: object) -> Dataset:
    ds = make_ct(8, NumberOfFrames=len(frames))
    ds.file_meta.TransferSyntaxUID = syntax
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = encapsulate(frames, **options)  # type: ignore[arg-type]
    ds["PixelData"].VR = "OB"
    return ds


def test_encapsulated_frames(tmp_path: Path) -> None:
    frames = [b"\xff\xd8" + bytes([i]) * 20 + b"\xff\xd9" for i in range(3)]
    path = save(tmp_path, _encapsulated(JPEGBaseline8Bit, frames, fragments_per_frame=2))
    parsed = inspect_instance(path)
    assert parsed.transfer_syntax_uid == JPEGBaseline8Bit
    assert parsed.layout is not None and parsed.layout["kind"] == "encapsulated"
    assert frames_from_file(path, parsed.layout) == frames
    assert parsed.metadata["7FE00010"]["vr"] == "OB"
    assert parsed.pixel_offset is None


def test_rle_single_frame(tmp_path: Path) -> None:
    frame = b"\x01\x00\x00\x00" + b"\x40" + b"\x00" * 59 + b"\x7f" + b"\x05" * 128 + b"\x00"
    path = save(tmp_path, _encapsulated(RLELossless, [frame]))
    parsed = inspect_instance(path)
    assert parsed.layout is not None
    assert frames_from_file(path, parsed.layout) == [frame]


def test_float_pixel_data(tmp_path: Path) -> None:
    ds = make_ct(4)
    del ds.PixelData
    del ds.PixelRepresentation
    ds.BitsAllocated = 32
    ds.FloatPixelData = np.arange(16, dtype="<f4").tobytes()
    path = save(tmp_path, ds)
    parsed = inspect_instance(path)
    assert parsed.pixel_tag == 0x7FE00008
    assert parsed.metadata["7FE00008"]["vr"] == "OF"
    assert "7FE00010" not in parsed.metadata
    assert parsed.layout is not None
    assert frames_from_file(path, parsed.layout) == [ds.FloatPixelData]


def test_unaligned_one_bit_frames_have_no_layout_but_keep_their_bulk_uri(tmp_path: Path) -> None:
    ds = make_ct(3, NumberOfFrames=2)
    ds.BitsAllocated = ds.BitsStored = 1
    ds.HighBit = 0
    ds.PixelData = b"\xff\x01\x00"  # 18 bits, padded
    ds["PixelData"].VR = "OB"
    parsed = inspect_instance(save(tmp_path, ds))
    assert parsed.layout is None
    assert parsed.metadata["7FE00010"]["vr"] == "OB"
    assert "BulkDataURI" in parsed.metadata["7FE00010"]


def test_no_pixel_data(tmp_path: Path) -> None:
    ds = make_ct(8)
    del ds.PixelData
    parsed = inspect_instance(save(tmp_path, ds))
    assert parsed.layout is None and parsed.pixel_tag is None
    assert not any(tag.startswith("7FE0") for tag in parsed.metadata)


def test_deflated_data_set_refers_to_its_pixel_data(tmp_path: Path) -> None:
    ds = make_ct(8)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    path = save(tmp_path, ds)
    parsed = inspect_instance(path)
    assert parsed.transfer_syntax_uid == DeflatedExplicitVRLittleEndian
    assert parsed.layout is None  # frames are cut at request time
    assert parsed.pixel_tag == 0x7FE00010
    assert parsed.metadata["7FE00010"]["vr"] == "OW"
    assert parsed.metadata["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Test^Patient"}]}


def test_damaged_deflated_stream_is_refused(tmp_path: Path) -> None:
    ds = make_ct(8)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    data = to_bytes(ds)
    with pytest.raises(InvalidDicom):
        inspect_instance(save(tmp_path, data[: len(data) - 400]))


def test_bare_data_set_without_file_meta(tmp_path: Path) -> None:
    ds = make_ct(8)
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    bare = copy.deepcopy(ds)
    del bare.file_meta
    write_dataset(fp, bare)
    path = save(tmp_path, fp.getvalue())
    parsed = inspect_instance(path)
    assert not parsed.has_part10_header
    assert parsed.transfer_syntax_uid == ImplicitVRLittleEndian
    assert parsed.sop_instance_uid == ds.SOPInstanceUID
    assert parsed.layout is not None
    assert frames_from_file(path, parsed.layout) == [ds.PixelData]


def test_uid_padding_is_not_part_of_the_uid(tmp_path: Path) -> None:
    ds = make_ct(8)
    uid = "1.2.3.4.5"  # odd length: written with a trailing NUL
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    parsed = inspect_instance(save(tmp_path, ds))
    assert parsed.sop_instance_uid == uid


# ---- what is refused -----------------------------------------------------------------------------


@pytest.mark.parametrize("keyword", ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"])
def test_missing_identifier(tmp_path: Path, keyword: str) -> None:
    with pytest.raises(InvalidDicom, match=f"{keyword} is missing"):
        inspect_instance(save(tmp_path, make_ct(**{keyword: None})))


@pytest.mark.parametrize("keyword", ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"])
def test_empty_identifier(tmp_path: Path, keyword: str) -> None:
    with pytest.raises(InvalidDicom, match=f"{keyword} is missing"):
        inspect_instance(save(tmp_path, make_ct(**{keyword: ""})))


@pytest.mark.parametrize("uid", ["1.2.abc", "1." + "2" * 63, "1..2", ".1.2", "1.2.", "1.2 .3", "1.2-3"])
def test_invalid_uid(tmp_path: Path, uid: str) -> None:
    path = save(tmp_path, quiet_bytes(quiet_dataset(StudyInstanceUID=uid)))
    with pytest.raises(InvalidDicom, match="StudyInstanceUID is not a valid UID"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pydicom's own complaint about the value
        inspect_instance(path)


def test_uid_of_64_characters_is_fine(tmp_path: Path) -> None:
    uid = "1." + "2" * 62
    assert inspect_instance(save(tmp_path, make_ct(SeriesInstanceUID=uid))).series_instance_uid == uid


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, id="png"),
        pytest.param(bytes(range(256)) * 4, id="random"),
        pytest.param(b"%PDF-1.4\n" * 30, id="pdf"),
        pytest.param(b"just some notes\n" * 10, id="text"),
    ],
)
def test_not_dicom(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(InvalidDicom, match="not a DICOM file"):
        inspect_instance(save(tmp_path, data))


def test_preamble_without_a_data_set(tmp_path: Path) -> None:
    with pytest.raises(InvalidDicom):
        inspect_instance(save(tmp_path, b"\x00" * 128 + b"DICM"))


def test_truncated_inside_a_value(tmp_path: Path) -> None:
    ds = make_ct(8)
    data = to_bytes(ds)
    cut = data.rindex(ds.SeriesInstanceUID.encode()) + 10  # what is left still looks like a UID
    with pytest.raises(InvalidDicom, match="truncated"):
        inspect_instance(save(tmp_path, data[:cut]))


def test_truncated_inside_a_sequence_item(tmp_path: Path) -> None:
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    item.ReferencedSOPInstanceUID = "1.2.3.4.5.6.7.8.9.10.11.12"
    ds = make_ct(8, ReferencedImageSequence=Sequence([item]))
    ds.ReferencedImageSequence.is_undefined_length = True
    data = to_bytes(ds)
    cut = data.index(b"1.2.3.4.5.6.7.8.9.10") + 8
    with pytest.raises(InvalidDicom, match="truncated"):
        inspect_instance(save(tmp_path, data[:cut]))


@pytest.mark.parametrize("missing", [1, 100, 511])
def test_truncated_native_pixel_data(tmp_path: Path, missing: int) -> None:
    data = to_bytes(make_ct(16))
    with pytest.raises(InvalidDicom, match="truncated"):
        inspect_instance(save(tmp_path, data[:-missing]))


def test_truncated_pixel_data_header(tmp_path: Path) -> None:
    data = to_bytes(make_ct(16))
    at = data.rindex(b"\xe0\x7f\x10\x00")
    with pytest.raises(InvalidDicom, match="truncated"):
        inspect_instance(save(tmp_path, data[: at + 6]))


@pytest.mark.parametrize("cut", [8, 30, 60])
def test_truncated_encapsulated_pixel_data(tmp_path: Path, cut: int) -> None:
    frames = [b"\xff\xd8" + bytes([i]) * 20 + b"\xff\xd9" for i in range(2)]
    data = to_bytes(_encapsulated(JPEGBaseline8Bit, frames))
    with pytest.raises(InvalidDicom, match="encapsulated"):
        inspect_instance(save(tmp_path, data[:-cut]))


def test_inspection_is_safe_from_several_threads(tmp_path: Path) -> None:
    paths = [save(tmp_path, make_ct(16, seed=i), f"{i}.dcm") for i in range(16)]
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results[i] = inspect_instance(paths[i]).sop_instance_uid
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert [results[i] for i in range(16)] == [pydicom.dcmread(p).SOPInstanceUID for p in paths]


# ---- read from the bytes a receiver still holds -----------------------------------------------


def _as_received(path: Path, head_bytes: int) -> tuple[bytes, int]:
    data = path.read_bytes()
    return data[:head_bytes], len(data)


def test_a_header_held_in_memory_is_read_without_the_file(tmp_path: Path) -> None:
    """A native instance whose header and pixel element start lie within the held bytes needs
    no file at all; what is read equals what reading the file gives."""
    from pacs.dicom.instance import HEAD_BYTES

    path = save(tmp_path, make_ct(128))
    head, size = _as_received(path, HEAD_BYTES)
    assert size > len(head)  # the file holds more than the head
    from_file = inspect_instance(path)
    from_memory = inspect_instance(tmp_path / "not-there.dcm", head, size)
    assert from_memory.metadata_json() == from_file.metadata_json()
    assert (from_memory.layout, from_memory.pixel_offset, from_memory.pixel_length) == (
        from_file.layout, from_file.pixel_offset, from_file.pixel_length)


@pytest.mark.parametrize("head_bytes", [200, 16384])
def test_whatever_the_held_bytes_miss_is_read_from_the_file(tmp_path: Path, head_bytes: int) -> None:
    """Encapsulated frames lie past any head, a short head misses part of the header: the
    file supplies the rest, with the same result."""
    frames = [b"\xff\xd8" + bytes([i]) * 20 + b"\xff\xd9" for i in range(3)]
    path = save(tmp_path, _encapsulated(JPEGBaseline8Bit, frames, fragments_per_frame=2))
    head, size = _as_received(path, head_bytes)
    parsed = inspect_instance(path, head, size)
    assert parsed.metadata_json() == inspect_instance(path).metadata_json()
    assert parsed.layout is not None and frames_from_file(path, parsed.layout) == frames


def test_a_truncated_file_is_refused_from_the_held_bytes_too(tmp_path: Path) -> None:
    data = to_bytes(make_ct(64))
    path = save(tmp_path, data[:-100])
    with pytest.raises(InvalidDicom, match="truncated"):
        inspect_instance(path, data[:16384], len(data) - 100)


def test_stored_layouts_are_the_json_json_writes(tmp_path: Path) -> None:
    import json

    from pacs.index.repository import _layout_json

    frames = [b"\xff\xd8" + bytes([i]) * 20 + b"\xff\xd9" for i in range(3)]
    encapsulated = inspect_instance(save(tmp_path, _encapsulated(JPEGBaseline8Bit, frames), "e.dcm")).layout
    native = inspect_instance(save(tmp_path, make_ct(16), "n.dcm")).layout
    for layout in (encapsulated, native):
        assert layout is not None
        assert _layout_json(layout) == json.dumps(layout, separators=(",", ":"))
