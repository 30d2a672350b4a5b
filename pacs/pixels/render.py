"""One frame's pixels -> 8-bit image -> JPEG, PNG or GIF (PS3.18 8.3.5, 10.4.1.1.3; WADO-URI).

Grayscale follows PS3.3 C.11 in order: stored values (masked to Bits Stored, sign-extended),
Modality LUT (rescale or LUT), VOI (window or VOI LUT), MONOCHROME1 inversion, 8 bits out.
Integer data of up to 16 bits goes through that chain once per possible stored value, and the
frame is then mapped with one table lookup, so a 512x512 CT costs about a millisecond whatever
the window function. Color: RGB as is, YBR_FULL converted, PALETTE COLOR through its LUTs.

``RenderAttributes`` says what a pixel array means; it is read from a pydicom Dataset or from the
DICOM JSON the index keeps for every instance (PS3.18 F.2), so rendering needs no file parse.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

import numpy as np
from PIL import Image
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, convert_color_space
from pydicom.sequence import Sequence

from pacs.errors import InvalidInput, NotAcceptable

MAX_VIEWPORT = 4096
MEDIA_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF"}
WINDOW_FUNCTIONS = ("linear", "linear_exact", "sigmoid")  # PS3.3 C.11.2.1.2 VOI LUT Function
PNG_COMPRESS_LEVEL = 1  # zlib level: 6 (Pillow's default) takes 5x longer for ~15% smaller files
_TABLE_BITS = 16  # integer data up to this many bits per sample is mapped through a table
_YBR = ("YBR_FULL", "YBR_FULL_422")
_T = TypeVar("_T")


@dataclass(frozen=True)
class Window:
    center: float
    width: float
    function: str = "linear"

    def __post_init__(self) -> None:
        try:
            center, width = float(self.center), float(self.width)
        except (TypeError, ValueError):
            raise InvalidInput(f"window center and width must be numbers: {self.center!r}, {self.width!r}") from None
        if not (math.isfinite(center) and math.isfinite(width)) or width <= 0:
            raise InvalidInput(f"window width must be a number > 0, got {self.width!r}")
        function = str(self.function).strip().lower()
        if function not in WINDOW_FUNCTIONS:
            raise InvalidInput(f"unknown VOI LUT function {self.function!r}; expected one of {WINDOW_FUNCTIONS}")
        object.__setattr__(self, "center", center)
        object.__setattr__(self, "width", width)
        object.__setattr__(self, "function", function)


@dataclass(frozen=True)
class RenderOptions:
    media_type: str = "image/jpeg"
    quality: int = 90  # JPEG quality 1..100
    window: Window | None = None  # None: the file's own VOI, else its VOI LUT, else the frame's range
    viewport: tuple[int, int] | None = None  # (width, height) to fit in, aspect kept, at most MAX_VIEWPORT

    def __post_init__(self) -> None:
        if self.media_type not in MEDIA_TYPES:
            raise NotAcceptable(f"cannot render {self.media_type!r}; supported: {', '.join(MEDIA_TYPES)}")
        if not 1 <= self.quality <= 100:
            raise InvalidInput(f"quality must be between 1 and 100, got {self.quality}")
        if self.viewport is not None:
            if len(self.viewport) != 2 or min(self.viewport) < 1:
                raise InvalidInput(f"viewport must be two sizes >= 1, got {self.viewport!r}")
            # A tuple of ints: options are part of cache keys, so they must hash.
            object.__setattr__(self, "viewport", (int(self.viewport[0]), int(self.viewport[1])))


@dataclass(frozen=True, eq=False)
class Lut:
    """A Modality or VOI LUT (PS3.3 C.11.1.1.1): ``data[v - first]`` for v in range, clamped outside."""

    first: int
    data: np.ndarray
    bits: int

    def lookup(self, values: np.ndarray) -> np.ndarray:
        index = np.clip(np.rint(values) - self.first, 0, len(self.data) - 1).astype(np.intp)
        return self.data[index]


@dataclass(frozen=True, eq=False)
class Palette:
    first: int  # first stored value mapped (PS3.3 C.7.6.3.1.5)
    table: np.ndarray  # (entries, 3) uint8 RGB


@dataclass(frozen=True)
class FrameValues:
    """What a multi-frame functional group changes for one frame (PS3.3 C.7.6.16.2.9/10)."""

    rescale_slope: float | None = None
    rescale_intercept: float | None = None
    window: Window | None = None


@dataclass(frozen=True, eq=False)
class RenderAttributes:
    rows: int
    columns: int
    photometric_interpretation: str = "MONOCHROME2"
    samples_per_pixel: int = 1
    bits_allocated: int = 16
    bits_stored: int = 16
    pixel_representation: int = 0
    planar_configuration: int = 0
    number_of_frames: int = 1
    float_pixels: bool = False  # Float / Double Float Pixel Data
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    modality_lut: Lut | None = None
    window: Window | None = None  # the file's first window (C.11.2.1.2), with its VOI LUT Function
    voi_lut: Lut | None = None
    palette: Palette | None = None
    palette_in_file: bool = False  # LUT data is bulk data (or segmented): read it from the file
    per_frame: tuple[FrameValues, ...] = ()

    @classmethod
    def from_dataset(cls, ds: Any) -> RenderAttributes:
        little = ds.original_encoding[1] is not False
        meta = getattr(ds, "file_meta", None)
        if meta is not None and str(meta.get("TransferSyntaxUID", "")) == _BIG_ENDIAN:
            little = False
        attributes = _read_attributes(_DatasetSource(ds, little))
        if attributes.palette is None and attributes.palette_in_file:
            attributes = replace(attributes, palette=_segmented_palette(ds), palette_in_file=False)
        return attributes

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> RenderAttributes:
        """From DICOM JSON; binary values are InlineBinary (little endian unless the stored
        transfer syntax, in 00083002 or 00020010, is big endian) or absent BulkDataURIs."""
        syntax = _JsonSource(doc, True).values(0x00083002) or _JsonSource(doc, True).values(0x00020010)
        return _read_attributes(_JsonSource(doc, str(syntax[0]) != _BIG_ENDIAN if syntax else True))

    @property
    def needs_file(self) -> bool:
        """The palette's LUT data is not in the JSON: read the attributes from the file header."""
        return self.photometric_interpretation == "PALETTE COLOR" and self.palette is None and self.palette_in_file

    def for_frame(self, index: int) -> RenderAttributes:
        """These attributes with frame ``index``'s (0-based) functional group values applied."""
        if not 0 <= index < len(self.per_frame):
            return self
        values = self.per_frame[index]
        return replace(
            self,
            rescale_slope=_pick(values.rescale_slope, self.rescale_slope),
            rescale_intercept=_pick(values.rescale_intercept, self.rescale_intercept),
            window=values.window or self.window,
            per_frame=(),
        )


