"""The fast header reader gives exactly what the general (pydicom) reader gives, or steps aside.

Every object is read both ways: either the fast reader raises Unsupported (and ingest uses the
general reader), or every field of the result - index columns, DICOM JSON, frame layout, pixel
location - is equal.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import warnings
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pacs.dicom import instance
from pacs.dicom.fastheader import Unsupported
from tests.support.factories import make_ct

FIELDS = (
    "sop_class_uid", "sop_instance_uid", "study_instance_uid", "series_instance_uid", "transfer_syntax_uid",
    "attributes", "metadata", "layout", "pixel_offset", "pixel_length", "pixel_tag", "has_part10_header",
)


Result = instance.ParsedInstance | Exception


def read_both(path: Path) -> tuple[Result | None, Result]:
    """(fast result, its error, or None when it steps aside; general result or its error)."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about non-conformant values it still reads
        try:
            general: instance.ParsedInstance | Exception = instance._inspect_general(fh, size)
        except Exception as exc:
            general = exc
        fh.seek(0)
        try:
            fast = instance._inspect_fast(fh, size)
        except Unsupported:
            fast = None
        except Exception as exc:
            fast = exc
    return fast, general


def assert_same(fast: Result, general: Result) -> None:
    if isinstance(fast, Exception):
        assert type(general) is type(fast), f"fast reader refused with {fast!r}, general gave {general!r}"
        return
    assert not isinstance(general, Exception), f"general reader refused what the fast one read: {general}"
    for name in FIELDS:
        assert getattr(fast, name) == getattr(general, name), name


def corpus() -> list[str]:
    return sorted({f for f in get_testdata_files() if os.path.isfile(f)})


@pytest.fixture(autouse=True)
def quiet_pydicom_log() -> None:
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)


def test_every_corpus_file_is_read_alike() -> None:
    fast_count = 0
    for name in corpus():
        fast, general = read_both(Path(name))
        if fast is not None:
            assert_same(fast, general)
            fast_count += 1
    assert fast_count >= 100, "the fast reader should take most of the corpus"


@pytest.mark.parametrize(
    "name",
    ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "rtplan.dcm", "emri_small_jpeg_2k_lossless.dcm", "SC_rgb.dcm"],
)
def test_common_objects_take_the_fast_path(name: str) -> None:
    path = Path(get_testdata_file(name, download=False))
    fast, general = read_both(path)
    assert fast is not None, "fast reader stepped aside"
    assert_same(fast, general)


def write(tmp_path: Path, ds: Dataset, *, implicit: bool = False) -> Path:
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    path = tmp_path / f"x{len(list(tmp_path.iterdir()))}.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True, implicit_vr=implicit, little_endian=True)
    path.write_bytes(buffer.getvalue())
    return path


def edge_values() -> Dataset:
    ds = make_ct(8)
    ds.PatientName = "Müller^Jörg=ミュラー^ヨルグ=myura^yorugu"
    ds.ReferringPhysicianName = ["Doe^John", "Roe^Jane="]
    ds.ImageType = ["ORIGINAL", "", "AXIAL"]
    ds.StudyDescription = "  leading spaces kept, trailing dropped   "
    ds.add_new(0x00081030, "LO", "desc\\with\\parts ")
    ds.ImagePositionPatient = ["-1.5", "2", "3e2"]
    ds.SliceThickness = " 1.25 "
    ds.add_new(0x00200013, "IS", " 7")
    ds.add_new(0x00181063, "DS", "")
    ds.add_new(0x00280009, "AT", [0x00181063, 0x00181065])
    ds.add_new(0x00186020, "SL", [-5, 6])
    ds.add_new(0x00189087, "FD", 3.25)
    ds.add_new(0x00720074, "FD", [1.5, -2.0])
    ds.add_new(0x00186040, "UL", [1, 2, 3])
    ds.add_new(0x0040A30A, "DS", "1\\2.5")
    ds.add_new(0x00080090, "PN", "")
    ds.add_new(0x00400254, "LO", "")
    ds.add_new(0x00082111, "ST", "a \\ b  ")
    ds.add_new(0x00880140, "UI", "1.2.3\\1.2.4")
    ds.add_new(0x00081190, "UR", "http://example.org/x ")
    ds.add_new(0x00091010, "LO", "ACME 1.0")  # private creator
    ds.add_new(0x00091011, "UN", b"\x01\x02\x03\x04")
    ds.add_new(0x00290010, "LO", "SIEMENS CSA HEADER")
    ds.add_new(0x00291008, "CS", "IMAGE NUM 4")  # known private attribute
    ds.add_new(0x00282000, "OB", bytes(range(40)))  # small: inline
    ds.add_new(0x00420011, "OB", bytes(5000))  # large: bulk data
    ds.SmallestImagePixelValue = 3  # 'US or SS'
    ds.LargestImagePixelValue = 4000
    item = Dataset()
    item.ScheduledProcedureStepID = "SPS1\\SPS2"
    item.RequestedProcedureID = "RP 7 "
    item.AccessionNumber = "A1"
    inner = Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator, inner.CodeMeaning = "T-1", "SRT", "Chest"
    item.ScheduledProtocolCodeSequence = Sequence([inner, Dataset()])
    ds.RequestAttributesSequence = Sequence([item])
    ds.ReferencedImageSequence = Sequence([])
    return ds


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_edge_values_are_read_alike(tmp_path: Path, implicit: bool) -> None:
    fast, general = read_both(write(tmp_path, edge_values(), implicit=implicit))
    assert fast is not None
    assert_same(fast, general)
    assert fast.attributes[instance.Level.SERIES]["scheduled_procedure_step_id"] == "SPS1\\SPS2"
    assert fast.metadata["00420011"]["BulkDataURI"].endswith("/bulk/00420011")
    assert "InlineBinary" in fast.metadata["00282000"]


