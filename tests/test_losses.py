"""SDC-AE objectives against hand-computed values, and their guards."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from reconad.losses import contrast_loss, restore_loss, sdc_loss


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
    assert value.shape == (1,)
    assert value[0] == pytest.approx(lam * NORMAL + (1 - lam) * CORRUPTED, rel=1e-5)


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_contrast_loss_hand_values(lam: float) -> None:
    value = contrast_loss(X, MASK, X_HAT, PRED, lam).numpy()
    assert value[0] == pytest.approx(lam * NORMAL - (1 - lam) * AMPLIFIED, rel=1e-5)


def test_losses_are_per_image() -> None:
    x = tf.concat([X, X], axis=0)
    mask = tf.concat([MASK, tf.zeros_like(MASK)], axis=0)
    pred = tf.concat([PRED, X], axis=0)
    x_hat = tf.concat([X_HAT, X_HAT], axis=0)
    values = restore_loss(x, mask, x_hat, pred, 0.5).numpy()
    assert values.shape == (2,)
    assert values[0] == pytest.approx(0.5 * NORMAL + 0.5 * CORRUPTED, rel=1e-5)
    assert values[1] == pytest.approx(0.0, abs=1e-5)  # perfect reconstruction


def _value_and_gradient(loss_fn, mask: tf.Tensor, x_hat: tf.Tensor, pred: tf.Tensor):
    pred = tf.Variable(pred)
    with tf.GradientTape() as tape:
        value = loss_fn(X, mask, x_hat, pred, 0.5)
    return value.numpy(), tape.gradient(value, pred).numpy()


@pytest.mark.parametrize("loss_fn", [restore_loss, contrast_loss])
@pytest.mark.parametrize(
    "mask", [tf.zeros_like(MASK), tf.ones_like(MASK)], ids=["empty-mask", "full-mask"]
)
def test_degenerate_masks_give_finite_values_and_gradients(loss_fn, mask: tf.Tensor) -> None:
    value, gradient = _value_and_gradient(loss_fn, mask, X_HAT, PRED)
    assert np.isfinite(value).all() and np.isfinite(gradient).all()


@pytest.mark.parametrize("loss_fn", [restore_loss, contrast_loss])
def test_perfect_reconstruction_and_unchanged_input_give_no_nan(loss_fn) -> None:
    value, gradient = _value_and_gradient(loss_fn, MASK, X, X)
    assert value[0] == pytest.approx(0.0, abs=1e-5)
    assert np.isfinite(gradient).all()


def test_empty_mask_restore_is_the_normal_term_only() -> None:
    # M = 0: Mbar = 1, ||E||_2 = sqrt(0.09 + 0.16) = 0.5, ||Mbar||_1 = 4 -> 0.5 * 0.5 / 4
    value = restore_loss(X, tf.zeros_like(MASK), X_HAT, PRED, 0.5).numpy()
    assert value[0] == pytest.approx(0.5 * 0.5 / 4, rel=1e-5)


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


def test_sdc_loss_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="objective"):
        sdc_loss("segment", 0.5)
    with pytest.raises(ValueError, match="lambda"):
        sdc_loss("restore", 1.5)
