"""Per-pixel statistics of normal maps: fitting in batches, standard scores, the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from reconad.errors import ReconadError
from reconad.pixel_stats import (
    STATS_FILE,
    Moments,
    PixelStats,
    fit_pixel_stats,
    fold_moments,
    held_out_sigma,
    load_pixel_stats,
    save_pixel_stats,
)


def _busy_rim_maps(count: int = 40, seed: int = 0) -> np.ndarray:
    """Normal maps whose left half varies ten times as much as their right half."""
    rng = np.random.default_rng(seed)
    maps = rng.normal(1.0, 0.01, (count, 8, 8))
    maps[:, :, :4] = rng.normal(2.0, 0.1, (count, 8, 4))
    return maps.astype(np.float32)


def test_statistics_in_batches_equal_those_of_all_maps_at_once() -> None:
    maps = _busy_rim_maps()
    floor = 0.5
    batched = fit_pixel_stats((maps[i : i + 7] for i in range(0, len(maps), 7)), floor)
    std = maps.astype(np.float64).std(axis=0)
    np.testing.assert_allclose(batched.mean, maps.astype(np.float64).mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(batched.scale, np.maximum(std, floor * np.median(std)), rtol=1e-5)
    assert batched.mean.dtype == batched.scale.dtype == np.float32


def test_the_same_excess_scores_higher_where_normal_maps_are_quiet() -> None:
    stats = fit_pixel_stats([_busy_rim_maps()], floor=0.5)
    test = np.stack([np.where(np.arange(8) < 4, 2.0, 1.0) * np.ones((8, 8))]).astype(np.float32)
    test[0, 2, 1] += 0.2  # on the busy half
    test[0, 5, 6] += 0.2  # on the quiet half
    scores = stats.standardise(test)
    assert scores.dtype == np.float32 and scores.shape == (1, 8, 8)
    assert scores[0, 5, 6] > 3 * scores[0, 2, 1] > 0
    assert abs(float(np.median(stats.standardise(_busy_rim_maps(seed=1))))) < 0.2


def test_the_floor_bounds_scores_where_normal_maps_never_vary() -> None:
    maps = _busy_rim_maps()
    maps[:, 0, 7] = 1.0  # a saturated pixel: no spread at all
    stats = fit_pixel_stats([maps], floor=0.5)
    assert np.all(stats.scale > 0)
    assert stats.scale[0, 7] == pytest.approx(0.5 * np.median(maps.std(axis=0)), rel=1e-4)


def test_fitting_refuses_no_maps_constant_maps_and_a_bad_floor() -> None:
    with pytest.raises(ReconadError, match="at least one normal image"):
        fit_pixel_stats([], floor=0.5)
    with pytest.raises(ReconadError, match="do not vary"):
        fit_pixel_stats([np.ones((5, 4, 4))], floor=0.5)
    with pytest.raises(ValueError, match="floor > 0"):
        fit_pixel_stats([_busy_rim_maps()], floor=0.0)
    with pytest.raises(ValueError, match="widths >= 0"):
        fit_pixel_stats([_busy_rim_maps()], floor=0.5, sigmas=[0.0, -1.0])


def test_maps_of_another_size_are_refused() -> None:
    stats = PixelStats(np.zeros((8, 8), np.float32), np.ones((8, 8), np.float32))
    with pytest.raises(ReconadError, match=r"size \(16, 16\).*size \(8, 8\)"):
        stats.standardise(np.zeros((1, 16, 16), np.float32))


def test_file_round_trip_and_clear_errors(tmp_path: Path) -> None:
    stats = fit_pixel_stats([_busy_rim_maps()], floor=0.5)
    save_pixel_stats(tmp_path, stats)
    assert [p.name for p in tmp_path.iterdir()] == [STATS_FILE]
    loaded = load_pixel_stats(tmp_path)
    np.testing.assert_array_equal(loaded.mean, stats.mean)
    np.testing.assert_array_equal(loaded.scale, stats.scale)
    with pytest.raises(ReconadError, match=rf"empty/{STATS_FILE}: pixel statistics missing"):
        load_pixel_stats(tmp_path / "empty")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / STATS_FILE).write_bytes((tmp_path / STATS_FILE).read_bytes()[:100])
    with pytest.raises(ReconadError, match=rf"damaged/{STATS_FILE}: not pixel statistics"):
        load_pixel_stats(damaged)
    flat = tmp_path / "flat"
    save_pixel_stats(flat, PixelStats(np.zeros(4, np.float32), np.ones(4, np.float32)))
    with pytest.raises(ReconadError, match=rf"flat/{STATS_FILE}: expected \(H, W\)"):
        load_pixel_stats(flat)


def _noise_maps(count: int, side: int = 32, seed: int = 0) -> np.ndarray:
    """Normal maps of a product that lies anywhere: the same spread at every position."""
    return np.random.default_rng(seed).gamma(2.0, 1.0, (count, side, side)).astype(np.float32)


def _aligned_maps(count: int, side: int = 32, seed: int = 0) -> np.ndarray:
    """Normal maps of an aligned product: mean and spread change from pixel to pixel."""
    rng = np.random.default_rng(seed)
    level = np.random.default_rng(99).uniform(0.5, 5.0, (side, side))
    return (level * (1.0 + 0.3 * rng.normal(size=(count, side, side)))).astype(np.float32)


def test_folds_alternate_images_whatever_the_batches() -> None:
    maps = _busy_rim_maps(count=13)
    even, odd = fold_moments(maps[i : i + 4] for i in range(0, len(maps), 4))
    for fold, part in ((even, maps[0::2]), (odd, maps[1::2])):
        direct = Moments().add(part)
        assert fold.count == direct.count == len(part)
        np.testing.assert_allclose(fold.total, direct.total)
        np.testing.assert_allclose(fold.squares, direct.squares)


def test_likelihood_from_moments_is_that_of_the_maps() -> None:
    maps = _aligned_maps(9).astype(np.float64)
    stats = fit_pixel_stats([_aligned_maps(20, seed=1)], floor=0.5)
    mean, scale = stats.mean.astype(np.float64), stats.scale.astype(np.float64)
    direct = np.mean(np.log(scale) + 0.5 * ((maps - mean) / scale) ** 2)
    got = Moments().add(maps).negative_log_likelihood(stats)
    assert got == pytest.approx(direct, rel=1e-9)


def test_the_maps_choose_per_pixel_statistics_when_aligned_and_pooled_ones_when_not() -> None:
    sigmas = [0.0, 2.0, 8.0]
    aligned, _ = held_out_sigma(fold_moments([_aligned_maps(40)]), sigmas, floor=0.5)
    loose, scores = held_out_sigma(fold_moments([_noise_maps(40)]), sigmas, floor=0.5)
    assert aligned == 0.0
    assert loose > 0.0 and scores[loose] < scores[0.0]
    pooled = fit_pixel_stats([_noise_maps(40)], floor=0.5, sigmas=sigmas)
    alone = fit_pixel_stats([_noise_maps(40)], floor=0.5)
    assert np.ptp(pooled.scale) < 0.5 * np.ptp(alone.scale)


def test_a_width_at_which_the_maps_never_vary_is_no_candidate() -> None:
    one_each = fold_moments([_noise_maps(2)])
    sigma, scores = held_out_sigma(one_each, [0.0, 4.0], floor=0.5)
    assert sigma == 4.0 and list(scores) == [4.0]
    with pytest.raises(ReconadError, match=r"folds of 1 and 1 normal maps vary at no"):
        held_out_sigma(one_each, [0.0], floor=0.5)