# ---- reading attributes -------------------------------------------------------------------

_BIG_ENDIAN = "1.2.840.10008.1.2.2"
_SHARED_GROUPS, _PER_FRAME_GROUPS = 0x52009229, 0x52009230
_PIXEL_VALUE_TRANSFORMATION, _FRAME_VOI_LUT = 0x00289145, 0x00289132
_MODALITY_LUT_SEQUENCE, _VOI_LUT_SEQUENCE = 0x00283000, 0x00283010
_LUT_DESCRIPTOR, _LUT_DATA = 0x00283002, 0x00283006
_PALETTE_DESCRIPTORS = (0x00281101, 0x00281102, 0x00281103)
_PALETTE_DATA = (0x00281201, 0x00281202, 0x00281203)
_SEGMENTED_PALETTE_DATA = (0x00281221, 0x00281222, 0x00281223)


class _Source(Protocol):
    """One data set, from pydicom or DICOM JSON, seen the same way."""

    little: bool

    def values(self, tag: int) -> list[Any]: ...

    def binary(self, tag: int) -> bytes | list[Any] | None: ...

    def items(self, tag: int) -> list[_Source]: ...

    def has(self, tag: int) -> bool: ...


@dataclass
class _JsonSource:
    doc: dict[str, Any]
    little: bool

    def _element(self, tag: int) -> dict[str, Any]:
        element = self.doc.get(f"{tag:08X}")
        return element if isinstance(element, dict) else {}

    def values(self, tag: int) -> list[Any]:
        value = self._element(tag).get("Value")
        return value if isinstance(value, list) else []

    def binary(self, tag: int) -> bytes | list[Any] | None:
        element = self._element(tag)
        if "InlineBinary" in element:
            return base64.b64decode(element["InlineBinary"])
        return self.values(tag) or None  # LUT Data may be US values; a BulkDataURI is not here

    def items(self, tag: int) -> list[_Source]:
        return [_JsonSource(item, self.little) for item in self.values(tag) if isinstance(item, dict)]

    def has(self, tag: int) -> bool:
        return f"{tag:08X}" in self.doc


