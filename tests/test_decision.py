"""The decision rule (``reconad.decision``): thresholds from validation maps and the
verdicts they give, checked against brute force and skimage."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import ndimage
from skimage import measure

from reconad.decision import (
    RULES,
    component_threshold,
    decide,
    decision_threshold,
    fpr_threshold,
    image_thresholds,
    largest_component_sizes,
    map_statistics,
    percentile_threshold,
    rule_thresholds,
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


def flagged(maps: np.ndarray, threshold: float, min_area: int) -> int:
    """How many images ``decide`` flags at ``threshold``."""
    return int(decide(maps, threshold, min_area)[0].sum())


# The component rule.


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


def test_calibrated_threshold_flags_no_validation_image() -> None:
    val_maps = smooth_maps(5)
    threshold = component_threshold(val_maps, 20)
    image_pred, pixel_pred = decide(val_maps, threshold, 20)
    assert not image_pred.any() and not pixel_pred.any()
    lower = np.unique(val_maps)
    lower = lower[lower < threshold][-1]
    assert decide(val_maps, lower, 20)[0].any()


# Per-image thresholds and the fpr rule.


@pytest.mark.parametrize("min_area", (1, 10, 40))
def test_image_thresholds_are_the_component_threshold_of_each_image_alone(min_area: int) -> None:
    val_maps = smooth_maps(11, n=6, size=16)
    per_image = image_thresholds(val_maps, min_area)
    assert per_image.shape == (6,)
    expected = [component_threshold(val_maps[i : i + 1], min_area) for i in range(6)]
    np.testing.assert_array_equal(per_image, expected)
    assert per_image.max() == component_threshold(val_maps, min_area)


def test_an_image_is_flagged_exactly_below_its_own_threshold() -> None:
    val_maps = smooth_maps(12, n=6, size=16)
    per_image = image_thresholds(val_maps, 10)
    for threshold in np.unique(np.concatenate([per_image, np.quantile(val_maps, [0.5, 0.9])])):
        np.testing.assert_array_equal(decide(val_maps, threshold, 10)[0], threshold < per_image)


@pytest.mark.parametrize("min_area", (1, 10, 40))
def test_fpr_threshold_with_target_zero_is_the_component_threshold(min_area: int) -> None:
    val_maps = smooth_maps(13, n=6)
    assert fpr_threshold(val_maps, min_area, 0.0) == component_threshold(val_maps, min_area)


@pytest.mark.parametrize("min_area", (1, 10))
@pytest.mark.parametrize("allowed", range(10))
def test_fpr_threshold_is_the_smallest_map_value_flagging_at_most_the_target(
    min_area: int, allowed: int
) -> None:
    """Target k/N: at most floor(target * N) images flagged, and no lower map value does so."""
    val_maps = smooth_maps(14, n=10, size=12)
    target = allowed / len(val_maps)
    limit = math.floor(target * len(val_maps))
    threshold = fpr_threshold(val_maps, min_area, target)
    candidates = np.unique(val_maps)
    assert threshold in candidates
    assert flagged(val_maps, threshold, min_area) <= limit
    scan = next(t for t in candidates if flagged(val_maps, t, min_area) <= limit)
    assert threshold == scan


def test_fpr_threshold_drops_as_the_target_rises() -> None:
    val_maps = smooth_maps(15, n=10, size=12)
    thresholds = [fpr_threshold(val_maps, 10, k / 10) for k in range(10)]
    assert all(a >= b for a, b in itertools.pairwise(thresholds))
    assert thresholds[0] == component_threshold(val_maps, 10)
    assert thresholds[-1] < thresholds[0]


def test_a_target_below_one_image_is_the_component_rule() -> None:
    """With 10 images a 5 % target allows no flagged image: floor(0.5) = 0."""
    val_maps = smooth_maps(16, n=10, size=12)
    assert fpr_threshold(val_maps, 10, 0.05) == component_threshold(val_maps, 10)


# The rules together, and the threshold a calibration decides with.


def test_rule_thresholds_holds_every_rule() -> None:
    val_maps = smooth_maps(17, n=6)
    thresholds = rule_thresholds(val_maps, min_area=10, target_fpr=0.2, percentile=99.0)
    assert tuple(thresholds) == RULES == ("components", "fpr", "percentile")
    assert thresholds == {
        "components": component_threshold(val_maps, 10),
        "fpr": fpr_threshold(val_maps, 10, 0.2),
        "percentile": percentile_threshold(val_maps, 99.0),
    }
    assert all(type(value) is float for value in thresholds.values())


@pytest.mark.parametrize(
    ("rule", "expected"),
    [("components", (0.9, 64)), ("fpr", (0.7, 64)), ("percentile", (0.5, 1))],
)
def test_decision_threshold_follows_the_calibrated_rule(
    rule: str, expected: tuple[float, int]
) -> None:
    thresholds = {"components": 0.9, "fpr": 0.7, "percentile": 0.5, "stats": {}}
    calibration = {"rule": rule, "min_area": 64, "maps": {"residual": thresholds}}
    threshold, min_area = decision_threshold(calibration, "residual")
    assert (threshold, min_area) == expected
    assert type(threshold) is float and type(min_area) is int


# decide, components and statistics.


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
        image_thresholds(val_maps, 2.5)
    with pytest.raises(ValueError, match="min_area"):
        decide(val_maps, 0.5, 0)
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        decide(val_maps[0], 0.5, 4)
    with pytest.raises(ValueError, match="percentile"):
        percentile_threshold(val_maps, 100.0)
    for target in (-0.1, 1.0):
        with pytest.raises(ValueError, match="target_fpr"):
            fpr_threshold(val_maps, 4, target)
    with pytest.raises(ValueError, match="NaN"):
        fpr_threshold(np.full((2, 4, 4), np.inf), 4, 0.1)
    with pytest.raises(ValueError, match="NaN"):
        map_statistics(np.full((1, 4, 4), np.nan))
