"""SDC-AE patch corruption and its field helpers: shapes, masks, guarantees, purity, and the
resolution of the ``*_px`` settings into the op's pixel parameters."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import yaml
from pydantic import ValidationError
from scipy import ndimage

from reconad.config import REFERENCE_SIZE, apply_overrides, params_from_dict
from reconad.corrupt.elastic import MIN_CHANGE, ElasticConfig, ElasticOp, elastic_patch_corruption
from reconad.corrupt.fields import (
    UNIT_FIELD_RMS,
    bilinear_warp,
    gaussian_blur,
    gaussian_kernel,
    smooth_random_field,
)
from reconad.errors import ConfigError

SEED = tf.constant([7, 11], tf.int64)
REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def _raw() -> dict:
    return yaml.safe_load(REPO_PARAMS.read_text(encoding="utf-8"))


def _repo_config(**overrides: object) -> ElasticConfig:
    """``sdc_ae.corruption`` of the repository's params.yaml, ``overrides`` applied."""
    raw = _raw()
    dotted = {f"sdc_ae.corruption.{key}": value for key, value in overrides.items()}
    return params_from_dict(apply_overrides(raw, dotted, "test", None)).family("sdc_ae").corruption


REPO = _repo_config()


def _op(size: int = 32, **overrides: object) -> ElasticOp:
    """The repository's corruption for ``size`` px images, op fields (pixels) overridden."""
    return ElasticOp.at_size(REPO, size)._replace(**overrides)


def _textures(batch: int, height: int, width: int, channels: int, seed: int = 0) -> np.ndarray:
    """Smooth random images in [0, 1]: enough structure for warps to change them."""
    rng = np.random.default_rng(seed)
    noise = rng.random((batch, height, width, channels))
    smooth = ndimage.gaussian_filter(noise, sigma=(0, 1.5, 1.5, 0))
    low, high = smooth.min(), smooth.max()
    return ((smooth - low) / (high - low)).astype(np.float32)


def _corrupt(images: np.ndarray, seed: tf.Tensor = SEED, **overrides: object) -> tuple:
    """Corrupt with the repository's op at the images' side, ``overrides`` in pixels."""
    op = _op(max(images.shape[1:3]), **overrides)
    x_hat, x, mask = elastic_patch_corruption(tf.constant(images), seed, op)
    return x_hat.numpy(), x.numpy(), mask.numpy()


# --------------------------------------------------------------------------- config


def test_repository_config_at_256_px_is_its_own_pixels() -> None:
    op = ElasticOp.at_size(REPO, REFERENCE_SIZE)
    assert (op.patches_min, op.patches_max) == (REPO.patches_min, REPO.patches_max)
    assert (op.size_min, op.size_max) == (REPO.size_min_px, REPO.size_max_px)
    assert (op.sigma, op.mask_sigma) == (REPO.sigma_px, REPO.mask_sigma_px)
    assert op.modes == tuple(REPO.modes) and op.brightness == REPO.brightness
    assert op.alpha == pytest.approx(REPO.displacement_px * REPO.sigma_px / UNIT_FIELD_RMS)
    assert op.mask_alpha == pytest.approx(
        REPO.mask_displacement_px * REPO.mask_sigma_px / UNIT_FIELD_RMS
    )


@pytest.mark.parametrize("size", [64, 128, 512])
def test_at_size_rescales_sizes_and_sigmas_with_the_image_side(size: int) -> None:
    config = _repo_config(
        size_min_px=16.0,
        size_max_px=64.0,
        sigma_px=8.0,
        mask_sigma_px=6.0,
        displacement_px=4.0,
        mask_displacement_px=2.0,
        brightness=0.1,
    )
    op = ElasticOp.at_size(config, size)
    scale = size / 256
    assert op.size_min == pytest.approx(16.0 * scale) and op.size_max == pytest.approx(64.0 * scale)
    assert op.sigma == pytest.approx(8.0 * scale)
    assert op.mask_sigma == pytest.approx(6.0 * scale)
    # alpha = RMS displacement (pixels of this image) * sigma / UNIT_FIELD_RMS: both factors
    # scale with the side, so alpha scales with its square.
    assert op.alpha == pytest.approx(4.0 * scale * 8.0 * scale / UNIT_FIELD_RMS, rel=1e-9)
    assert op.mask_alpha == pytest.approx(2.0 * scale * 6.0 * scale / UNIT_FIELD_RMS, rel=1e-9)
    assert op.alpha == pytest.approx(ElasticOp.at_size(config, 256).alpha * scale**2)
    assert (op.patches_min, op.patches_max, op.brightness) == (1, 4, 0.1)
    assert op.modes == tuple(config.modes)