@dataclass
class _DatasetSource:
    ds: Any
    little: bool

    def _value(self, tag: int) -> Any:
        try:
            return self.ds[tag].value if tag in self.ds else None
        except Exception:  # noqa: BLE001 - pydicom raises many kinds on a damaged value; it is optional here
            return None

    def values(self, tag: int) -> list[Any]:
        value = self._value(tag)
        if value is None or value == "" or isinstance(value, bytes):
            return []
        return list(value) if isinstance(value, (list, tuple, MultiValue, Sequence)) else [value]

    def binary(self, tag: int) -> bytes | list[Any] | None:
        value = self._value(tag)
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        return self.values(tag) or None

    def items(self, tag: int) -> list[_Source]:
        value = self._value(tag)
        return [_DatasetSource(item, self.little) for item in value] if isinstance(value, Sequence) else []

    def has(self, tag: int) -> bool:
        return tag in self.ds


def _read_attributes(src: _Source) -> RenderAttributes:
    photometric = str(_first(src, 0x00280004, "MONOCHROME2")).strip().upper()
    slope, intercept, window = _float(src, 0x00281053), _float(src, 0x00281052), _window(src)
    shared = src.items(_SHARED_GROUPS)
    if shared:  # enhanced multi-frame objects keep these in functional groups, not at top level
        common = _frame_values(shared[0])
        slope, intercept = _pick(common.rescale_slope, slope), _pick(common.rescale_intercept, intercept)
        window = common.window or window
    per_frame = tuple(_frame_values(item) for item in src.items(_PER_FRAME_GROUPS))
    palette, palette_in_file = _palette(src) if photometric == "PALETTE COLOR" else (None, False)
    representation = _int(src, 0x00280103, 0)
    return RenderAttributes(
        rows=_int(src, 0x00280010, 0),
        columns=_int(src, 0x00280011, 0),
        photometric_interpretation=photometric,
        samples_per_pixel=_int(src, 0x00280002, 1),
        bits_allocated=_int(src, 0x00280100, 16),
        bits_stored=_int(src, 0x00280101, 0) or _int(src, 0x00280100, 16),
        pixel_representation=representation,
        planar_configuration=_int(src, 0x00280006, 0),
        number_of_frames=max(1, _int(src, 0x00280008, 1)),
        float_pixels=src.has(0x7FE00008) or src.has(0x7FE00009),
        rescale_slope=_pick(slope, 1.0),
        rescale_intercept=_pick(intercept, 0.0),
        modality_lut=_first_lut(src, _MODALITY_LUT_SEQUENCE, representation),
        window=window,
        voi_lut=_first_lut(src, _VOI_LUT_SEQUENCE, representation),
        palette=palette,
        palette_in_file=palette_in_file,
        per_frame=per_frame if any(v != FrameValues() for v in per_frame) else (),
    )


def _frame_values(group: _Source) -> FrameValues:
    transformation = group.items(_PIXEL_VALUE_TRANSFORMATION)[:1]
    voi_item = group.items(_FRAME_VOI_LUT)[:1]
    return FrameValues(
        rescale_slope=_float(transformation[0], 0x00281053) if transformation else None,
        rescale_intercept=_float(transformation[0], 0x00281052) if transformation else None,
        window=_window(voi_item[0]) if voi_item else None,
    )


def _window(src: _Source) -> Window | None:
    """The first window of the file; an unusable one (width <= 0, not a number) is ignored."""
    center, width = _float(src, 0x00281050), _float(src, 0x00281051)
    if center is None or width is None:
        return None
    function = str(_first(src, 0x00281056, "LINEAR")).strip().lower()
    try:
        return Window(center, width, function if function in WINDOW_FUNCTIONS else "linear")
    except InvalidInput:
        return None


