"""SDC-AE objectives against hand-computed values, their direction, and their guards.

Both objectives use the plain (not squared) L2 norm of a weighted error, divided by the
L1 norm of its weight (src/reconad/losses.py), so every expected value below is worked
out by hand from those two norms.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from reconad.losses import EPSILON, contrast_loss, restore_loss, sdc_loss


def _image(values: list[float]) -> tf.Tensor:
    """Four pixel values as one (1, 2, 2, 1) image."""
    return tf.constant(np.array(values, np.float32).reshape(1, 2, 2, 1))


# One image of four pixels:
#   x      = [0.2, 0.4, 0.6, 0.8]
#   F(x^)  = [0.5, 0.4, 0.2, 0.8]  -> E = [0.3, 0, -0.4, 0]
#   M      = [1, 0, 0.5, 0]        -> Mbar = [0, 1, 0.5, 1], ||Mbar||_1 = 2.5, ||M||_1 = 1.5
#   x_hat  = [0.9, 0.4, 0.5, 0.8]  -> D = [0.7, 0, 0.1, 0],  ||D||_1 = 0.8
X = _image([0.2, 0.4, 0.6, 0.8])
PRED = _image([0.5, 0.4, 0.2, 0.8])
MASK = _image([1.0, 0.0, 0.5, 0.0])
X_HAT = _image([0.9, 0.4, 0.5, 0.8])
# ||Mbar E||_2 = sqrt((0.5 * -0.4)^2) = 0.2            -> normal term 0.2 / 2.5 = 0.08
NORMAL = 0.2 / 2.5
# ||M E||_2 = sqrt(0.3^2 + (0.5 * -0.4)^2) = sqrt(0.13) -> corrupted term sqrt(0.13) / 1.5
CORRUPTED = math.sqrt(0.13) / 1.5
# ||D E||_2 = sqrt((0.7 * 0.3)^2 + (0.1 * -0.4)^2) = sqrt(0.0457) -> sqrt(0.0457) / 0.8
AMPLIFIED = math.sqrt(0.0457) / 0.8


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.5, 1.0])
def test_restore_loss_hand_values(lam: float) -> None:
    value = restore_loss(X, MASK, X_HAT, PRED, lam).numpy()
    assert value.shape == (1,) and value.dtype == np.float32
    assert value[0] == pytest.approx(lam * NORMAL + (1 - lam) * CORRUPTED, rel=1e-5)


@pytest.mark.parametrize("lam", [0.0, 0.5, 0.98, 1.0])
def test_contrast_loss_hand_values(lam: float) -> None:
    value = contrast_loss(X, MASK, X_HAT, PRED, lam).numpy()
    assert value.shape == (1,) and value.dtype == np.float32
    assert value[0] == pytest.approx(lam * NORMAL - (1 - lam) * AMPLIFIED, rel=1e-5)


def test_hand_values_with_three_channels_and_a_constant_error() -> None:
    """4 x 4 RGB image, left half corrupted, error 0.1 everywhere.

    Every term is ``||w E||_2 / ||w||_1`` with a constant weight ``w`` on ``n`` values:
    ``w * 0.1 * sqrt(n) / (w * n) = 0.1 / sqrt(n)``, ``n = 8 pixels x 3 channels = 24``,
    whatever ``w`` is (D = 0.5 here). A squared norm would give ``0.01 * n / n = 0.01``
    and a norm without the L1 division ``0.1 * sqrt(24)``.
    """
    x = np.full((1, 4, 4, 3), 0.3, np.float32)
    mask = np.zeros_like(x)
    mask[:, :, :2] = 1.0
    x_hat = x + 0.5 * mask
    pred = x + 0.1
    term = 0.1 / math.sqrt(24)
    restored = restore_loss(x, mask, x_hat, pred, 0.3).numpy()
    contrasted = contrast_loss(x, mask, x_hat, pred, 0.3).numpy()
    assert restored[0] == pytest.approx(0.3 * term + 0.7 * term, rel=1e-5)
    assert contrasted[0] == pytest.approx(0.3 * term - 0.7 * term, rel=1e-5)


def test_losses_are_per_image() -> None:
    x = tf.concat([X, X], axis=0)
    mask = tf.concat([MASK, tf.zeros_like(MASK)], axis=0)
    pred = tf.concat([PRED, X], axis=0)
    x_hat = tf.concat([X_HAT, X_HAT], axis=0)
    values = restore_loss(x, mask, x_hat, pred, 0.5).numpy()
    assert values.shape == (2,)
    assert values[0] == pytest.approx(0.5 * NORMAL + 0.5 * CORRUPTED, rel=1e-5)
    assert values[1] == pytest.approx(0.0, abs=1e-5)  # perfect reconstruction
    contrasted = contrast_loss(x, mask, x_hat, pred, 0.5).numpy()
    assert contrasted[0] == pytest.approx(0.5 * NORMAL - 0.5 * AMPLIFIED, rel=1e-5)
    assert contrasted[1] == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("loss_fn", [restore_loss, contrast_loss])
@pytest.mark.parametrize("scale", [0.5, 2.0, 3.0])
def test_losses_grow_linearly_with_the_error(loss_fn, scale: float) -> None:
    """The plain L2 norm is homogeneous of degree 1: k E gives k times the loss (a squared
    norm would give k^2 times)."""
    scaled_pred = X + scale * (PRED - X)
    base = loss_fn(X, MASK, X_HAT, PRED, 0.4).numpy()[0]
    assert loss_fn(X, MASK, X_HAT, scaled_pred, 0.4).numpy()[0] == pytest.approx(
        scale * base, rel=1e-5
    )


def _with_error_at_pixel_0(error: float) -> tf.Tensor:
    """PRED with E at pixel 0 (M = 1, D = 0.7: corrupted, not normal) set to ``error``."""
    return _image([0.2 + error, 0.4, 0.2, 0.8])


@pytest.mark.parametrize("lam", [0.0, 0.5, 0.98])
def test_contrast_decreases_and_restore_increases_with_error_inside_the_corruption(
    lam: float,
) -> None:
    errors = [0.0, 0.1, 0.2, 0.4, 0.6]
    contrast = [contrast_loss(X, MASK, X_HAT, _with_error_at_pixel_0(e), lam) for e in errors]
    restore = [restore_loss(X, MASK, X_HAT, _with_error_at_pixel_0(e), lam) for e in errors]
    contrast = np.array([float(v[0]) for v in contrast])
    restore = np.array([float(v[0]) for v in restore])
    if lam < 1.0:
        assert np.all(np.diff(contrast) < 0), contrast
        assert np.all(np.diff(restore) > 0), restore
    # Hand value at E_0 = 0.6: ||D E|| = sqrt(0.42^2 + 0.04^2), ||M E|| = sqrt(0.36 + 0.04)
    amplified = math.sqrt(0.42**2 + 0.04**2) / 0.8
    assert contrast[-1] == pytest.approx(lam * NORMAL - (1 - lam) * amplified, rel=1e-5)
    corrupted = math.sqrt(0.36 + 0.04) / 1.5
    assert restore[-1] == pytest.approx(lam * NORMAL + (1 - lam) * corrupted, rel=1e-5)


@pytest.mark.parametrize("loss_fn", [restore_loss, contrast_loss])
def test_both_objectives_increase_with_error_on_normal_pixels(loss_fn) -> None:
    """Pixel 1 has M = 0 and D = 0: only the normal term sees it, with weight lam."""
    values = [
        float(loss_fn(X, MASK, X_HAT, _image([0.5, 0.4 + e, 0.2, 0.8]), 0.5)[0])
        for e in (0.0, 0.1, 0.3)
    ]
    assert values[0] < values[1] < values[2]
    # E_1 = 0.3: ||Mbar E|| = sqrt(0.3^2 + 0.2^2), ||Mbar||_1 = 2.5
    normal = math.sqrt(0.09 + 0.04) / 2.5
    other = CORRUPTED if loss_fn is restore_loss else -AMPLIFIED
    assert values[2] == pytest.approx(0.5 * normal + 0.5 * other, rel=1e-5)


def _value_and_gradient(loss_fn, mask: tf.Tensor, x_hat: tf.Tensor, pred: tf.Tensor, lam=0.5):
    pred = tf.Variable(pred)
    with tf.GradientTape() as tape:
        value = loss_fn(X, mask, x_hat, pred, lam)
    return value.numpy(), tape.gradient(value, pred).numpy()


def test_gradient_pushes_contrast_away_and_restore_back_inside_the_corruption() -> None:
    """At pixel 0 (E = +0.3, Mbar = 0) a gradient step raises the error for contrast and
    lowers it for restore; the hand-derived derivative of the contrast term is
    ``-(1 - lam) D^2 E / (||D E||_2 ||D||_1)``."""
    _, contrast_grad = _value_and_gradient(contrast_loss, MASK, X_HAT, PRED)
    _, restore_grad = _value_and_gradient(restore_loss, MASK, X_HAT, PRED)
    assert contrast_grad[0, 0, 0, 0] < 0.0  # descent increases F(x_hat) - x > 0
    assert restore_grad[0, 0, 0, 0] > 0.0
    expected = -0.5 * 0.7**2 * 0.3 / (math.sqrt(0.0457) * 0.8)
    assert contrast_grad[0, 0, 0, 0] == pytest.approx(expected, rel=1e-4)
    # restore: 0.5 * M^2 E / (||M E|| ||M||_1) at pixel 0 (the normal term has Mbar = 0)
    assert restore_grad[0, 0, 0, 0] == pytest.approx(0.5 * 0.3 / (math.sqrt(0.13) * 1.5), rel=1e-4)


@pytest.mark.parametrize("loss_fn", [restore_loss, contrast_loss])
@pytest.mark.parametrize(
    "mask", [tf.zeros_like(MASK), tf.ones_like(MASK)], ids=["empty-mask", "full-mask"]
)
def test_degenerate_masks_give_finite_values_and_gradients(loss_fn, mask: tf.Tensor) -> None:
    value, gradient = _value_and_gradient(loss_fn, mask, X_HAT, PRED)
    assert np.isfinite(value).all() and np.isfinite(gradient).all()


def test_full_mask_restore_is_the_corrupted_term_only() -> None:
    # M = 1: ||M E||_2 = ||E||_2 = 0.5, ||M||_1 = 4; the normal term's weight is 0
    value = restore_loss(X, tf.ones_like(MASK), X_HAT, PRED, 0.5).numpy()
    assert value[0] == pytest.approx(0.5 * 0.5 / 4, rel=1e-5)


@pytest.mark.parametrize("loss_fn", [restore_loss, contrast_loss])
def test_perfect_reconstruction_and_unchanged_input_give_no_nan(loss_fn) -> None:
    value, gradient = _value_and_gradient(loss_fn, MASK, X, X)
    assert value[0] == pytest.approx(0.0, abs=1e-5)
    assert np.isfinite(gradient).all()


def test_empty_mask_restore_is_the_normal_term_only() -> None:
    # M = 0: Mbar = 1, ||E||_2 = sqrt(0.09 + 0.16) = 0.5, ||Mbar||_1 = 4 -> 0.5 * 0.5 / 4
    value = restore_loss(X, tf.zeros_like(MASK), X_HAT, PRED, 0.5).numpy()
    assert value[0] == pytest.approx(0.5 * 0.5 / 4, rel=1e-5)


def test_unchanged_input_makes_the_contrast_term_zero_not_nan() -> None:
    # x_hat = x: D = 0, its L1 norm floors at EPSILON and the term is 0
    assert EPSILON > 0
    value = contrast_loss(X, MASK, X, PRED, 0.5).numpy()
    assert value[0] == pytest.approx(0.5 * NORMAL, rel=1e-5)


def test_sdc_loss_unpacks_the_target() -> None:
    y_true = tf.concat([X, MASK, X_HAT], axis=-1)
    restore = sdc_loss("restore", 0.5)
    contrast = sdc_loss("contrast", 0.5)
    assert restore.__name__ == "restore_loss" and contrast.__name__ == "contrast_loss"
    restored, contrasted = restore(y_true, PRED).numpy(), contrast(y_true, PRED).numpy()
    assert restored[0] == pytest.approx(0.5 * NORMAL + 0.5 * CORRUPTED, rel=1e-5)
    assert contrasted[0] == pytest.approx(0.5 * NORMAL - 0.5 * AMPLIFIED, rel=1e-5)


def test_sdc_loss_with_three_channels_matches_the_plain_function() -> None:
    rng = np.random.default_rng(0)
    x, mask, x_hat, pred = (rng.random((2, 4, 4, 3)).astype(np.float32) for _ in range(4))
    y_true = np.concatenate([x, mask, x_hat], axis=-1)
    expected = contrast_loss(x, mask, x_hat, pred, 0.3).numpy()
    np.testing.assert_allclose(sdc_loss("contrast", 0.3)(y_true, pred).numpy(), expected)


def test_float16_predictions_are_cast() -> None:
    value = restore_loss(X, MASK, X_HAT, tf.cast(PRED, tf.float16), 0.5).numpy()
    assert value.dtype == np.float32
    assert value[0] == pytest.approx(0.5 * NORMAL + 0.5 * CORRUPTED, rel=1e-3)


def test_sdc_loss_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="objective"):
        sdc_loss("segment", 0.5)
    with pytest.raises(ValueError, match="lambda"):
        sdc_loss("restore", 1.5)
    with pytest.raises(ValueError, match="lambda"):
        contrast_loss(X, MASK, X_HAT, PRED, -0.1)