def test_unit_field_rms_is_the_smoothed_uniform_noise_rms() -> None:
    # std of U(-1, 1) is 1 / sqrt(3); a unit 2-D Gaussian keeps 1 / (2 sqrt(pi)) of it
    assert math.isclose(UNIT_FIELD_RMS, (1 / math.sqrt(3)) / (2 * math.sqrt(math.pi)))


@pytest.mark.parametrize(("size", "which"), [(128, "elastic"), (256, "elastic"), (128, "mask")])
def test_generated_field_has_the_configured_rms_displacement(size: int, which: str) -> None:
    """A field drawn with the op's (sigma, alpha) moves pixels by ``*_displacement_px``
    rescaled to the image side, RMS over all pixels and both components."""
    op = ElasticOp.at_size(REPO, size)
    if which == "elastic":
        sigma, alpha, target_px = op.sigma, op.alpha, REPO.displacement_px
    else:
        sigma, alpha, target_px = op.mask_sigma, op.mask_alpha, REPO.mask_displacement_px
    field = smooth_random_field(
        tf.constant([3, 9], tf.int64),
        tf.constant(4),
        tf.constant(size),
        tf.constant(size),
        sigma,
        alpha,
    ).numpy()
    rms = float(np.sqrt(np.mean(field**2)))
    assert rms == pytest.approx(target_px * size / 256, rel=0.1)


def test_config_errors_name_the_sdc_ae_key() -> None:
    raw = apply_overrides(_raw(), {"sdc_ae.corruption.size_min_px": 90.0}, "test", None)
    with pytest.raises(
        ConfigError, match=r"sdc_ae\.corruption\.size_min_px: must be <= size_max_px"
    ):
        params_from_dict(raw).family("sdc_ae")
    raw = apply_overrides(_raw(), {"sdc_ae.corruption.patches_min": 5}, "test", None)
    with pytest.raises(ConfigError, match=r"sdc_ae\.corruption\.patches_min"):
        params_from_dict(raw).family("sdc_ae")
    raw = apply_overrides(_raw(), {"sdc_ae.corruption.displacement_px": 0.0}, "test", None)
    with pytest.raises(ConfigError, match=r"sdc_ae\.corruption\.displacement_px"):
        params_from_dict(raw).family("sdc_ae")


def test_empty_modes_are_rejected_when_params_load() -> None:
    with pytest.raises(ValidationError, match="modes"):
        ElasticConfig.model_validate({**REPO.model_dump(), "modes": []})
    raw = apply_overrides(_raw(), {"sdc_ae.corruption.modes": []}, "test", None)
    with pytest.raises(ConfigError, match=r"sdc_ae\.corruption\.modes"):
        params_from_dict(raw).family("sdc_ae")
    with pytest.raises(ConfigError, match=r"sdc_ae\.corruption\.modes"):
        elastic_patch_corruption(tf.zeros((1, 8, 8, 1)), SEED, _op(modes=()))


# ---------------------------------------------------------------------------- fields


def test_gaussian_blur_matches_scipy_reflect() -> None:
    images = _textures(2, 20, 24, 3)
    blurred = gaussian_blur(tf.constant(images), 1.5).numpy()
    expected = ndimage.gaussian_filter(images, sigma=(0, 1.5, 1.5, 0), mode="reflect")
    np.testing.assert_allclose(blurred, expected, atol=1e-5)