def _first_lut(src: _Source, sequence: int, representation: int) -> Lut | None:
    items = src.items(sequence)
    if not items:
        return None
    descriptor = items[0].values(_LUT_DESCRIPTOR)
    data = _words(items[0].binary(_LUT_DATA), items[0].little)
    if len(descriptor) < 3 or data is None or data.size == 0:
        return None
    entries, first, bits = _descriptor(descriptor, representation)
    data = data[:entries]
    # Some writers declare fewer output bits than their data uses; trust the data.
    return Lut(first, data, max(bits, int(data.max()).bit_length(), 1))


def _palette(src: _Source) -> tuple[Palette | None, bool]:
    descriptors = [src.values(tag) for tag in _PALETTE_DESCRIPTORS]
    if any(len(d) < 3 for d in descriptors):
        return None, False
    raw = [src.binary(tag) for tag in _PALETTE_DATA]
    if any(r is None for r in raw):
        # Bulk data in the JSON, or segmented tables: both are read from the file instead.
        return None, any(src.has(tag) for tag in (*_PALETTE_DATA, *_SEGMENTED_PALETTE_DATA))
    entries, first, bits = _descriptor(descriptors[0], 0)
    channels = [_words(r, src.little, entries) for r in raw]
    if any(c is None or c.size < entries for c in channels):
        return None, False
    return Palette(first, _scale_channels([c[:entries] for c in channels if c is not None], bits)), False


def _segmented_palette(ds: Any) -> Palette | None:
    """Segmented palettes (PS3.3 C.7.9.2) expanded by pydicom: the table is the LUT applied to
    every mapped value."""
    descriptor = list(ds.get("RedPaletteColorLookupTableDescriptor") or [])
    if len(descriptor) < 3:
        return None
    entries, first, bits = _descriptor(descriptor, 0)
    try:
        table = apply_color_lut(np.arange(first, first + entries), ds)
    except Exception:  # noqa: BLE001 - a damaged palette is reported as "no usable palette"
        return None
    return Palette(first, _scale_channels([table[:, i] for i in range(3)], bits))


def _scale_channels(channels: list[np.ndarray], bits: int) -> np.ndarray:
    """8-bit RGB from LUT entries of ``bits`` bits: the high byte, as 8-bit intensities are
    commonly written into 16-bit entries (0xFF00 is full intensity)."""
    bits = max(bits, *(int(c.max()).bit_length() for c in channels), 1)
    stacked = np.stack([c.astype(np.int64) for c in channels], axis=1)
    if bits >= 8:
        return (stacked >> (bits - 8)).astype(np.uint8)
    return np.rint(stacked * (255.0 / ((1 << bits) - 1))).astype(np.uint8)


def _descriptor(values: list[Any], representation: int) -> tuple[int, int, int]:
    entries, first, bits = (int(v) for v in values[:3])
    if representation == 1 and first > 0x7FFF:
        first -= 0x10000  # "first value mapped" is SS for signed data, though often sent as US
    return entries or 0x10000, first, bits  # 0 entries means 2^16 (PS3.3 C.11.1.1.1)


