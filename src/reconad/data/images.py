"""Reading, converting, resizing and writing images and ground-truth masks.

Images are float32 ``(H, W, C)`` in [0, 1], C = 1 (grey) or 3 (RGB order); masks are bool
``(H, W)``. Files are decoded from their bytes (``cv2.imdecode``), which works for
non-ASCII paths, and checked for truncation *before* decoding: some OpenCV builds decode a
truncated JPEG or PNG silently, padding the missing rows with grey, which would poison
training without any error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, NamedTuple

import cv2
import numpy as np

from reconad.errors import DataError
from reconad.io import atomic_write_bytes

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})

Color = Literal["grey", "rgb"]
COLORS: tuple[str, ...] = ("grey", "rgb")

_DECODE_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI = b"\xff\xd8"
_BMP_SIGNATURE = b"BM"
_FULL_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


class LoadedImage(NamedTuple):
    """An image and whether its channels were converted to the requested colour mode."""

    pixels: np.ndarray
    converted: bool


class LoadedMask(NamedTuple):
    """A bool mask and whether it had other values than 0 and full scale (binarised at 50%)."""

    mask: np.ndarray
    binarised: bool


def is_image_file(path: Path) -> bool:
    """True when the suffix is one of :data:`IMAGE_SUFFIXES` (any letter case)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def decode_image(path: Path) -> np.ndarray:
    """Read an image with the channels it is stored with, alpha dropped.

    Args:
        path: an 8- or 16-bit PNG, JPEG, BMP or TIFF; grey, RGB or RGBA.

    Returns:
        float32 ``(H, W, C)`` in [0, 1], C = 1 for grey files and 3 (RGB order) otherwise.

    Raises:
        DataError: the file cannot be read, is truncated or corrupt, or not an image.
    """
    path = Path(path)
    raw = _decode(path)
    scale = _FULL_SCALE.get(raw.dtype)
    if scale is None:
        raise DataError(f"{path}: unsupported pixel type {raw.dtype}; use 8- or 16-bit images")
    pixels = raw.astype(np.float32) / np.float32(scale)
    return _to_grey_or_rgb(pixels)


def read_image(path: Path, color: Color) -> LoadedImage:
    """Read an image in the requested colour mode.

    Args:
        path: see :func:`decode_image`.
        color: ``"grey"`` (C = 1) or ``"rgb"`` (C = 3).

    Returns:
        float32 ``(H, W, C)`` in [0, 1] and whether a channel conversion was needed, so
        the caller can warn once per dataset rather than once per image.

    Raises:
        DataError: see :func:`decode_image`.
    """
    return convert_color(decode_image(path), color)


def convert_color(image: np.ndarray, color: Color) -> LoadedImage:
    """Replicate grey into RGB, or take the luminance of RGB (ITU-R BT.601, as OpenCV).

    An RGB image whose three channels are equal is grey content: turning it into grey
    loses nothing and is not reported as a conversion.
    """
    if color not in COLORS:
        raise ValueError(f"color: expected one of {COLORS}, received: {color!r}")
    channels = image.shape[-1]
    if color == "rgb":
        if channels == 3:
            return LoadedImage(image, False)
        return LoadedImage(np.repeat(image, 3, axis=-1), True)
    if channels == 1:
        return LoadedImage(image, False)
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None]
    return LoadedImage(grey, not is_grey(image))


def is_grey(image: np.ndarray) -> bool:
    """True for one-channel images and for RGB images whose three channels are equal."""
    if image.shape[-1] == 1:
        return True
    return bool(np.array_equal(image[..., 0], image[..., 1])) and bool(
        np.array_equal(image[..., 0], image[..., 2])
    )


def read_mask(path: Path) -> LoadedMask:
    """Read a ground-truth mask as bool ``(H, W)``.

    Masks are expected to hold 0 and full scale (255), or 0 and 1. Anything else (e.g. a
    mask saved as JPEG, or anti-aliased) is binarised at 50% of full scale and reported, so
    the caller can warn. Colour masks count a pixel as defective when any channel is set.

    Raises:
        DataError: see :func:`decode_image`.
    """
    path = Path(path)
    raw = _decode(path)
    if raw.dtype not in _FULL_SCALE:
        raise DataError(f"{path}: unsupported pixel type {raw.dtype}; use 8- or 16-bit masks")
    values = raw.max(axis=-1) if raw.ndim == 3 else raw
    full_scale = _FULL_SCALE[raw.dtype]
    present = np.unique(values)
    if np.isin(present, (0, full_scale)).all() or np.isin(present, (0, 1)).all():
        return LoadedMask(values > 0, False)
    return LoadedMask(values >= full_scale / 2.0, True)


