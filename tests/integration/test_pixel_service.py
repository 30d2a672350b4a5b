"""PixelService on both backends: rendered frames of native, big endian, compressed and deflated
instances, what is read from storage to render one frame, errors, the cache and thumbnails.
Expected pixels are computed here with numpy (PS3.3 C.11.2.1.2 linear window)."""

from __future__ import annotations

import io
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import pixel_array
from pydicom.uid import ExplicitVRBigEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid

from pacs.errors import InvalidInput, NotAcceptable, NotFound
from pacs.index.repository import StoredInstance
from pacs.pixels.frames import decode_frame, decoded_attributes
from pacs.pixels.render import RenderAttributes, RenderOptions, Window, render
from pacs.pixels.service import PixelService
from pacs.services import Services
from tests.support.factories import make_ct, make_series, to_bytes

WINDOW = Window(500, 2000)
PNG = RenderOptions(media_type="image/png", window=WINDOW)


def linear(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 to 8 bits."""
    y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255
    y = np.where(x <= c - 0.5 - (w - 1) / 2, 0, np.where(x > c - 0.5 + (w - 1) / 2, 255, y))
    return np.rint(y).astype(np.uint8)


def decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def multi_frame(frames: int, size: int = 64, **overrides: Any) -> tuple[Dataset, np.ndarray]:
    """A 12-bit CT with ``frames`` different frames (intercept -1024); returns it and its values."""
    values = np.random.default_rng(frames).integers(0, 4096, size=(frames, size, size), dtype=np.uint16)
    ds = make_ct(size, NumberOfFrames=frames, PixelData=values.tobytes(), **overrides)
    return ds, values


def expected(values: np.ndarray) -> np.ndarray:
    return linear(values.astype(np.float64) - 1024, WINDOW.center, WINDOW.width)


def store(services: Services, tmp_path: Path, source: Dataset | bytes | str) -> StoredInstance:
    """Store a data set, file bytes or a file (copied: storing consumes it) and locate it."""
    path = tmp_path / f"{uuid.uuid4().hex}.dcm"
    if isinstance(source, Dataset):
        path.write_bytes(to_bytes(source))
    elif isinstance(source, bytes):
        path.write_bytes(source)
    else:
        shutil.copyfile(source, path)
    report = services.ingest.store_file(path, consume=True)
    assert report.ok, report
    ds = pydicom.dcmread(io.BytesIO(to_bytes(source)) if isinstance(source, Dataset) else path_or_bytes(source),
                         stop_before_pixels=True)
    [stored] = services.retrieve.locate(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    return stored


def path_or_bytes(source: bytes | str) -> Any:
    return io.BytesIO(source) if isinstance(source, bytes) else source


def pydicom_file(name: str) -> str:
    path = get_testdata_file(name, download=False)
    assert path is not None, name
    return str(path)


@dataclass
class StorageSpy:
    """Counts what the blob store is asked for."""

    opened: list[str] = field(default_factory=list)
    bytes_read: int = 0
    ranged_reads: int = 0


@pytest.fixture
def spy(services: Services, monkeypatch: pytest.MonkeyPatch) -> StorageSpy:
    """Ranged reads are counted with their bytes; ``open`` only when called from outside them
    (the folder store opens the file to serve a range)."""
    blobs, seen, inside = services.blobs, StorageSpy(), [0]
    original_open, original_iter, original_read = blobs.open, blobs.iter_range, blobs.read_range

    def open_(key: str) -> Any:
        if not inside[0]:
            seen.opened.append(key)
        return original_open(key)

    def counted(chunks: Iterator[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            seen.bytes_read += len(chunk)
            yield chunk

    def iter_range(key: str, *args: Any, **kwargs: Any) -> Iterator[bytes]:
        seen.ranged_reads += 1
        inside[0] += 1
        try:
            return counted(original_iter(key, *args, **kwargs))
        finally:
            inside[0] -= 1

    def read_range(key: str, start: int, length: int) -> bytes:
        seen.ranged_reads += 1
        inside[0] += 1
        try:
            data = original_read(key, start, length)
        finally:
            inside[0] -= 1
        seen.bytes_read += len(data)
        return data

    monkeypatch.setattr(blobs, "open", open_)
    monkeypatch.setattr(blobs, "iter_range", iter_range)
    monkeypatch.setattr(blobs, "read_range", read_range)
    return seen


@pytest.fixture
def pixels(services: Services) -> PixelService:
    return PixelService(services.retrieve)


# ---- native -------------------------------------------------------------------------------

def test_native_frames_read_only_their_own_bytes(
    services: Services, pixels: PixelService, spy: StorageSpy, tmp_path: Path
) -> None:
    ds, values = multi_frame(50)
    stored = store(services, tmp_path, ds)
    first, last = (decoded(pixels.render(stored, n, PNG)) for n in (1, 50))
    np.testing.assert_array_equal(first, expected(values[0]))
    np.testing.assert_array_equal(last, expected(values[49]))
    assert not np.array_equal(first, last)
    frame_bytes = 64 * 64 * 2
    assert spy.opened == []  # never the whole object
    assert spy.bytes_read == 2 * frame_bytes
    assert stored.blob_size > 50 * frame_bytes


def test_big_endian_frames_are_swapped(services: Services, pixels: PixelService, tmp_path: Path) -> None:
    ds, values = multi_frame(3, WindowCenter=500, WindowWidth=2000)
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    ds.PixelData = values.astype(">u2").tobytes()  # pydicom writes OW values as given
    stored = store(services, tmp_path, ds)
    out = decoded(pixels.render(stored, 3, RenderOptions(media_type="image/png")))  # the file's own window
    np.testing.assert_array_equal(out, expected(values[2]))


def test_signed_monochrome1_with_the_files_window(services: Services, pixels: PixelService, tmp_path: Path) -> None:
    values = np.random.default_rng(9).integers(-1000, 3000, size=(40, 56), dtype=np.int16)
    ds = make_ct(PixelRepresentation=1, BitsStored=16, HighBit=15, Rows=40, Columns=56, RescaleSlope=0.5,
                 RescaleIntercept=10, PhotometricInterpretation="MONOCHROME1", WindowCenter=[300, 0],
                 WindowWidth=[800, 1], PixelData=values.tobytes())
    out = decoded(pixels.render(store(services, tmp_path, ds), 1, RenderOptions(media_type="image/png")))
    np.testing.assert_array_equal(out, 255 - linear(values * 0.5 + 10, 300, 800))


# ---- compressed ---------------------------------------------------------------------------

@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless, JPEGLSLossless], ids=lambda s: s.name)
def test_compressed_frames_decode_alone(
    services: Services, pixels: PixelService, spy: StorageSpy, tmp_path: Path, syntax: str
) -> None:
    ds, values = multi_frame(6, size=48)
    ds.compress(syntax)
    stored = store(services, tmp_path, ds)
    assert stored.frame_layout is not None and stored.frame_layout["kind"] == "encapsulated"
    for number in (1, 6):
        out = decoded(pixels.render(stored, number, PNG))
        np.testing.assert_array_equal(out, expected(values[number - 1]))
    assert spy.opened == []  # the frame's fragments were read, not the object
    assert spy.bytes_read < stored.blob_size


@pytest.mark.parametrize(
    "name",
    ["emri_small_jpeg_2k_lossless.dcm", "SC_rgb_rle_2frame.dcm", "color3d_jpeg_baseline.dcm",
     "JPEG2000.dcm", "SC_rgb_dcmtk_+eb+cy+s2.dcm", "MR_small_jpeg_ls_lossless.dcm", "US1_J2KI.dcm",
     "OBXXXX1A_rle_2frame.dcm", "JPGExtended.dcm", "image_dfl.dcm", "MR_small_bigendian.dcm", "liver.dcm"],
)
def test_pydicom_files_render_as_pydicom_decodes_them(
    services: Services, pixels: PixelService, tmp_path: Path, name: str
) -> None:
    """Whatever path the service takes (frame bytes, fragments, whole file), each frame renders
    exactly as pydicom's decoding of the file would."""
    path = pydicom_file(name)
    stored = store(services, tmp_path, path)
    ds = pydicom.dcmread(path)
    attributes = decoded_attributes(RenderAttributes.from_dataset(ds))
    frames = attributes.number_of_frames
    for number in sorted({1, frames}):
        want = render(decode_frame(path, number - 1), attributes.for_frame(number - 1), RenderOptions("image/png"))
        got = pixels.render(stored, number, RenderOptions("image/png"))
        np.testing.assert_array_equal(decoded(got), decoded(want))
        assert decoded(got).shape[:2] == (ds.Rows, ds.Columns)


def test_palette_with_bulk_lut_data_is_read_from_the_file(
    services: Services, pixels: PixelService, tmp_path: Path
) -> None:
    """4096-entry LUTs are too large to be inline in the JSON: the service reads the header."""
    indices = np.random.default_rng(10).integers(0, 4096, size=(16, 24), dtype=np.uint16)
    ds = make_ct(Rows=16, Columns=24, PhotometricInterpretation="PALETTE COLOR", RescaleSlope=None,
                 RescaleIntercept=None, PixelData=indices.tobytes())
    ramp = np.arange(4096, dtype=np.uint16) << 4
    for keyword, lut in (("Red", ramp), ("Green", ramp[::-1]), ("Blue", np.full(4096, 0x8000, np.uint16))):
        setattr(ds, f"{keyword}PaletteColorLookupTableDescriptor", [4096, 0, 16])
        setattr(ds, f"{keyword}PaletteColorLookupTableData", lut.astype("<u2").tobytes())
    out = decoded(pixels.render(store(services, tmp_path, ds), 1, RenderOptions(media_type="image/png")))
    np.testing.assert_array_equal(out[..., 0], (indices.astype(int) << 4) >> 8)
    np.testing.assert_array_equal(out[..., 1], ((4095 - indices.astype(int)) << 4) >> 8)
    assert (out[..., 2] == 0x80).all()


# ---- errors -------------------------------------------------------------------------------

def test_frames_out_of_range(services: Services, pixels: PixelService, tmp_path: Path) -> None:
    native, _ = multi_frame(3)
    compressed, _ = multi_frame(2)
    compressed.compress(RLELossless)
    for ds, count in ((native, 3), (compressed, 2)):
        stored = store(services, tmp_path, ds)
        with pytest.raises(NotFound, match=f"has {count} frame"):
            pixels.render(stored, count + 1, PNG)
        with pytest.raises(InvalidInput):
            pixels.render(stored, 0, PNG)


def test_corrupt_codestream_is_not_acceptable(services: Services, pixels: PixelService, tmp_path: Path) -> None:
    ds, _ = multi_frame(1, size=32)
    ds.compress(JPEG2000Lossless)
    codestream = next(generate_frames(ds.PixelData, number_of_frames=1))
    # Keep the main header (SOC, SIZ), garble the rest: the object is still well formed DICOM.
    garbled = codestream[:60] + bytes(range(256)) * ((len(codestream) - 60) // 256 + 1)
    ds.PixelData = encapsulate([garbled[: len(codestream) & ~1]])
    stored = store(services, tmp_path, ds)
    with pytest.raises(NotAcceptable, match="cannot be decoded"):
        pixels.render(stored, 1, PNG)


def test_instance_without_pixels_is_not_found(services: Services, pixels: PixelService, tmp_path: Path) -> None:
    no_image: dict[str, Any] = dict.fromkeys(["Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation",
                                              "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                                              "PixelData"])
    ds = make_ct(8, **no_image)
    with pytest.raises(NotFound, match="no pixel data"):
        pixels.render(store(services, tmp_path, ds), 1, PNG)


# ---- cache --------------------------------------------------------------------------------

def test_cache_serves_identical_bytes_without_reading(
    services: Services, pixels: PixelService, spy: StorageSpy, tmp_path: Path
) -> None:
    ds, _ = multi_frame(2)
    stored = store(services, tmp_path, ds)
    first = pixels.render(stored, 2, RenderOptions(window=WINDOW))
    reads = spy.ranged_reads
    assert pixels.render(stored, 2, RenderOptions(window=WINDOW)) == first
    assert spy.ranged_reads == reads
    assert pixels.render(stored, 2, RenderOptions(window=Window(0, 100))) != first  # options are in the key


def test_cache_is_bounded(services: Services, tmp_path: Path) -> None:
    ds, _ = multi_frame(8)
    stored = store(services, tmp_path, ds)
    service = PixelService(services.retrieve, cache_bytes=3 * 64 * 64)
    sizes = [len(service.render(stored, n, RenderOptions(media_type="image/png", window=WINDOW))) for n in range(1, 9)]
    assert service.cache.size <= 3 * 64 * 64
    assert 0 < len(service.cache) < 8
    kept = sum(1 for n in range(1, 9) if (stored.sop_instance_uid, stored.blob_key, n, PNG) in service.cache)
    assert kept == len(service.cache) and sum(sizes[-kept:]) <= 3 * 64 * 64  # the most recent ones


def test_a_stored_again_instance_is_rendered_afresh(services: Services, pixels: PixelService, tmp_path: Path) -> None:
    ds, values = multi_frame(1)
    stored = store(services, tmp_path, ds)
    before = decoded(pixels.render(stored, 1, PNG))
    services.index.delete(stored.study_instance_uid)
    services.blobs.delete(stored.blob_key)
    ds.PixelData = (4095 - values).astype(np.uint16).tobytes()
    again = store(services, tmp_path, ds)
    assert again.blob_key != stored.blob_key
    np.testing.assert_array_equal(before, expected(values[0]))
    np.testing.assert_array_equal(decoded(pixels.render(again, 1, PNG)), expected(4095 - values[0]))


# ---- thumbnails ---------------------------------------------------------------------------

def test_thumbnail_of_the_middle_instance(services: Services, pixels: PixelService, tmp_path: Path) -> None:
    """Instance i is (64 + 32 i) columns wide, so the thumbnail's height tells which one it is."""
    series = make_series(5, size=64)
    for i, ds in enumerate(series):
        ds.Columns = 64 + 32 * i
        ds.PixelData = np.zeros((64, 64 + 32 * i), dtype=np.uint16).tobytes()
    stored = [store(services, tmp_path, ds) for ds in series]
    located = services.retrieve.locate(stored[0].study_instance_uid, stored[0].series_instance_uid)
    assert [s.sop_instance_uid for s in located] == [s.sop_instance_uid for s in stored]
    image = Image.open(io.BytesIO(pixels.thumbnail(located)))
    assert image.format == "JPEG"
    assert image.size == (128, round(128 * 64 / (64 + 32 * 2)))  # the third of five


def test_thumbnail_of_the_middle_frame(services: Services, pixels: PixelService, tmp_path: Path) -> None:
    levels = np.arange(5, dtype=np.uint16) * 1000  # frame k is uniformly 1000 k
    ds = make_ct(200, NumberOfFrames=5, RescaleIntercept=0, WindowCenter=2000, WindowWidth=4001,
                 PixelData=np.repeat(levels, 200 * 200).tobytes(), StudyInstanceUID=generate_uid())
    image = Image.open(io.BytesIO(pixels.thumbnail([store(services, tmp_path, ds)], size=96)))
    assert image.size == (96, 96)
    assert abs(float(np.asarray(image).mean()) - float(linear(np.array([2000.0]), 2000, 4001)[0])) < 2


def test_thumbnail_of_nothing_is_not_found(pixels: PixelService) -> None:
    with pytest.raises(NotFound):
        pixels.thumbnail([])


def test_render_matches_pixel_array_of_the_stored_file(services: Services, pixels: PixelService, tmp_path: Path) -> None:
    """Rendering what is stored equals rendering what pydicom reads back from the blob."""
    ds, _ = multi_frame(4, WindowCenter=40, WindowWidth=400)
    ds.compress(RLELossless)
    stored = store(services, tmp_path, ds)
    with services.blobs.open(stored.blob_key) as fh:
        frame = pixel_array(fh, index=2)
    want = render(frame, RenderAttributes.from_dataset(ds), RenderOptions("image/png"))
    assert decoded(pixels.render(stored, 3, RenderOptions("image/png"))).tolist() == decoded(want).tolist()
