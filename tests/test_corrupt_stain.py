"""AESc corruptions: where they paint, what they paint, determinism and tf.data use."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf
from matplotlib.path import Path as Polygon
from scipy import ndimage
from scipy.interpolate import CubicHermiteSpline
from scipy.spatial import cKDTree

from reconad.corrupt.stain import (
    CORRUPTION_MODELS,
    CORRUPTIONS,
    DROPS_COUNT,
    DROPS_DIAMETER,
    GAUSSIAN_SIGMAS,
    MIXTURES,
    SCRATCH_HALF_WIDTH,
    STAIN_JITTER,
    STAIN_POINTS,
    STAIN_SEMI_AXES,
    choose_components,
    corrupt,
    paint_discs,
    scratch_paths,
    stain_shapes,
    star_mask,
)

LOCAL_MODELS = ("stain", "scratch", "drops", "mix1")
ALL_MODELS = CORRUPTION_MODELS
SEED = tf.constant([11, 5], tf.int64)


def _images(count: int, size: int, channels: int, seed: int = 0) -> tf.Tensor:
    rng = np.random.default_rng(seed)
    return tf.constant(rng.random((count, size, size, channels), dtype=np.float32))


@pytest.mark.parametrize("model", LOCAL_MODELS)
@pytest.mark.parametrize("channels", [1, 3])
def test_local_corruption_changes_only_its_nonempty_region(model: str, channels: int) -> None:
    images = _images(6, 48, channels)
    corrupted, region = corrupt(images, SEED, model)
    assert corrupted.shape == images.shape and corrupted.dtype == tf.float32
    assert region.shape == (6, 48, 48, 1) and region.dtype == tf.float32
    changed = np.any(corrupted.numpy() != images.numpy(), axis=-1)
    inside = region.numpy()[..., 0]
    assert set(np.unique(inside)) <= {0.0, 1.0}
    assert not np.any(changed & (inside == 0))
    assert np.all(inside.sum(axis=(1, 2)) >= 1)
    assert np.all(inside.mean(axis=(1, 2)) < 0.5)
    assert corrupted.numpy().min() >= 0.0 and corrupted.numpy().max() <= 1.0


@pytest.mark.parametrize("model", ["stain", "scratch"])
def test_one_grey_level_on_every_channel(model: str) -> None:
    corrupted, region = corrupt(_images(5, 64, 3), SEED, model)
    for image, inside in zip(corrupted.numpy(), region.numpy()[..., 0] > 0, strict=True):
        painted = image[inside]
        assert np.all(painted == painted[0, 0])


def test_gaussian_and_none() -> None:
    images = _images(4, 32, 3)
    noisy, region = corrupt(images, SEED, "gaussian")
    assert np.all(region.numpy() == 1.0) and region.shape == (4, 32, 32, 1)
    assert noisy.numpy().min() >= 0.0 and noisy.numpy().max() <= 1.0
    assert np.mean(noisy.numpy() != images.numpy()) > 0.9
    same, nothing = corrupt(images, SEED, "none")
    np.testing.assert_array_equal(same.numpy(), images.numpy())
    assert np.all(nothing.numpy() == 0.0)


def test_gaussian_sigma_is_one_of_the_paper_values() -> None:
    rng = np.random.default_rng(3)
    flat = tf.fill([40, 64, 64, 1], 0.5)
    noisy, _ = corrupt(flat, SEED, "gaussian")
    measured = np.std(noisy.numpy() - 0.5, axis=(1, 2, 3))
    clipped = [np.std(np.clip(rng.normal(0.0, s, 200_000), -0.5, 0.5)) for s in GAUSSIAN_SIGMAS]
    nearest = np.argmin(np.abs(measured[:, None] - np.array(clipped)[None]), axis=1)
    np.testing.assert_allclose(measured, np.array(clipped)[nearest], rtol=0.05)
    assert len(set(nearest.tolist())) == len(GAUSSIAN_SIGMAS)


@pytest.mark.parametrize("model", ALL_MODELS)
def test_same_seed_same_corruption(model: str) -> None:
    images = _images(3, 32, 1)
    first, first_region = corrupt(images, SEED, model)
    again, again_region = corrupt(images, SEED, model)
    other, _ = corrupt(images, SEED + 1, model)
    np.testing.assert_array_equal(first.numpy(), again.numpy())
    np.testing.assert_array_equal(first_region.numpy(), again_region.numpy())
    if model != "none":
        assert np.any(first.numpy() != other.numpy())


@pytest.mark.parametrize("model", ALL_MODELS)
def test_runs_in_tf_data_with_unknown_batch_and_no_python_ops(model: str) -> None:
    images = _images(5, 32, 3)
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(2)
    seeds = tf.data.Dataset.random(seed=1).batch(2)
    pairs = tf.data.Dataset.zip(dataset, seeds).map(lambda x, s: corrupt(x, s, model))
    assert pairs.element_spec[0].shape.as_list() == [None, 32, 32, 3]
    sizes = [int(x.shape[0]) for x, _ in pairs]
    assert sizes == [2, 2, 1]
    graph_fn = tf.function(lambda x, s: corrupt(x, s, model))
    concrete = graph_fn.get_concrete_function(
        tf.TensorSpec([None, None, None, 3], tf.float32), tf.TensorSpec([2], tf.int64)
    )
    op_types = {op.type for op in concrete.graph.get_operations()}
    assert not op_types & {"PyFunc", "PyFuncStateless", "EagerPyFunc"}


def test_every_model_aesc_accepts_is_a_corruption_or_a_mixture() -> None:
    assert set(CORRUPTION_MODELS) == set(CORRUPTIONS) | set(MIXTURES)
    assert len(CORRUPTION_MODELS) == 7 and "stain" in CORRUPTION_MODELS
    for parts in MIXTURES.values():
        assert all(name in CORRUPTIONS for name, _ in parts)


def test_unknown_model_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown corruption model 'blur'"):
        corrupt(_images(1, 32, 1), SEED, "blur")


def test_star_mask_matches_a_polygon_of_the_spline() -> None:
    """Reference: the same closed Catmull-Rom curve as a cubic Hermite spline (tangents
    (r[k+1] - r[k-1]) / 2), sampled densely and filled with a polygon test."""
    size = 128
    shapes = stain_shapes(tf.constant([4, 2]), 6, size, size)
    ours = star_mask(shapes, size, size).numpy()
    rows, cols = np.mgrid[:size, :size]
    pixels = np.stack([cols.ravel(), rows.ravel()], axis=1).astype(np.float64)
    step = 2 * math.pi / STAIN_POINTS
    for index in range(6):
        radii = shapes.radii[index].numpy().astype(np.float64)
        angles = shapes.first_angle[index].numpy() + step * np.arange(STAIN_POINTS + 1)
        closed = np.append(radii, radii[0])
        slopes = (np.roll(closed, -1) - np.roll(closed, 1)) / (2 * step)
        slopes[-1] = slopes[0]
        spline = CubicHermiteSpline(angles, closed, slopes)
        theta = np.linspace(angles[0], angles[-1], 4000)
        row0, col0 = shapes.centre[index].numpy()
        outline = np.stack(
            [col0 + spline(theta) * np.cos(theta), row0 + spline(theta) * np.sin(theta)], axis=1
        )
        reference = Polygon(outline).contains_points(pixels).reshape(size, size)
        disagree = np.sum(ours[index] != reference)
        assert disagree <= max(2, 0.01 * reference.sum()), (index, disagree)


def test_stain_sizes_stay_within_the_paper_range() -> None:
    size = 256
    shapes = stain_shapes(tf.constant([9, 9]), 200, size, size)
    masks = star_mask(shapes, size, size).numpy()
    rows, cols = np.mgrid[:size, :size]
    low, high = (fraction * size for fraction in STAIN_SEMI_AXES)
    reach = high * (1 + STAIN_JITTER) * 1.1
    equivalent = []
    for mask, (row0, col0) in zip(masks, shapes.centre.numpy(), strict=True):
        distance = np.hypot(rows[mask] - row0, cols[mask] - col0)
        assert distance.max() <= reach
        assert mask.sum() >= math.pi * (low * (1 - STAIN_JITTER)) ** 2 * 0.5
        assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
        equivalent.append(math.sqrt(mask.sum() / math.pi))
    assert min(equivalent) < 0.03 * size and max(equivalent) > 0.09 * size


def test_paint_discs_matches_brute_force() -> None:
    rng = np.random.default_rng(5)
    height, width = 40, 56
    centres = rng.uniform(-3, 60, (3, 12, 2)).astype(np.float32)
    radii = rng.uniform(0.3, 4.0, (3, 12)).astype(np.float32)
    ours = paint_discs(tf.constant(centres), tf.constant(radii), height, width).numpy()
    rows, cols = np.mgrid[:height, :width]
    expected = np.zeros((3, height, width), np.int32)
    for b in range(3):
        for k in range(12):
            inside = (rows - centres[b, k, 0]) ** 2 + (cols - centres[b, k, 1]) ** 2
            expected[b][inside <= radii[b, k] ** 2] = k + 1
    np.testing.assert_array_equal(ours, expected)


def test_scratch_follows_its_curve_from_end_to_end() -> None:
    size = 96
    images = _images(8, size, 1)
    seed = tf.constant([2, 8])
    _, region = corrupt(images, seed, "scratch")
    path_seed = tf.random.experimental.stateless_split(seed, num=3)[0]
    paths = scratch_paths(path_seed, 8, size, size).numpy()
    for mask, path in zip(region.numpy()[..., 0] > 0, paths, strict=True):
        start, end = np.round(path[0]).astype(int), np.round(path[-1]).astype(int)
        assert mask[tuple(start)] and mask[tuple(end)]
        np.testing.assert_allclose(path[[0, -1]], np.round(path[[0, -1]]), atol=1e-4)
        distance, _ = cKDTree(path).query(np.argwhere(mask))
        assert distance.max() <= SCRATCH_HALF_WIDTH[1] + 1e-4
        assert np.max(np.linalg.norm(np.diff(path, axis=0), axis=1)) < 0.5


def test_drops_count_and_sizes_are_plausible() -> None:
    size = 512
    flat = tf.fill([12, size, size, 1], 0.5)
    corrupted, region = corrupt(flat, SEED, "drops")
    largest = math.pi * (DROPS_DIAMETER[1] * size / 2 + 0.5) ** 2
    smallest = math.pi * (DROPS_DIAMETER[0] * size / 2 - 0.5) ** 2
    greys_seen = []
    for image, inside in zip(corrupted.numpy()[..., 0], region.numpy()[..., 0] > 0, strict=True):
        assert smallest <= inside.sum() <= DROPS_COUNT * largest
        _, components = ndimage.label(inside)
        assert 1 <= components <= DROPS_COUNT
        greys_seen.append(len(np.unique(image[inside])))
    assert max(greys_seen) <= DROPS_COUNT and np.mean(greys_seen) >= 4


def test_mixture_frequencies() -> None:
    weights = tuple(weight for _, weight in MIXTURES["mix1"])
    choice = choose_components(tf.constant([1, 1]), 500, weights).numpy()
    frequencies = np.bincount(choice, minlength=3) / 500
    np.testing.assert_allclose(frequencies, [0.6, 0.2, 0.2], atol=0.06)
    _, region = corrupt(tf.fill([500, 16, 16, 1], 0.5), SEED, "mix2")
    whole_image = np.all(region.numpy() == 1.0, axis=(1, 2, 3))
    assert abs(whole_image.mean() - 0.4) < 0.07