def resize_image(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize ``(H, W, C)`` to ``size`` (a side, or ``(height, width)``).

    Area averaging when shrinking (no aliasing of fine texture), bilinear when growing.
    """
    height, width = _height_width(size)
    if image.shape[:2] == (height, width):
        return image
    shrinking = height <= image.shape[0] and width <= image.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    resized = cv2.resize(image, (width, height), interpolation=interpolation)
    return resized.reshape(height, width, image.shape[-1])


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a bool ``(H, W)`` mask with nearest-neighbour sampling, so it stays binary."""
    height, width = _height_width(size)
    if mask.shape == (height, width):
        return mask
    resized = cv2.resize(
        mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST_EXACT
    )
    return resized > 0


def write_png(path: Path, image: np.ndarray) -> None:
    """Write float ``(H, W, C)`` in [0, 1] as an 8-bit PNG, atomically."""
    pixels = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    if pixels.ndim == 3 and pixels.shape[-1] == 3:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    _write_encoded(Path(path), pixels)


def write_mask(path: Path, mask: np.ndarray) -> None:
    """Write a bool ``(H, W)`` mask as an 8-bit PNG holding 0 and 255, atomically."""
    _write_encoded(Path(path), np.where(mask, 255, 0).astype(np.uint8))


def _write_encoded(path: Path, pixels: np.ndarray) -> None:
    ok, encoded = cv2.imencode(".png", pixels)
    if not ok:
        raise ValueError(f"{path}: OpenCV could not encode an array of shape {pixels.shape}")
    atomic_write_bytes(path, encoded.tobytes())


def _height_width(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    return int(size[0]), int(size[1])


def _decode(path: Path) -> np.ndarray:
    """Decoded pixels as stored (uint8/uint16, 2-D or BGR(A)); DataError when unusable."""
    unreadable = f"{path}: not a readable image (truncated or corrupt); remove or replace it"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file ({exc.strerror}); fix or remove it") from exc
    if not _is_complete(data):
        raise DataError(unreadable)
    try:
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), _DECODE_FLAGS)
    except cv2.error as exc:
        raise DataError(unreadable) from exc
    if pixels is None or pixels.size == 0:
        raise DataError(unreadable)
    return pixels


def _to_grey_or_rgb(pixels: np.ndarray) -> np.ndarray:
    if pixels.ndim == 2:
        return pixels[..., None]
    if pixels.shape[-1] in (1, 2):
        return pixels[..., :1]
    return cv2.cvtColor(np.ascontiguousarray(pixels[..., :3]), cv2.COLOR_BGR2RGB)


def _is_complete(data: bytes) -> bool:
    """Structural end-of-file check for the formats whose decoders may accept a cut file."""
    if not data:
        return False
    if data.startswith(_PNG_SIGNATURE):
        return _png_complete(data)
    if data.startswith(_JPEG_SOI):
        return _jpeg_complete(data)
    if data.startswith(_BMP_SIGNATURE) and len(data) >= 6:
        declared = int.from_bytes(data[2:6], "little")
        return declared <= len(data)
    return True


def _png_complete(data: bytes) -> bool:
    """Walk the chunks (length, type, data, CRC) until IEND; a cut file ends mid-chunk."""
    position = len(_PNG_SIGNATURE)
    while position + 12 <= len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        chunk_type = data[position + 4 : position + 8]
        end = position + 12 + length
        if end > len(data):
            return False
        if chunk_type == b"IEND":
            return True
        position = end
    return False


def _jpeg_complete(data: bytes) -> bool:
    """Walk the marker segments and entropy-coded scans until the EOI marker (FF D9).

    Segments are skipped by their length, so an EOI inside an embedded EXIF thumbnail
    does not count, and bytes after the real EOI are tolerated.
    """
    position = len(_JPEG_SOI)
    while position + 2 <= len(data):
        if data[position] != 0xFF:
            return False
        marker = data[position + 1]
        if marker == 0xFF:
            position += 1
            continue
        if marker == 0xD9:
            return True
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            position += 2
            continue
        if position + 4 > len(data):
            return False
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        end = position + 2 + length
        if length < 2 or end > len(data):
            return False
        position = _end_of_scan(data, end) if marker == 0xDA else end
        if position < 0:
            return False
    return False


def _end_of_scan(data: bytes, position: int) -> int:
    """Offset of the first marker after entropy-coded data, or -1 when the file ends first.

    Inside a scan, FF 00 is an escaped data byte and FF D0..D7 are restart markers.
    """
    while True:
        position = data.find(b"\xff", position)
        if position < 0 or position + 1 >= len(data):
            return -1
        following = data[position + 1]
        if following == 0xFF:
            position += 1
        elif following == 0x00 or 0xD0 <= following <= 0xD7:
            position += 2
        else:
            return position