def test_long_kernels_at_the_paper_size_blur_like_scipy() -> None:
    """sigma 32 on a 512 px plane: a 257-tap kernel, for which TensorFlow's CPU Conv2D
    (oneDNN) requested 8 GiB and aborted the process."""
    images = _textures(2, 512, 512, 1)
    blurred = gaussian_blur(tf.constant(images), 32.0).numpy()
    expected = ndimage.gaussian_filter(images, sigma=(0, 32.0, 32.0, 0), mode="reflect")
    np.testing.assert_allclose(blurred, expected, atol=1e-5)


def test_gaussian_kernel_is_normalised_and_rejects_bad_sigma() -> None:
    kernel = gaussian_kernel(2.0).numpy()
    assert kernel.shape == (2 * 8 + 1,)
    assert kernel.sum() == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_kernel(0.0)


def test_bilinear_warp_matches_scipy_map_coordinates() -> None:
    images = _textures(1, 12, 10, 2)
    rng = np.random.default_rng(3)
    flow = rng.uniform(-3, 3, size=(1, 12, 10, 2)).astype(np.float32)
    warped = bilinear_warp(tf.constant(images), tf.constant(flow)).numpy()
    rows, cols = np.meshgrid(np.arange(12), np.arange(10), indexing="ij")
    coords = [np.clip(rows + flow[0, ..., 0], 0, 11), np.clip(cols + flow[0, ..., 1], 0, 9)]
    for channel in range(2):
        expected = ndimage.map_coordinates(images[0, ..., channel], coords, order=1)
        np.testing.assert_allclose(warped[0, ..., channel], expected, atol=1e-5)


def test_bilinear_warp_with_integer_flow_is_exact_translation() -> None:
    images = _textures(1, 8, 8, 1)
    flow = np.zeros((1, 8, 8, 2), np.float32)
    flow[..., 0], flow[..., 1] = 2.0, -1.0
    warped = bilinear_warp(tf.constant(images), tf.constant(flow)).numpy()
    np.testing.assert_array_equal(warped[0, :6, 1:, 0], images[0, 2:, :7, 0])


def test_smooth_random_field_scale_and_determinism() -> None:
    args = (tf.constant(64), tf.constant(64), 2.0, 10.0)
    field = smooth_random_field(SEED, tf.constant(4), *args).numpy()
    again = smooth_random_field(SEED, tf.constant(4), *args).numpy()
    assert field.shape == (4, 64, 64, 2)
    np.testing.assert_array_equal(field, again)
    # alpha * std(U(-1,1)) * sqrt(sum k^2), sum k^2 ~ 1 / (4 pi sigma^2): 10 * 0.577 * 0.141
    expected_rms = 10.0 * np.sqrt(1.0 / 3.0) / (2.0 * np.sqrt(np.pi) * 2.0)
    assert np.sqrt(np.mean(field**2)) == pytest.approx(expected_rms, rel=0.15)


# ------------------------------------------------------------------------ corruption


@pytest.mark.parametrize(("height", "width", "channels"), [(32, 32, 1), (48, 64, 3), (40, 24, 3)])
def test_shapes_dtypes_and_ranges(height: int, width: int, channels: int) -> None:
    images = _textures(3, height, width, channels)
    x_hat, x, mask = _corrupt(images)
    for array in (x_hat, x, mask):
        assert array.shape == (3, height, width, channels)
        assert array.dtype == np.float32
    np.testing.assert_array_equal(x, images)
    assert mask.min() >= 0.0 and mask.max() <= 1.0
    assert x_hat.min() >= 0.0 and x_hat.max() <= 1.0
    np.testing.assert_array_equal(mask, np.repeat(mask[..., :1], channels, axis=-1))


def test_runs_in_tf_data_with_unknown_batch_size() -> None:
    cfg = _op(32)
    images = _textures(5, 32, 32, 1)
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(2).enumerate()
    dataset = dataset.map(
        lambda index, batch: elastic_patch_corruption(batch, tf.stack([index, 3]), cfg)
    )
    assert dataset.element_spec[0].shape.as_list() == [None, 32, 32, 1]
    sizes = [x_hat.shape[0] for x_hat, _, _ in dataset]
    assert sizes == [2, 2, 1]