@pytest.mark.parametrize("charset", ["ISO_IR 100", None, "ISO_IR 6"])
def test_single_byte_character_sets(tmp_path: Path, charset: str | None) -> None:
    ds = make_ct(8, SpecificCharacterSet=charset, PatientName="Strauss^Jorg")
    if charset == "ISO_IR 100":
        ds.PatientName = "Strauß^Jörg"
    fast, general = read_both(write(tmp_path, ds))
    assert fast is not None
    assert_same(fast, general)


def test_remembered_values_follow_the_bytes_and_the_character_set(tmp_path: Path) -> None:
    """Values are converted once and remembered; an object whose bytes or character set differ
    still gets its own values, in the top level and inside sequence items."""
    from pacs.dicom import fastheader

    utf8 = make_ct(8, SpecificCharacterSet="ISO_IR 192", PatientName="Jörg^Straß")
    first, _ = read_both(write(tmp_path, utf8))
    raw_name = "Jörg^Straß".encode("utf-8")
    # The same bytes read as Latin-1: a remembered UTF-8 conversion must not be reused.
    latin = make_ct(8, SpecificCharacterSet="ISO_IR 100")
    latin.add_new(0x00100010, "PN", raw_name.decode("latin-1"))
    item = Dataset()
    item.AccessionNumber = "ACC-1"
    latin.RequestAttributesSequence = Sequence([item])
    second, general = read_both(write(tmp_path, latin))
    again, _ = read_both(write(tmp_path, latin))
    item.AccessionNumber = "ACC-2"
    latin.PatientName = "Other^Name"
    third, third_general = read_both(write(tmp_path, latin))
    for fast, expected in ((second, general), (again, general), (third, third_general)):
        assert isinstance(fast, instance.ParsedInstance)
        assert_same(fast, expected)
    assert isinstance(first, instance.ParsedInstance) and isinstance(second, instance.ParsedInstance)
    assert first.metadata["00100010"]["Value"] == [{"Alphabetic": "Jörg^Straß"}]
    assert second.metadata["00100010"]["Value"] == [{"Alphabetic": raw_name.decode("latin-1")}]
    assert isinstance(third, instance.ParsedInstance)
    assert third.metadata["00100010"]["Value"] == [{"Alphabetic": "Other^Name"}]
    assert third.metadata["00400275"]["Value"][0]["00080050"]["Value"] == ["ACC-2"]
    assert len(fastheader._CONVERTED) <= fastheader._REMEMBERED_VALUES


def test_remembered_values_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pacs.dicom import fastheader

    monkeypatch.setattr(fastheader, "_REMEMBERED_VALUES", 10)
    fastheader._CONVERTED.clear()
    for n in range(3):
        fast, general = read_both(write(tmp_path, make_ct(8, PatientName=f"Name^{n}")))
        assert fast is not None
        assert_same(fast, general)
        assert 0 < len(fastheader._CONVERTED) <= 10


