"""Anomaly-map smoothing and image scores against brute-force references."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from reconad.maps import box_smooth, gaussian_smooth, image_score


def _maps(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((3, 12, 10)).astype(np.float32)


def test_gaussian_smooth_filters_each_map_alone() -> None:
    maps = _maps()
    maps[1] *= 1000.0  # would leak into its neighbours if images were mixed
    smoothed = gaussian_smooth(maps, 1.5)
    for index in range(3):
        expected = ndimage.gaussian_filter(maps[index], 1.5, mode="reflect")
        np.testing.assert_allclose(smoothed[index], expected, rtol=1e-5, atol=1e-6)
    assert smoothed.dtype == np.float32


def _box_reference(image: np.ndarray, size: int) -> np.ndarray:
    """Mean over every size x size window, borders mirrored with the edge repeated."""
    before = size // 2
    padded = np.pad(image, ((before, size - 1 - before),) * 2, mode="symmetric")
    out = np.empty_like(image)
    for row in range(image.shape[0]):
        for col in range(image.shape[1]):
            out[row, col] = padded[row : row + size, col : col + size].mean()
    return out


@pytest.mark.parametrize(("size", "passes"), [(3, 1), (5, 2), (4, 3)])
def test_box_smooth_matches_repeated_window_means(size: int, passes: int) -> None:
    maps = _maps(1)
    smoothed = box_smooth(maps, size, passes)
    for index in range(3):
        expected = maps[index]
        for _ in range(passes):
            expected = _box_reference(expected, size)
        np.testing.assert_allclose(smoothed[index], expected, rtol=1e-5, atol=1e-6)


def test_smoothing_keeps_constant_maps() -> None:
    maps = np.full((2, 8, 8), 0.25, np.float32)
    np.testing.assert_allclose(gaussian_smooth(maps, 2.0), maps, rtol=1e-6)
    np.testing.assert_allclose(box_smooth(maps, 5, 3), maps, rtol=1e-6)


def test_image_score_max_and_top_q_mean() -> None:
    maps = np.stack([np.arange(1, 101, dtype=np.float32).reshape(10, 10)[::-1]] * 2)
    maps[1] *= 2.0
    np.testing.assert_array_equal(image_score(maps, "max"), [100.0, 200.0])
    # ceil(0.05 * 100) = 5 values: 96..100, mean 98
    np.testing.assert_allclose(image_score(maps, "top_q_mean", 0.05), [98.0, 196.0])
    # ceil(0.031 * 100) = 4 values: 97..100, mean 98.5
    np.testing.assert_allclose(image_score(maps, "top_q_mean", 0.031), [98.5, 197.0])
    np.testing.assert_allclose(image_score(maps, "top_q_mean", 1.0), [50.5, 101.0])
    # q so small that it rounds to zero pixels still takes the maximum
    np.testing.assert_allclose(image_score(maps, "top_q_mean", 1e-6), [100.0, 200.0])


def test_image_score_of_no_maps_is_empty() -> None:
    assert image_score(np.zeros((0, 4, 4), np.float32)).shape == (0,)


def test_invalid_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        gaussian_smooth(np.zeros((4, 4)), 1.0)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_smooth(_maps(), 0.0)
    with pytest.raises(ValueError, match="size"):
        box_smooth(_maps(), 0, 1)
    with pytest.raises(ValueError, match="how"):
        image_score(_maps(), "median")
    with pytest.raises(ValueError, match="q"):
        image_score(_maps(), "top_q_mean", 0.0)