def test_runs_with_unknown_height_and_width() -> None:
    cfg = _op(32)
    corrupt = tf.function(
        lambda images: elastic_patch_corruption(images, SEED, cfg),
        input_signature=[tf.TensorSpec([None, None, None, 1], tf.float32)],
    )
    for height, width in [(32, 32), (40, 56)]:
        x_hat, _, mask = corrupt(tf.constant(_textures(2, height, width, 1)))
        assert x_hat.shape == (2, height, width, 1) and mask.shape == (2, height, width, 1)


def test_mask_is_zero_outside_one_patch_and_x_hat_unchanged_there() -> None:
    images = _textures(8, 64, 64, 1)
    x_hat, x, mask = _corrupt(images, patches_min=1, patches_max=1, size_min=13.0, size_max=19.0)
    largest_side = 19
    for index in range(8):
        rows, cols = np.nonzero(mask[index, ..., 0])
        assert rows.size > 0
        assert rows.max() - rows.min() < largest_side and cols.max() - cols.min() < largest_side
        outside = mask[index] == 0
        np.testing.assert_array_equal(x_hat[index][outside], x[index][outside])


def test_mask_border_is_soft_and_smooth() -> None:
    images = _textures(8, 64, 64, 1)
    _, _, mask = _corrupt(images, patches_min=1, patches_max=1, size_min=22.0, size_max=26.0)
    mask = mask[..., 0]
    steps = np.maximum(np.abs(np.diff(mask, axis=1)).max(), np.abs(np.diff(mask, axis=2)).max())
    assert steps < 0.5  # a binary disk would jump by 1
    support = mask > 0
    soft = (mask > 0.02) & (mask < 0.98)
    assert soft.sum() > 0.2 * support.sum()
    assert (mask >= 0.999).any(axis=(1, 2)).all()  # every disk has a solid core


def test_patch_sides_are_pixels_whatever_the_crop_size() -> None:
    """Sides are drawn in pixels, not as a share of the crop: progressive training (growing
    crops) corrupts at one physical scale."""
    op = _op(64, patches_min=1, patches_max=1, size_min=12.0, size_max=12.0)
    for crop in (32, 64):
        images = tf.constant(_textures(6, crop, crop, 1))
        mask = elastic_patch_corruption(images, SEED, op)[2].numpy()[..., 0]
        for single in mask:
            rows, cols = np.nonzero(single)
            assert 6 <= rows.max() - rows.min() + 1 <= 12
            assert 6 <= cols.max() - cols.min() + 1 <= 12


def _radial_irregularity(mask: np.ndarray) -> float:
    """Mean spread of mask values on rings around the mask's centroid (0 for a disk)."""
    rows, cols = np.indices(mask.shape)
    weight = mask.sum()
    centre_row, centre_col = (rows * mask).sum() / weight, (cols * mask).sum() / weight
    ring = np.round(np.hypot(rows - centre_row, cols - centre_col)).astype(int)
    spreads = [mask[ring == r].std() for r in range(1, ring.max()) if (ring == r).sum() > 8]
    return float(np.mean(spreads))


def test_mask_distortion_makes_irregular_shapes() -> None:
    images = _textures(6, 64, 64, 1)
    common = {"patches_min": 1, "patches_max": 1, "size_min": 26.0, "size_max": 26.0}
    _, _, round_masks = _corrupt(images, mask_sigma=4.0, mask_alpha=0.5, **common)
    _, _, bent_masks = _corrupt(images, mask_sigma=4.0, mask_alpha=50.0, **common)
    round_score = np.mean([_radial_irregularity(m[..., 0]) for m in round_masks])
    bent_score = np.mean([_radial_irregularity(m[..., 0]) for m in bent_masks])
    assert bent_score > 3 * round_score
    np.testing.assert_raises(
        AssertionError, np.testing.assert_allclose, bent_masks[0], bent_masks[1]
    )