def _words(raw: bytes | list[Any] | None, little: bool, entries: int = 0) -> np.ndarray | None:
    """LUT data as integers: US values, or OW bytes (8-bit entries when one byte per entry)."""
    if raw is None:
        return None
    if isinstance(raw, list):
        return np.asarray([int(v) for v in raw], dtype=np.int64)
    if entries and len(raw) == entries:
        return np.frombuffer(raw, dtype=np.uint8).astype(np.int64)
    return np.frombuffer(raw[: len(raw) // 2 * 2], dtype="<u2" if little else ">u2").astype(np.int64)


def _first(src: _Source, tag: int, default: Any) -> Any:
    values = src.values(tag)
    return values[0] if values and values[0] is not None else default


def _int(src: _Source, tag: int, default: int) -> int:
    try:
        return int(float(_first(src, tag, default)))
    except (TypeError, ValueError):
        return default


def _float(src: _Source, tag: int) -> float | None:
    try:
        value = float(_first(src, tag, None))
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _pick(value: _T | None, default: _T) -> _T:
    return default if value is None else value


def render(pixels: np.ndarray, attributes: RenderAttributes, options: RenderOptions) -> bytes:
    """Encode one frame (rows x columns, with a trailing samples axis for color) as an image."""
    image = Image.fromarray(np.ascontiguousarray(to_8bit(pixels, attributes, options.window)))
    image = fit_viewport(image, options.viewport)
    return encode(image, options)


def to_8bit(pixels: np.ndarray, attributes: RenderAttributes, window: Window | None = None) -> np.ndarray:
    """The displayable frame: uint8, (rows, columns) for grayscale or (rows, columns, 3) RGB."""
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]
    photometric = attributes.photometric_interpretation
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        if pixels.ndim != 2:
            raise NotAcceptable(f"a {photometric} frame must be 2-dimensional, got shape {pixels.shape}")
        return _grayscale(pixels, attributes, window)
    if photometric == "PALETTE COLOR":
        return _palette_color(pixels, attributes)
    if photometric in ("RGB", *_YBR):
        if pixels.ndim != 3 or pixels.shape[2] != 3:
            raise NotAcceptable(f"a {photometric} frame must have 3 samples per pixel, got shape {pixels.shape}")
        rgb = _color_8bit(pixels, attributes.bits_stored)
        # PS3.3 C.7.6.3.1.2: YBR_FULL_422 frames are no longer subsampled once decoded.
        return convert_color_space(rgb, "YBR_FULL", "RGB") if photometric in _YBR else rgb
    raise NotAcceptable(f"cannot render photometric interpretation {photometric!r}")


# ---- grayscale ----------------------------------------------------------------------------

def _grayscale(pixels: np.ndarray, attributes: RenderAttributes, window: Window | None) -> np.ndarray:
    if pixels.dtype.kind in "ui" and pixels.dtype.itemsize * 8 <= _TABLE_BITS:
        # Big-endian arrays (pydicom returns them for big endian files) are read as unsigned
        # indices in native order; signedness comes from Pixel Representation, as DICOM says.
        native = pixels.astype(pixels.dtype.newbyteorder("="), copy=False)
        raw = native.view(f"u{pixels.dtype.itemsize}")
        domain = np.arange(1 << (8 * pixels.dtype.itemsize), dtype=np.int64)
        values = modality(stored_values(domain, attributes), attributes)
        if _needs_range(attributes, window):
            present = np.bincount(raw.ravel(), minlength=domain.size).astype(bool)
            window = _range_window(values[present])
        return np.take(voi(values, attributes, window), raw)
    if pixels.dtype.kind in "ui":
        values = modality(stored_values(pixels.astype(np.int64), attributes), attributes)
    elif pixels.dtype.kind == "f":  # Float Pixel Data: no Bits Stored to mask
        values = modality(np.nan_to_num(pixels.astype(np.float64)), attributes)
    else:
        raise NotAcceptable(f"cannot render pixel data of type {pixels.dtype}")
    if _needs_range(attributes, window):
        window = _range_window(values)
    return voi(values, attributes, window)


def stored_values(raw: np.ndarray, attributes: RenderAttributes) -> np.ndarray:
    """Raw integers (as int64) masked to Bits Stored and sign-extended (PS3.5 8.1.1)."""
    bits = attributes.bits_stored
    if not 0 < bits < 64:
        return raw
    values = raw & ((1 << bits) - 1)
    if attributes.pixel_representation == 1:
        sign = 1 << (bits - 1)
        values = (values ^ sign) - sign
    return values


def modality(stored: np.ndarray, attributes: RenderAttributes) -> np.ndarray:
    """Modality LUT (PS3.3 C.11.1): the LUT when there is one, else Rescale Slope/Intercept."""
    if attributes.modality_lut is not None:
        return attributes.modality_lut.lookup(stored).astype(np.float64)
    return stored * attributes.rescale_slope + attributes.rescale_intercept


def voi(values: np.ndarray, attributes: RenderAttributes, window: Window | None) -> np.ndarray:
    """VOI (PS3.3 C.11.2) to 8 bits, inverted for MONOCHROME1. The requested window wins, then
    the file's window, then its VOI LUT; ``window`` is the frame's range when none of those exists."""
    window = window or attributes.window
    if window is None and attributes.voi_lut is not None:
        lut = attributes.voi_lut
        out = lut.lookup(values) * (255.0 / ((1 << lut.bits) - 1))
    elif window is not None:
        out = apply_window(values, window)
    else:
        out = np.zeros(values.shape)
    out8 = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return 255 - out8 if attributes.photometric_interpretation == "MONOCHROME1" else out8


def apply_window(x: np.ndarray, window: Window) -> np.ndarray:
    """Window to [0, 255] as floats (unrounded), PS3.3 C.11.2.1.2 and C.11.2.1.3."""
    c, w = window.center, window.width
    if window.function == "sigmoid":
        return 255.0 / (1.0 + np.exp(np.clip(-4.0 * (x - c) / w, -700, 700)))
    if window.function == "linear_exact":
        return np.clip(((x - c) / w + 0.5) * 255.0, 0, 255)
    if w <= 1:
        # LINEAR requires a width >= 1; a narrower window is the threshold it tends to.
        return np.where(x > c - 0.5, 255.0, 0.0)
    return np.clip(((x - (c - 0.5)) / (w - 1) + 0.5) * 255.0, 0, 255)


def _needs_range(attributes: RenderAttributes, window: Window | None) -> bool:
    return window is None and attributes.window is None and attributes.voi_lut is None


def _range_window(values: np.ndarray) -> Window:
    """The frame's own range stretched over the output (no VOI in request or file)."""
    if values.size == 0:
        return Window(0.0, 1.0, "linear_exact")
    lo, hi = float(np.min(values)), float(np.max(values))
    return Window((lo + hi) / 2, max(hi - lo, 1.0), "linear_exact")


# ---- color --------------------------------------------------------------------------------

def _color_8bit(pixels: np.ndarray, bits_stored: int) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype.kind not in "ui":
        raise NotAcceptable(f"cannot render color pixel data of type {pixels.dtype}")
    bits = min(bits_stored or 8 * pixels.dtype.itemsize, 8 * pixels.dtype.itemsize)
    values = pixels.astype(np.int64) & ((1 << bits) - 1)
    return np.rint(values * (255.0 / ((1 << bits) - 1))).astype(np.uint8)


def _palette_color(pixels: np.ndarray, attributes: RenderAttributes) -> np.ndarray:
    palette = attributes.palette
    if palette is None:
        raise NotAcceptable("PALETTE COLOR image without usable Palette Color Lookup Tables")
    if pixels.ndim != 2 or pixels.dtype.kind not in "ui":
        raise NotAcceptable(f"a PALETTE COLOR frame must be 2-dimensional integers, got {pixels.dtype} {pixels.shape}")
    stored = stored_values(pixels.astype(np.int64), attributes)
    # PS3.3 C.7.6.3.1.5: values below the first mapped one take the first entry, above the last the last.
    index = np.clip(stored - palette.first, 0, len(palette.table) - 1)
    return palette.table[index]


# ---- geometry and encoding ----------------------------------------------------------------

def fit_size(columns: int, rows: int, viewport: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of a columns x rows image scaled to fit the viewport, aspect kept."""
    max_w, max_h = (min(int(v), MAX_VIEWPORT) for v in viewport)
    scale = min(max_w / columns, max_h / rows)
    return max(1, min(max_w, round(columns * scale))), max(1, min(max_h, round(rows * scale)))


def fit_viewport(image: Image.Image, viewport: tuple[int, int] | None) -> Image.Image:
    if viewport is None:
        return image
    size = fit_size(image.width, image.height, viewport)
    if size == image.size:
        return image
    if size[0] < image.width:
        # reducing_gap: a fast box reduction first, then Lanczos over the last factor of 3.
        return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return image.resize(size, Image.Resampling.BICUBIC)


def encode(image: Image.Image, options: RenderOptions) -> bytes:
    buffer = io.BytesIO()
    kind = MEDIA_TYPES[options.media_type]
    if kind == "JPEG":
        image.save(buffer, "JPEG", quality=options.quality)
    elif kind == "PNG":
        image.save(buffer, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    else:
        image.save(buffer, "GIF")
    return buffer.getvalue()
