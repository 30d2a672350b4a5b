"""The rendering pipeline (PS3.3 C.11, PS3.18 8.3.5): expected pixels are computed here with
numpy from the formulas of the standard, then compared with the decoded (lossless PNG) output."""

from __future__ import annotations

import base64
import io
import os
import warnings
from collections.abc import Callable
from functools import cache
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.pixels import pixel_array
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pacs.dicom.instance import dataset_json
from pacs.errors import InvalidInput, NotAcceptable
from pacs.pixels.frames import can_read_natively, decode_frame, decoded_attributes, native_frame
from pacs.pixels.render import MAX_VIEWPORT, RenderAttributes, RenderOptions, Window, render, stored_values
from tests.support.factories import make_ct, to_bytes

PNG = RenderOptions(media_type="image/png")
# Files of pydicom's test data that pydicom itself cannot decode here (checked below).
UNDECODABLE = {
    "JPEG-lossy.dcm": "libjpeg error -1038; Pillow has no 12-bit JPEG",
    "JPEG2000-embedded-sequence-delimiter.dcm": "a sequence delimiter inside the codestream",
    "SC_rgb_jpeg.dcm": "damaged basic offset table",
}
NATIVE_DAMAGED = {"MR_truncated.dcm": "pixel data cut short", "badVR.dcm": "Number of Frames is '1A'"}


# ---- helpers ------------------------------------------------------------------------------

def decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def to_json(ds: Dataset) -> dict[str, Any]:
    doc = dataset_json(ds)
    doc["00083002"] = {"vr": "UI", "Value": [str(ds.file_meta.TransferSyntaxUID)]}
    return doc


ATTRIBUTE_SOURCES: dict[str, Callable[[Dataset], RenderAttributes]] = {
    "dataset": RenderAttributes.from_dataset,
    "json": lambda ds: RenderAttributes.from_json(to_json(ds)),
}


@pytest.fixture(params=sorted(ATTRIBUTE_SOURCES))
def attributes_of(request: pytest.FixtureRequest) -> Callable[[Dataset], RenderAttributes]:
    return ATTRIBUTE_SOURCES[request.param]