def _compiled(cfg: ElasticOp) -> tf.types.experimental.PolymorphicFunction:
    return tf.function(lambda images, seed: elastic_patch_corruption(images, seed, cfg))


def test_every_image_changes_for_200_seeds() -> None:
    flat = np.stack([np.full((32, 32, 1), value, np.float32) for value in (0.0, 0.5, 1.0)])
    images = tf.constant(np.concatenate([flat, _textures(3, 32, 32, 1)]))
    configs = [
        _op(32, size_min=0.3, size_max=1.6, patches_min=1, patches_max=2),
        _op(32, size_min=0.3, size_max=9.6, modes=("zeros", "swap")),
        _op(32, modes=("elastic", "swap"), brightness=0.05),
    ]
    smallest = np.inf
    for index, cfg in enumerate(configs):
        corrupt = _compiled(cfg)
        for seed in range(200 if index == 0 else 70):
            x_hat, x, mask = corrupt(images, tf.constant([seed, index], tf.int64))
            change = tf.reduce_sum(tf.abs(x_hat - x), axis=[1, 2, 3]).numpy()
            smallest = min(smallest, change.min())
            assert (tf.reduce_sum(mask, axis=[1, 2, 3]).numpy() > 0).all()
    assert smallest >= MIN_CHANGE


def test_flat_image_gets_the_fallback_brightness_shift() -> None:
    images = np.full((2, 32, 32, 1), 0.25, np.float32)
    x_hat, x, mask = _corrupt(images, modes=("elastic",))
    np.testing.assert_allclose(x_hat, x + 0.5 * mask, atol=1e-6)


def test_same_seed_same_output_different_seed_different_output() -> None:
    images = _textures(4, 32, 32, 3)
    first = _corrupt(images, tf.constant([1, 2], tf.int64), modes=("elastic", "swap"))
    again = _corrupt(images, tf.constant([1, 2], tf.int64), modes=("elastic", "swap"))
    other = _corrupt(images, tf.constant([1, 3], tf.int64), modes=("elastic", "swap"))
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[2], other[2])
    assert not np.array_equal(first[0], other[0])


def test_zeros_mode_blanks_the_patch_core() -> None:
    images = _textures(4, 32, 32, 1) * 0.5 + 0.5
    x_hat, _, mask = _corrupt(images, modes=("zeros",))
    core = mask == 1.0
    assert core.any()
    np.testing.assert_array_equal(x_hat[core], 0.0)


def test_swap_mode_copies_pixels_from_the_same_image() -> None:
    images = _textures(4, 32, 32, 1)
    x_hat, x, mask = _corrupt(images, modes=("swap",), patches_min=1, patches_max=1)
    for index in range(4):
        core = mask[index] == 1.0
        assert np.isin(x_hat[index][core], x[index]).all()


def test_brightness_shifts_the_replacement_within_its_range() -> None:
    images = np.full((4, 32, 32, 1), 0.5, np.float32)
    x_hat, _, mask = _corrupt(
        images, modes=("zeros",), brightness=0.2, patches_min=1, patches_max=1
    )
    core = mask == 1.0
    assert x_hat[core].min() >= 0.0 and x_hat[core].max() <= 0.2 + 1e-6


def test_graph_is_pure_tensorflow_and_stateless() -> None:
    cfg = _op(32, modes=("elastic", "zeros", "swap"), brightness=0.1)
    concrete = _compiled(cfg).get_concrete_function(
        tf.TensorSpec([None, None, None, 3], tf.float32), tf.TensorSpec([2], tf.int64)
    )
    op_types = {op.type for op in concrete.graph.get_operations()}
    assert not op_types & {"PyFunc", "PyFuncStateless", "EagerPyFunc"}
    stateful_random = {"RandomUniform", "RandomUniformInt", "RandomStandardNormal"}
    assert not op_types & stateful_random
    assert any(op.startswith("StatelessRandom") for op in op_types)
