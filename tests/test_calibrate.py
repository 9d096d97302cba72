"""Threshold calibration and the decision rule, checked against brute force and skimage."""

from __future__ import annotations

import inspect
import itertools

import numpy as np
import pytest
from scipy import ndimage
from skimage import measure

from reconad.calibrate import (
    component_threshold,
    decide,
    largest_component_sizes,
    map_statistics,
    percentile_threshold,
)

AREAS = (1, 3, 10, 40, 150)


def smooth_maps(seed: int, n: int = 5, size: int = 24, levels: int | None = None) -> np.ndarray:
    """Spatially correlated noise, so that components grow gradually as t decreases."""
    rng = np.random.default_rng(seed)
    maps = ndimage.gaussian_filter(rng.random((n, size, size)), (0, 1.5, 1.5))
    if levels is not None:
        maps = np.round(maps * levels) / levels
    return maps.astype(np.float32)


def largest_by_skimage(binary: np.ndarray) -> int:
    """Largest 8-connected component over a stack, one image at a time."""
    sizes = [0]
    for image in binary:
        labelled = measure.label(image, connectivity=2)
        sizes += np.bincount(labelled.ravel())[1:].tolist()
    return max(sizes)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("min_area", AREAS)
def test_component_threshold_is_the_smallest_valid_candidate(seed: int, min_area: int) -> None:
    val_maps = smooth_maps(seed)
    threshold = component_threshold(val_maps, min_area)
    candidates = np.unique(val_maps)
    assert threshold in candidates
    assert largest_by_skimage(val_maps > threshold) < min_area
    lower = candidates[candidates < threshold]
    if lower.size:
        assert largest_by_skimage(val_maps > lower[-1]) >= min_area


@pytest.mark.parametrize("levels", [None, 10])
def test_component_threshold_equals_linear_scan(levels: int | None) -> None:
    val_maps = smooth_maps(3, n=3, size=16, levels=levels)
    for min_area in AREAS:
        scan = next(t for t in np.unique(val_maps) if largest_by_skimage(val_maps > t) < min_area)
        assert component_threshold(val_maps, min_area) == scan


def test_component_threshold_decreases_with_area() -> None:
    val_maps = smooth_maps(4)
    thresholds = [component_threshold(val_maps, area) for area in AREAS]
    assert all(a >= b for a, b in itertools.pairwise(thresholds))
    assert thresholds[0] == val_maps.max()
    assert thresholds[-1] < thresholds[0]


def test_component_threshold_uses_only_the_validation_maps() -> None:
    assert list(inspect.signature(component_threshold).parameters) == ["val_maps", "min_area"]


def test_calibrated_threshold_flags_no_validation_image() -> None:
    val_maps = smooth_maps(5)
    threshold = component_threshold(val_maps, 20)
    image_pred, pixel_pred = decide(val_maps, threshold, 20)
    assert not image_pred.any() and not pixel_pred.any()
    lower = np.unique(val_maps)
    lower = lower[lower < threshold][-1]
    assert decide(val_maps, lower, 20)[0].any()


def test_decide_drops_small_blobs_and_keeps_large_ones() -> None:
    maps = np.zeros((3, 10, 10), dtype=np.float32)
    maps[0, 1:3, 1:4] = 0.9  # 6 pixels
    maps[0, 7:9, 7] = 0.8  # 2 pixels
    maps[1, 5, 5] = 0.95  # 1 pixel
    for step in range(4):  # a 4-pixel diagonal line: one 8-connected component
        maps[2, step, step] = 0.7
    image_pred, pixel_pred = decide(maps, threshold=0.5, min_area=4)
    np.testing.assert_array_equal(image_pred, [True, False, True])
    expected = np.zeros_like(pixel_pred)
    expected[0, 1:3, 1:4] = True
    expected[2] = maps[2] > 0.5
    np.testing.assert_array_equal(pixel_pred, expected)
    image_pred, pixel_pred = decide(maps, threshold=0.5, min_area=1)
    np.testing.assert_array_equal(pixel_pred, maps > 0.5)
    np.testing.assert_array_equal(image_pred, [True, True, True])
    assert not decide(maps, threshold=0.9, min_area=1)[1][0].any()  # strictly above t


@pytest.mark.parametrize("seed", [0, 1])
def test_decide_matches_skimage_reference(seed: int) -> None:
    maps = smooth_maps(seed + 10, n=4, size=20)
    for threshold in np.quantile(maps, [0.5, 0.8, 0.95]):
        for min_area in (1, 5, 25):
            image_pred, pixel_pred = decide(maps, threshold, min_area)
            for index, image in enumerate(maps):
                labelled = measure.label(image > threshold, connectivity=2)
                sizes = np.bincount(labelled.ravel())
                big = [label for label in range(1, sizes.size) if sizes[label] >= min_area]
                np.testing.assert_array_equal(pixel_pred[index], np.isin(labelled, big))
                assert image_pred[index] == bool(big)


def test_largest_component_sizes_per_image() -> None:
    binary = smooth_maps(6, n=4) > 0.52
    binary[2] = False
    expected = [largest_by_skimage(image[None]) for image in binary]
    assert expected[2] == 0 and max(expected) > 1
    np.testing.assert_array_equal(largest_component_sizes(binary), expected)


def test_percentile_threshold_over_all_pixels() -> None:
    val_maps = smooth_maps(7)
    threshold = percentile_threshold(val_maps, 99.0)
    assert threshold == pytest.approx(np.percentile(val_maps.ravel(), 99.0))
    assert np.mean(val_maps > threshold) == pytest.approx(0.01, abs=2 / val_maps.size)


def test_map_statistics() -> None:
    val_maps = smooth_maps(8)
    stats = map_statistics(val_maps)
    assert set(stats) == {"mean", "std", "min", "p50", "p99", "max"}
    assert all(type(value) is float for value in stats.values())
    assert stats["mean"] == pytest.approx(float(np.mean(val_maps, dtype=np.float64)))
    assert stats["std"] == pytest.approx(float(np.std(val_maps, dtype=np.float64)))
    assert stats["p99"] == pytest.approx(float(np.percentile(val_maps, 99)))
    assert stats["min"] <= stats["p50"] <= stats["p99"] <= stats["max"] == val_maps.max()


def test_invalid_inputs_raise() -> None:
    val_maps = smooth_maps(9)
    with pytest.raises(ValueError, match="empty"):
        component_threshold(np.zeros((0, 8, 8)), 4)
    with pytest.raises(ValueError, match="min_area"):
        component_threshold(val_maps, 0)
    with pytest.raises(ValueError, match="min_area"):
        decide(val_maps, 0.5, 0)
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        decide(val_maps[0], 0.5, 4)
    with pytest.raises(ValueError, match="percentile"):
        percentile_threshold(val_maps, 100.0)
    with pytest.raises(ValueError, match="NaN"):
        map_statistics(np.full((1, 4, 4), np.nan))