def linear(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1, as written there, to 8 bits."""
    y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255
    y = np.where(x <= c - 0.5 - (w - 1) / 2, 0, np.where(x > c - 0.5 + (w - 1) / 2, 255, y))
    return np.rint(y).astype(np.uint8)


def linear_exact(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """PS3.3 C.11.2.1.3.2."""
    y = np.where(x <= c - w / 2, 0, np.where(x > c + w / 2, 255, ((x - c) / w + 0.5) * 255))
    return np.rint(y).astype(np.uint8)


def sigmoid(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """PS3.3 C.11.2.1.3.1."""
    return np.rint(255 / (1 + np.exp(-4 * (x - c) / w))).astype(np.uint8)


def signed_ct(**overrides: Any) -> tuple[Dataset, np.ndarray]:
    """A signed 16-bit CT with slope 2, intercept -100; returns it and its stored values."""
    values = np.random.default_rng(1).integers(-1500, 2500, size=(48, 64), dtype=np.int16)
    ds = make_ct(
        PixelRepresentation=1, BitsStored=16, HighBit=15, RescaleSlope=2, RescaleIntercept=-100,
        PixelData=values.tobytes(), Rows=48, Columns=64, **overrides,
    )
    return ds, values


def render_png(ds: Dataset, attributes: RenderAttributes, window: Window | None = None) -> np.ndarray:
    options = RenderOptions(media_type="image/png", window=window)
    return decoded(render(pixel_array(ds), attributes, options))


def pydicom_file(name: str) -> str:
    path = get_testdata_file(name, download=False)
    if path is None or not os.path.isfile(path):
        pytest.fail(f"pydicom test file {name} is missing (pydicom-data is a test dependency)")
    return str(path)


# ---- grayscale ----------------------------------------------------------------------------

def test_signed_ct_with_rescale_and_requested_window(attributes_of: Callable[[Dataset], RenderAttributes]) -> None:
    ds, values = signed_ct()
    out = render_png(ds, attributes_of(ds), Window(40, 400))
    hu = values.astype(np.float64) * 2 - 100
    assert out.dtype == np.uint8 and out.shape == (48, 64)
    np.testing.assert_array_equal(out, linear(hu, 40, 400))
    assert 0 < (out == 0).sum() < out.size and (out == 255).sum() > 0  # the window really cuts


def test_monochrome1_is_inverted_after_voi(attributes_of: Callable[[Dataset], RenderAttributes]) -> None:
    ds, values = signed_ct(PhotometricInterpretation="MONOCHROME1")
    out = render_png(ds, attributes_of(ds), Window(40, 400))
    np.testing.assert_array_equal(out, 255 - linear(values * 2.0 - 100, 40, 400))


def test_bits_stored_masks_garbage_in_high_bits(attributes_of: Callable[[Dataset], RenderAttributes]) -> None:
    rng = np.random.default_rng(2)
    true = rng.integers(0, 4096, size=(32, 32), dtype=np.uint16)
    garbage = rng.integers(1, 16, size=(32, 32), dtype=np.uint16) << 12
    ds = make_ct(32, PixelData=(true | garbage).tobytes(), RescaleIntercept=-1024)
    out = decoded(render(true | garbage, attributes_of(ds), RenderOptions(media_type="image/png", window=Window(0, 2000))))
    np.testing.assert_array_equal(out, linear(true - 1024.0, 0, 2000))


def test_signed_12_bit_values_are_sign_extended(attributes_of: Callable[[Dataset], RenderAttributes]) -> None:
    rng = np.random.default_rng(3)
    true = rng.integers(-2048, 2048, size=(32, 32)).astype(np.int16)
    raw = (true.view(np.uint16) & 0x0FFF) | (rng.integers(0, 16, size=(32, 32), dtype=np.uint16) << 12)
    ds = make_ct(32, PixelRepresentation=1, RescaleIntercept=0, PixelData=raw.tobytes())
    out = decoded(render(raw.view(np.int16), attributes_of(ds), RenderOptions(media_type="image/png", window=Window(0, 1000))))
    np.testing.assert_array_equal(out, linear(true.astype(np.float64), 0, 1000))


def test_the_files_first_window_is_used_when_none_is_asked(attributes_of: Callable[[Dataset], RenderAttributes]) -> None:
    ds, values = signed_ct(WindowCenter=[300, 40], WindowWidth=[1500, 80])
    attributes = attributes_of(ds)
    assert attributes.window == Window(300, 1500, "linear")
    np.testing.assert_array_equal(render_png(ds, attributes), linear(values * 2.0 - 100, 300, 1500))
    # an explicit window wins over the file's
    np.testing.assert_array_equal(render_png(ds, attributes, Window(40, 80)), linear(values * 2.0 - 100, 40, 80))


def test_the_files_voi_lut_function(attributes_of: Callable[[Dataset], RenderAttributes]) -> None:
    ds, values = signed_ct(WindowCenter=100, WindowWidth=700, VOILUTFunction="SIGMOID")
    np.testing.assert_array_equal(render_png(ds, attributes_of(ds)), sigmoid(values * 2.0 - 100, 100, 700))


def test_min_max_of_the_frame_without_any_voi(attributes_of: Callable[[Dataset], RenderAttributes]) -> None:
    ds, values = signed_ct()
    hu = values * 2.0 - 100
    expected = np.rint((hu - hu.min()) / (hu.max() - hu.min()) * 255).astype(np.uint8)
    out = render_png(ds, attributes_of(ds))
    np.testing.assert_array_equal(out, expected)
    assert out.min() == 0 and out.max() == 255


def test_constant_frame_without_voi_does_not_divide_by_zero() -> None:
    ds = make_ct(16, PixelData=np.full((16, 16), 700, dtype=np.uint16).tobytes())
    out = render_png(ds, RenderAttributes.from_dataset(ds))
    assert out.shape == (16, 16) and len(np.unique(out)) == 1


@pytest.mark.parametrize(("function", "formula"), [("sigmoid", sigmoid), ("linear_exact", linear_exact)])
def test_window_functions(function: str, formula: Callable[..., np.ndarray]) -> None:
    ds, values = signed_ct()
    out = render_png(ds, RenderAttributes.from_dataset(ds), Window(200, 900, function))
    np.testing.assert_array_equal(out, formula(values * 2.0 - 100, 200, 900))


def test_float_pixels_are_windowed_directly() -> None:
    values = np.linspace(-1.0, 3.0, 24 * 20).reshape(24, 20).astype(np.float32)
    attributes = RenderAttributes(rows=24, columns=20, bits_allocated=32, float_pixels=True, rescale_slope=10)
    out = decoded(render(values, attributes, RenderOptions(media_type="image/png", window=Window(5, 20))))
    np.testing.assert_array_equal(out, linear(values.astype(np.float64) * 10, 5, 20))


def test_modality_and_voi_lut_sequences(attributes_of: Callable[[Dataset], RenderAttributes]) -> None:
    values = np.arange(-8, 56, dtype=np.int16).reshape(8, 8)
    ds = make_ct(8, PixelRepresentation=1, BitsStored=16, PixelData=values.tobytes(), RescaleSlope=None, RescaleIntercept=None)
    modality_item, voi_item = Dataset(), Dataset()
    modality_item.add_new("LUTDescriptor", "SS", [32, -4, 16])  # first mapped value is signed here
    modality_item.add_new("LUTData", "US", [1000 + 10 * i for i in range(32)])
    modality_item.ModalityLUTType = "US"
    voi_item.add_new("LUTDescriptor", "US", [400, 1000, 12])
    voi_item.add_new("LUTData", "OW", np.array([min(4095, 13 * i) for i in range(400)], dtype="<u2").tobytes())
    ds.ModalityLUTSequence = [modality_item]
    ds.VOILUTSequence = [voi_item]
    ds = pydicom.dcmread(io.BytesIO(to_bytes(ds)))  # as stored: "US or SS" / "US or OW" resolved
    modality = 1000 + 10 * np.clip(values.astype(np.int64) + 4, 0, 31)
    voi = np.minimum(4095, 13 * np.clip(modality - 1000, 0, 399))
    out = render_png(ds, attributes_of(ds))
    np.testing.assert_array_equal(out, np.rint(voi * 255 / 4095).astype(np.uint8))


def test_functional_groups_of_enhanced_objects() -> None:
    ds = pydicom.dcmread(pydicom_file("eCT_Supplemental.dcm"))
    attributes = RenderAttributes.from_dataset(ds)
    assert (attributes.rescale_slope, attributes.rescale_intercept) == (1.0, -1024.0)
    assert attributes.window == Window(49, 102)
    frame = pixel_array(ds, index=1)
    out = decoded(render(frame, attributes.for_frame(1), PNG))
    np.testing.assert_array_equal(out, linear(frame - 1024.0, 49, 102))


def test_per_frame_values_override_shared_ones() -> None:
    ds, _ = signed_ct()
    shared, first, second = Dataset(), Dataset(), Dataset()
    for item, center in ((shared, 0), (first, 100), (second, None)):
        if center is not None:
            voi = Dataset()
            voi.WindowCenter, voi.WindowWidth = center, 500
            item.FrameVOILUTSequence = [voi]
    ds.SharedFunctionalGroupsSequence = [shared]
    ds.PerFrameFunctionalGroupsSequence = [first, second]
    for source in ATTRIBUTE_SOURCES.values():
        attributes = source(ds)
        assert attributes.for_frame(0).window == Window(100, 500)
        assert attributes.for_frame(1).window == Window(0, 500)


# ---- color --------------------------------------------------------------------------------

def test_rgb_passes_through() -> None:
    rgb = np.random.default_rng(4).integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    attributes = RenderAttributes(rows=20, columns=30, photometric_interpretation="RGB", samples_per_pixel=3,
                                  bits_allocated=8, bits_stored=8)
    np.testing.assert_array_equal(decoded(render(rgb, attributes, PNG)), rgb)


def test_ybr_full_is_converted_to_rgb() -> None:
    rgb = np.random.default_rng(5).integers(0, 256, size=(20, 30, 3)).astype(np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    # PS3.3 C.7.6.3.1.2 YBR_FULL
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.1687 * r - 0.3313 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.4187 * g - 0.0813 * b + 128
    ybr = np.clip(np.rint(np.stack([y, cb, cr], axis=-1)), 0, 255).astype(np.uint8)
    attributes = RenderAttributes(rows=20, columns=30, photometric_interpretation="YBR_FULL", samples_per_pixel=3,
                                  bits_allocated=8, bits_stored=8)
    out = decoded(render(ybr, attributes, PNG))
    assert np.abs(out.astype(int) - rgb).max() <= 2


def test_palette_color_through_its_luts(attributes_of: Callable[[Dataset], RenderAttributes]) -> None:
    indices = np.array([[8, 10, 11], [12, 13, 200]], dtype=np.uint8)
    ds = make_ct(2, Rows=2, Columns=3, PhotometricInterpretation="PALETTE COLOR", BitsAllocated=8, BitsStored=8,
                 HighBit=7, PixelData=indices.tobytes() + b"\0", RescaleSlope=None, RescaleIntercept=None)
    red, green, blue = np.array([0, 1000, 30000, 65535]), np.array([65535, 0, 256, 512]), np.array([7, 8, 9, 10])
    for keyword, lut in (("Red", red), ("Green", green), ("Blue", blue)):
        setattr(ds, f"{keyword}PaletteColorLookupTableDescriptor", [4, 10, 16])
        setattr(ds, f"{keyword}PaletteColorLookupTableData", lut.astype("<u2").tobytes())
    table = (np.stack([red, green, blue], axis=1) >> 8).astype(np.uint8)  # 16-bit entries: their high byte
    expected = table[np.clip(indices.astype(int) - 10, 0, 3)]  # below the first mapped: entry 0; above: the last
    out = decoded(render(indices, attributes_of(ds), PNG))
    np.testing.assert_array_equal(out, expected)


def test_palette_from_big_endian_json_and_bulk_data() -> None:
    lut = np.array([0, 0x1200, 0xFF00], dtype=">u2").tobytes()
    doc = {
        "00280004": {"vr": "CS", "Value": ["PALETTE COLOR"]},
        "00280010": {"vr": "US", "Value": [1]}, "00280011": {"vr": "US", "Value": [3]},
        "00280100": {"vr": "US", "Value": [8]}, "00280101": {"vr": "US", "Value": [8]},
        "00083002": {"vr": "UI", "Value": [ExplicitVRBigEndian]},
        **{f"0028110{i}": {"vr": "US", "Value": [3, 0, 16]} for i in (1, 2, 3)},
        **{f"0028120{i}": {"vr": "OW", "InlineBinary": base64.b64encode(lut).decode()} for i in (1, 2, 3)},
    }
    attributes = RenderAttributes.from_json(doc)
    assert attributes.palette is not None
    np.testing.assert_array_equal(attributes.palette.table[:, 0], [0, 0x12, 0xFF])
    doc["00281201"] = {"vr": "OW", "BulkDataURI": "http://example/bulk/00281201"}
    assert RenderAttributes.from_json(doc).needs_file


# ---- geometry and encoding ----------------------------------------------------------------

def gray(rows: int, columns: int) -> tuple[np.ndarray, RenderAttributes]:
    values = np.arange(rows * columns, dtype=np.uint16).reshape(rows, columns) % 4096
    return values, RenderAttributes(rows=rows, columns=columns, bits_stored=12)


@pytest.mark.parametrize(
    ("viewport", "size"),
    [
        ((50, 50), (50, 25)),  # width limits
        ((400, 20), (40, 20)),  # height limits
        ((200, 100), (200, 100)),  # exact: untouched
        ((300, 600), (300, 150)),  # fitted up, aspect kept
        ((10_000, 10_000), (MAX_VIEWPORT, MAX_VIEWPORT // 2)),  # never beyond 4096
    ],
)
def test_viewport_fits_and_keeps_the_aspect(viewport: tuple[int, int], size: tuple[int, int]) -> None:
    values, attributes = gray(100, 200)
    out = Image.open(io.BytesIO(render(values, attributes, RenderOptions(media_type="image/png", viewport=viewport))))
    assert out.size == size


@pytest.mark.parametrize(("media_type", "format_"), [("image/jpeg", "JPEG"), ("image/png", "PNG"), ("image/gif", "GIF")])
def test_each_media_type_decodes_with_the_right_size(media_type: str, format_: str) -> None:
    values, attributes = gray(48, 64)
    rgb = np.random.default_rng(6).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    rgb_attributes = RenderAttributes(rows=48, columns=64, photometric_interpretation="RGB", samples_per_pixel=3,
                                      bits_allocated=8, bits_stored=8)
    for pixels, attrs in ((values, attributes), (rgb, rgb_attributes)):
        image = Image.open(io.BytesIO(render(pixels, attrs, RenderOptions(media_type=media_type))))
        image.load()
        assert (image.format, image.size) == (format_, (64, 48))


def test_jpeg_quality_changes_the_size() -> None:
    values = np.random.default_rng(7).integers(0, 4096, size=(128, 128), dtype=np.uint16)
    attributes = RenderAttributes(rows=128, columns=128, bits_stored=12)
    low = render(values, attributes, RenderOptions(quality=10))
    high = render(values, attributes, RenderOptions(quality=95))
    assert len(low) * 2 < len(high)


@pytest.mark.parametrize("width", [0, -10, float("nan")])
def test_window_width_must_be_positive(width: float) -> None:
    with pytest.raises(InvalidInput):
        Window(40, width)


def test_invalid_options_are_refused() -> None:
    with pytest.raises(InvalidInput):
        Window(40, 400, "cubic")
    with pytest.raises(InvalidInput):
        RenderOptions(quality=0)
    with pytest.raises(InvalidInput):
        RenderOptions(viewport=(0, 10))
    with pytest.raises(NotAcceptable):
        RenderOptions(media_type="image/webp")


def test_options_hash_as_cache_keys() -> None:
    assert hash(RenderOptions(viewport=(64, 64), window=Window(1, 2))) == hash(
        RenderOptions(viewport=(64.0, 64.0), window=Window(1.0, 2.0))  # type: ignore[arg-type]
    )


# ---- pydicom's test files -----------------------------------------------------------------

def test_real_monochrome1_file_with_rescale_and_window() -> None:
    ds = pydicom.dcmread(pydicom_file("6154"))  # CR, MONOCHROME1, 12 bits, slope 0.684, intercept 200
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    out = decoded(render(pixel_array(ds), RenderAttributes.from_dataset(ds), PNG))
    values = pixel_array(ds) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(out, 255 - linear(values, float(ds.WindowCenter), float(ds.WindowWidth)))


def test_real_rgb_file_passes_through() -> None:
    path = pydicom_file("SC_rgb.dcm")
    ds = pydicom.dcmread(path)
    out = decoded(render(decode_frame(path, 0), RenderAttributes.from_dataset(ds), PNG))
    np.testing.assert_array_equal(out, pixel_array(ds))


def test_ybr_file_is_converted_once() -> None:
    """SC_ybr_full_uncompressed.dcm is SC_rgb.dcm in YBR_FULL: both paths (pydicom's decoder,
    which converts, and the native reader, which does not) must land near the RGB original."""
    rgb = pixel_array(pydicom_file("SC_rgb.dcm")).astype(int)
    path = pydicom_file("SC_ybr_full_uncompressed.dcm")
    ds = pydicom.dcmread(path)
    attributes = RenderAttributes.from_dataset(ds)
    assert attributes.photometric_interpretation == "YBR_FULL"
    through_pydicom = decoded(render(decode_frame(path, 0), decoded_attributes(attributes), PNG))
    native = decoded(render(native_frame(ds.PixelData, attributes), attributes, PNG))
    assert np.abs(through_pydicom - rgb).max() <= 6
    assert np.abs(native - rgb).max() <= 6


def test_multi_frame_file_renders_the_frame_asked_for() -> None:
    path = pydicom_file("emri_small.dcm")
    ds = pydicom.dcmread(path)
    attributes = RenderAttributes.from_dataset(ds)
    frames = pixel_array(ds)
    outputs = [decoded(render(decode_frame(path, i), attributes, RenderOptions("image/png", window=Window(500, 1000))))
               for i in (0, 9)]
    for out, index in zip(outputs, (0, 9), strict=True):
        np.testing.assert_array_equal(out, linear(frames[index].astype(np.float64), 500, 1000))
    assert not np.array_equal(outputs[0], outputs[1])


def pydicom_files(keep: Callable[[UID], bool]) -> list[str]:
    """pydicom's test files (pydicom-data included) whose transfer syntax ``keep`` accepts."""
    found = []
    for path in sorted({p for p in get_testdata_files() if os.path.isfile(p)}):
        try:
            syntax = read_file_meta_info(path).get("TransferSyntaxUID")
        except InvalidDicomError:  # no Part 10 header
            continue
        if syntax is not None and keep(syntax):
            found.append(path)
    return found


@cache
def compressed_files() -> list[str]:
    """Pixel data in anything but native little endian: encapsulated, deflated, big endian."""
    return pydicom_files(lambda s: s.is_compressed or s.is_deflated or not s.is_little_endian)


def test_compressed_files_are_found() -> None:
    names = {os.path.basename(p) for p in compressed_files()}
    assert len(names) >= 60
    assert {"JPEG2000.dcm", "SC_rgb_rle.dcm", "MR_small_jpeg_ls_lossless.dcm", "image_dfl.dcm",
            "MR_small_bigendian.dcm", "JPGExtended.dcm", "color3d_jpeg_baseline.dcm"} <= names


def test_known_undecodable_files_are_few_and_really_undecodable() -> None:
    names = {os.path.basename(p): p for p in compressed_files()}
    assert set(UNDECODABLE) <= set(names)
    assert len(UNDECODABLE) <= 3
    for name in UNDECODABLE:
        with warnings.catch_warnings(), pytest.raises((ValueError, RuntimeError)):
            warnings.simplefilter("ignore")  # pydicom warns about the damage on its way to failing
            pixel_array(names[name], index=0)


@pytest.mark.parametrize("path", compressed_files(), ids=os.path.basename)
def test_every_decodable_compressed_file_renders(path: str) -> None:
    name = os.path.basename(path)
    if name in UNDECODABLE:
        with warnings.catch_warnings(), pytest.raises(NotAcceptable):
            warnings.simplefilter("ignore")  # pydicom warns about the damage on its way to failing
            decode_frame(path, 0)
        pytest.skip(f"pydicom cannot decode {name}: {UNDECODABLE[name]}")
    header = pydicom.dcmread(path, stop_before_pixels=True)
    if "Rows" not in header:
        pytest.skip(f"{name} is not an image")
    attributes = decoded_attributes(RenderAttributes.from_dataset(header))
    frames = attributes.number_of_frames
    for index in sorted({0, frames - 1}):
        for options in (RenderOptions(), PNG):
            image = Image.open(io.BytesIO(render(decode_frame(path, index), attributes.for_frame(index), options)))
            image.load()
            assert image.size == (header.Columns, header.Rows)
            assert image.mode == ("L" if header.get("SamplesPerPixel", 1) == 1 and
                                  header.PhotometricInterpretation != "PALETTE COLOR" else "RGB")


@pytest.mark.parametrize(
    "path", pydicom_files(lambda s: s in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)), ids=os.path.basename
)
# MR_small_padded.dcm: pydicom says so when it drops the padding after the last frame
@pytest.mark.filterwarnings("ignore:The pixel data is .* excess padding:UserWarning")
def test_native_reader_agrees_with_pydicom(path: str) -> None:
    """The native fast path (frame bytes -> array) reads what pydicom decodes."""
    name = os.path.basename(path)
    if name in NATIVE_DAMAGED:
        pytest.skip(f"{name}: {NATIVE_DAMAGED[name]}")
    ds = pydicom.dcmread(path)
    if "PixelData" not in ds or "Rows" not in ds:
        pytest.skip(f"{name} has no pixel data")
    attributes = RenderAttributes.from_dataset(ds)
    if not can_read_natively(attributes) or attributes.bits_allocated == 1 and attributes.rows * attributes.columns % 8:
        pytest.skip(f"{name}: frames are not byte aligned or subsampled; pydicom decodes those")
    size = attributes.rows * attributes.columns * attributes.samples_per_pixel * attributes.bits_allocated // 8
    ours = native_frame(ds.PixelData[:size], attributes)
    expected = pixel_array(ds, index=0, raw=True)
    if ours.dtype.kind in "ui":  # pydicom masks unused bits as it decodes; the renderer does it later
        ours, expected = (stored_values(a.astype(np.int64), attributes) for a in (ours, expected))
    np.testing.assert_array_equal(ours, expected)
