"""Reading and writing images and masks: values, colour modes, and broken files."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from reconad.data import images
from reconad.data.images import (
    decode_image,
    is_grey,
    is_image_file,
    read_image,
    read_mask,
    resize_image,
    resize_mask,
    write_mask,
    write_png,
)
from reconad.errors import DataError

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _random_rgb(seed: int = 0, size: tuple[int, int] = (24, 32)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def _encode(ext: str, pixels: np.ndarray, *flags: int) -> bytes:
    ok, encoded = cv2.imencode(ext, pixels, list(flags))
    assert ok
    return encoded.tobytes()


def test_png_rgb_values_and_channel_order(tmp_path: Path) -> None:
    rgb = _random_rgb()
    path = tmp_path / "a.png"
    path.write_bytes(_encode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)))
    image, converted = read_image(path, "rgb")
    assert image.dtype == np.float32 and image.shape == (24, 32, 3) and not converted
    np.testing.assert_array_equal(image, rgb.astype(np.float32) / 255.0)


def test_sixteen_bit_grey_png_uses_the_full_range(tmp_path: Path) -> None:
    grey = np.random.default_rng(1).integers(0, 65536, (16, 16), dtype=np.uint16)
    path = tmp_path / "deep.png"
    path.write_bytes(_encode(".png", grey))
    image, converted = read_image(path, "grey")
    assert image.shape == (16, 16, 1) and not converted
    np.testing.assert_allclose(image[..., 0], grey / 65535.0, atol=1e-7)


def test_alpha_is_dropped(tmp_path: Path) -> None:
    bgra = np.dstack(
        [cv2.cvtColor(_random_rgb(2), cv2.COLOR_RGB2BGR), np.full((24, 32), 7, np.uint8)]
    )
    path = tmp_path / "alpha.png"
    path.write_bytes(_encode(".png", bgra))
    image = decode_image(path)
    np.testing.assert_array_equal(
        image, cv2.cvtColor(bgra[..., :3], cv2.COLOR_BGR2RGB) / np.float32(255)
    )


def test_grey_to_rgb_replicates_and_rgb_to_grey_is_luminance(tmp_path: Path) -> None:
    grey = np.random.default_rng(3).integers(0, 256, (8, 8), dtype=np.uint8)
    (tmp_path / "g.png").write_bytes(_encode(".png", grey))
    as_rgb, converted = read_image(tmp_path / "g.png", "rgb")
    assert converted and as_rgb.shape == (8, 8, 3)
    for channel in range(3):
        np.testing.assert_array_equal(as_rgb[..., channel], grey / np.float32(255))

    rgb = _random_rgb(4, (8, 8))
    (tmp_path / "c.png").write_bytes(_encode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)))
    as_grey, converted = read_image(tmp_path / "c.png", "grey")
    assert converted and as_grey.shape == (8, 8, 1)
    luminance = (rgb / 255.0) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(as_grey[..., 0], luminance, atol=1e-5)


def test_rgb_file_with_grey_content_is_not_a_conversion(tmp_path: Path) -> None:
    grey = np.random.default_rng(5).integers(0, 256, (8, 8), dtype=np.uint8)
    (tmp_path / "g3.png").write_bytes(_encode(".png", np.dstack([grey] * 3)))
    image, converted = read_image(tmp_path / "g3.png", "grey")
    assert not converted
    np.testing.assert_allclose(image[..., 0], grey / 255.0, atol=1e-6)
    assert is_grey(np.dstack([grey] * 3)) and not is_grey(_random_rgb())


def test_non_ascii_path(tmp_path: Path) -> None:
    folder = tmp_path / "données ✓"
    folder.mkdir()
    path = folder / "bild_ü.png"
    write_png(path, np.full((4, 4, 1), 0.5, np.float32))
    image, _ = read_image(path, "grey")
    np.testing.assert_array_equal(image, np.full((4, 4, 1), 128 / 255, np.float32))


@pytest.mark.parametrize(
    ("ext", "flags"),
    [
        (".png", ()),
        (".jpg", ()),
        (".jpg", (cv2.IMWRITE_JPEG_PROGRESSIVE, 1)),
        (".jpg", (cv2.IMWRITE_JPEG_RST_INTERVAL, 2)),
    ],
)
@pytest.mark.parametrize("keep", [0.5, 0.98, -2])
def test_truncated_files_are_refused(
    tmp_path: Path, ext: str, flags: tuple[int, ...], keep: float
) -> None:
    data = _encode(ext, _random_rgb(6, (64, 64)), *flags)
    cut = data[:keep] if isinstance(keep, int) else data[: int(len(data) * keep)]
    path = tmp_path / f"broken{ext}"
    path.write_bytes(cut)
    with pytest.raises(DataError, match=r"broken\.(png|jpg): not a readable image"):
        read_image(path, "rgb")


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_truncation_is_caught_even_if_the_decoder_accepts_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ext: str
) -> None:
    """Some OpenCV builds decode a cut JPEG, padding it with grey: the check must not rely on it."""
    data = _encode(ext, _random_rgb(7, (64, 64)))
    path = tmp_path / f"cut{ext}"
    path.write_bytes(data[: len(data) - 40])
    monkeypatch.setattr(cv2, "imdecode", lambda *_: np.full((64, 64, 3), 128, np.uint8))
    with pytest.raises(DataError, match="not a readable image"):
        decode_image(path)


def test_jpeg_eoi_inside_a_metadata_segment_does_not_hide_truncation(tmp_path: Path) -> None:
    data = _encode(".jpg", _random_rgb(8, (64, 64)))
    thumbnail = b"Exif\x00\x00" + b"\xff\xd8 fake thumbnail \xff\xd9"
    app1 = b"\xff\xe1" + (len(thumbnail) + 2).to_bytes(2, "big") + thumbnail
    with_metadata = data[:2] + app1 + data[2:]
    whole = tmp_path / "whole.jpg"
    whole.write_bytes(with_metadata + b"\x00\x00trailing")
    assert decode_image(whole).shape == (64, 64, 3)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(with_metadata[: len(with_metadata) // 2])
    with pytest.raises(DataError, match=r"cut\.jpg"):
        decode_image(cut)


@pytest.mark.parametrize("content", [b"", b"just some text, not pixels", b"\x89PNG\r\n\x1a\n"])
def test_non_images_are_refused_with_the_file_named(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "notes.png"
    path.write_bytes(content)
    with pytest.raises(DataError, match=r"notes\.png: not a readable image"):
        read_image(path, "grey")


def test_unreadable_file_is_a_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "secret.png"
    write_png(path, np.zeros((4, 4, 1), np.float32))
    if IS_ROOT:

        def denied(self: Path) -> bytes:
            raise PermissionError(13, "Permission denied", str(self))

        monkeypatch.setattr(Path, "read_bytes", denied)
    else:
        path.chmod(0)
    with pytest.raises(DataError, match=r"secret\.png: cannot read the file"):
        read_image(path, "grey")


@pytest.mark.parametrize(
    ("stored", "expected", "binarised"),
    [
        ([0, 255], [False, True], False),
        ([0, 1], [False, True], False),
        ([0, 100, 127, 128, 200], [False, False, False, True, True], True),
    ],
)
def test_read_mask(
    tmp_path: Path, stored: list[int], expected: list[bool], binarised: bool
) -> None:
    path = tmp_path / "m_mask.png"
    path.write_bytes(_encode(".png", np.array([stored], np.uint8)))
    mask, was_binarised = read_mask(path)
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, [expected])
    assert was_binarised is binarised


def test_colour_mask_counts_any_channel(tmp_path: Path) -> None:
    red_on_black = np.zeros((2, 2, 3), np.uint8)
    red_on_black[0, 0, 2] = 255
    path = tmp_path / "c_mask.png"
    path.write_bytes(_encode(".png", red_on_black))
    np.testing.assert_array_equal(read_mask(path).mask, [[True, False], [False, False]])


def test_resize_shrinks_by_area_average_and_keeps_channels() -> None:
    image = np.random.default_rng(9).random((8, 12, 1)).astype(np.float32)
    small = resize_image(image, (4, 6))
    assert small.shape == (4, 6, 1)
    block_mean = image.reshape(4, 2, 6, 2, 1).mean(axis=(1, 3))
    np.testing.assert_allclose(small, block_mean, atol=1e-6)
    assert resize_image(image, (8, 12)) is image


def test_resize_grows_bilinearly() -> None:
    image = np.random.default_rng(10).random((4, 4, 3)).astype(np.float32)
    big = resize_image(image, 8)
    expected = cv2.resize(image, (8, 8), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(big, expected)
    assert big.min() >= image.min() and big.max() <= image.max()


def test_resize_mask_is_nearest_and_binary() -> None:
    mask = np.array([[True, False], [False, True]])
    np.testing.assert_array_equal(resize_mask(mask, 4), np.kron(mask, np.ones((2, 2), bool)))
    shrunk = resize_mask(np.kron(mask, np.ones((4, 4), bool)), 2)
    assert shrunk.dtype == bool
    np.testing.assert_array_equal(shrunk, mask)


def test_write_png_and_mask_round_trip(tmp_path: Path) -> None:
    image = np.random.default_rng(11).integers(0, 256, (6, 5, 3)).astype(np.float32) / 255
    write_png(tmp_path / "x.png", image)
    np.testing.assert_allclose(read_image(tmp_path / "x.png", "rgb").pixels, image, atol=1e-6)
    mask = np.random.default_rng(12).random((6, 5)) > 0.5
    write_mask(tmp_path / "x_mask.png", mask)
    raw = cv2.imread(str(tmp_path / "x_mask.png"), cv2.IMREAD_UNCHANGED)
    assert set(np.unique(raw)) <= {0, 255}
    np.testing.assert_array_equal(read_mask(tmp_path / "x_mask.png").mask, mask)
    assert sorted(os.listdir(tmp_path)) == ["x.png", "x_mask.png"]


def test_image_suffixes_ignore_case() -> None:
    assert is_image_file(Path("a.PNG")) and is_image_file(Path("b.JpEg"))
    assert is_image_file(Path("c.tiff")) and not is_image_file(Path("d.txt"))
    assert {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"} == images.IMAGE_SUFFIXES