def test_undefined_length_sequences_are_read_alike(tmp_path: Path) -> None:
    ds = edge_values()
    ds.RequestAttributesSequence.is_undefined_length = True
    for item in ds.RequestAttributesSequence:
        item.is_undefined_length_sequence_item = True
    fast, general = read_both(write(tmp_path, ds))
    assert fast is not None
    assert_same(fast, general)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda ds: setattr(ds, "SpecificCharacterSet", "ISO 2022 IR 87"), id="iso2022"),
        pytest.param(lambda ds: setattr(ds, "SpecificCharacterSet", ["ISO_IR 100", "ISO 2022 IR 87"]), id="two-sets"),
        pytest.param(lambda ds: ds.add_new(0x00200013, "IS", "1.0"), id="IS-with-fraction"),
        pytest.param(lambda ds: setattr(ds, "SOPInstanceUID", ""), id="no-sop-instance"),
    ],
)
def test_unusual_objects_go_to_the_general_reader(tmp_path: Path, change: object) -> None:
    ds = make_ct(8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        change(ds)  # type: ignore[operator]
    fast, _ = read_both(write(tmp_path, ds))
    assert fast is None


def test_decimal_with_a_comma_goes_to_the_general_reader(tmp_path: Path) -> None:
    path = write(tmp_path, make_ct(8, PixelSpacing=["1.5", "2"]))
    path.write_bytes(path.read_bytes().replace(b"1.5\\2", b"1,5\\2"))
    fast, general = read_both(path)
    assert fast is None
    assert not isinstance(general, Exception)


def test_truncated_value_goes_to_the_general_reader(tmp_path: Path) -> None:
    path = write(tmp_path, make_ct(8))
    data = path.read_bytes()
    cut = data.index(b"Test^Patient") + 4
    path.write_bytes(data[:cut])
    fast, general = read_both(path)
    assert fast is None
    assert isinstance(general, Exception)


def test_no_preamble_goes_to_the_general_reader(tmp_path: Path) -> None:
    path = write(tmp_path, make_ct(8))
    path.write_bytes(path.read_bytes()[132:])
    fast, _ = read_both(path)
    assert fast is None


def test_inspect_instance_uses_the_general_reader_when_the_fast_one_steps_aside(tmp_path: Path) -> None:
    ds = make_ct(8, SpecificCharacterSet="ISO_IR 144", PatientName="Иванов^Иван")  # Cyrillic
    parsed = instance.inspect_instance(write(tmp_path, ds))
    assert parsed.sop_instance_uid == ds.SOPInstanceUID
    assert parsed.metadata["00100010"]["Value"][0]["Alphabetic"] == "Иванов^Иван"
    assert parsed.attributes[instance.Level.PATIENT]["patient_name"] == "Иванов^Иван"


def test_pixel_layout_of_an_implicit_file_is_located(tmp_path: Path) -> None:
    ds = make_ct(8)
    path = write(tmp_path, ds, implicit=True)
    fast, general = read_both(path)
    assert fast is not None and fast.layout is not None
    offset = fast.pixel_offset
    assert offset is not None
    assert path.read_bytes()[offset : offset + 128] == ds.PixelData[:128]
    assert struct.unpack_from("<L", path.read_bytes(), offset - 4)[0] == len(ds.PixelData)


def test_a_header_in_the_file_s_head_is_read_without_mapping_the_file(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, make_ct(128))
    assert path.stat().st_size > instance.HEAD_BYTES

    def no_map(*args: object, **kwargs: object) -> None:
        raise AssertionError("the whole file was mapped")

    monkeypatch.setattr(instance.mmap, "mmap", no_map)
    fast, general = read_both(path)
    assert fast is not None
    assert_same(fast, general)


@pytest.mark.parametrize("pixels", [True, False], ids=["long-header", "no-pixel-data"])
def test_headers_running_past_the_head_are_read_from_the_whole_file(tmp_path: Path, pixels: bool) -> None:
    ds = make_ct(64)
    ds.add_new(0x00090010, "LO", "LONG HEADER")
    ds.add_new(0x00091001, "OB", bytes(range(256)) * (instance.HEAD_BYTES // 128))  # twice the head
    ds.ImageComments = "c" * 5000
    if not pixels:
        del ds.PixelData
    path = write(tmp_path, ds)
    assert path.stat().st_size > instance.HEAD_BYTES
    fast, general = read_both(path)
    assert fast is not None
    assert_same(fast, general)
    assert fast.metadata["00204000"]["Value"] == ["c" * 5000]  # read after the head's end
    assert (fast.pixel_offset is not None) is pixels
