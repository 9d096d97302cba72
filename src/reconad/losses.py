"""SDC-AE training objectives (methods.md §1; Bauer v2 eq. 1 and 2, v1 eq. 1 and 3).

With ``E = F(x_hat) - x``, ``Mbar = 1 - M`` and ``D = |x_hat - x|``, per image:

- ``restore``:  ``lam / ||Mbar||_1 * ||Mbar E||_2 + (1 - lam) / ||M||_1 * ||M E||_2``
- ``contrast``: ``lam / ||Mbar||_1 * ||Mbar E||_2 - (1 - lam) / ||D||_1 * ||D E||_2``

As in both papers and methods.md, ``||.||_2`` is the plain (not squared) L2 norm and each
term is normalised by the L1 norm of its weight tensor, so the loss is not an MSE: its
scale shrinks like ``1 / sqrt(pixels)``, which Adam does not mind.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

OBJECTIVES = ("restore", "contrast")

EPSILON = 1e-6
"""Floor of every L1 denominator: an empty mask makes its term 0, not NaN."""


def restore_loss(
    x: tf.Tensor, mask: tf.Tensor, x_hat: tf.Tensor, y_pred: tf.Tensor, lam: float
) -> tf.Tensor:
    """Objective ``restore``: reproduce normal pixels, restore corrupted ones.

    Args:
        x: clean images ``(B, H, W, C)``.
        mask: corruption mask ``M`` in [0, 1], ``(B, H, W, C)``.
        x_hat: corrupted network input ``(B, H, W, C)``; unused, kept so both
            objectives share one signature.
        y_pred: reconstruction ``F(x_hat)`` ``(B, H, W, C)``.
        lam: weight of the normal-region term, in [0, 1].

    Returns:
        float32 ``(B,)``, one loss per image (Keras averages over the batch).
    """
    del x_hat
    x, mask, error = _prepare(x, mask, y_pred, lam)
    normal = _normalised_norm(1.0 - mask, error)
    corrupted = _normalised_norm(mask, error)
    return lam * normal + (1.0 - lam) * corrupted


def contrast_loss(
    x: tf.Tensor, mask: tf.Tensor, x_hat: tf.Tensor, y_pred: tf.Tensor, lam: float
) -> tf.Tensor:
    """Objective ``contrast``: reproduce normal pixels, amplify the error where x_hat differs.

    The second term is weighted by ``D = |x_hat - x|`` rather than by ``M`` (v1 eq. 3 =
    v2 eq. 2), so pixels the corruption left unchanged are not pushed away from ``x``.
    The loss is unbounded below; train it with early stopping (methods.md §1).

    Args:
        x: clean images ``(B, H, W, C)``.
        mask: corruption mask ``M`` in [0, 1], ``(B, H, W, C)``.
        x_hat: corrupted network input ``(B, H, W, C)``.
        y_pred: reconstruction ``F(x_hat)`` ``(B, H, W, C)``.
        lam: weight of the normal-region term, in [0, 1].

    Returns:
        float32 ``(B,)``, one loss per image (Keras averages over the batch).
    """
    x, mask, error = _prepare(x, mask, y_pred, lam)
    difference = tf.abs(tf.cast(x_hat, tf.float32) - x)
    normal = _normalised_norm(1.0 - mask, error)
    amplified = _normalised_norm(difference, error)
    return lam * normal - (1.0 - lam) * amplified


def sdc_loss(objective: str, lam: float) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """A Keras loss ``fn(y_true, y_pred)`` for ``objective`` with ``y_true = [x, M, x_hat]``.

    ``y_true`` is the target of :meth:`SdcAe.make_pairs`: clean image, mask and
    corrupted image concatenated on the channel axis, ``(B, H, W, 3C)``.

    Raises:
        ValueError: unknown ``objective`` or ``lam`` outside [0, 1].
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"Expected objective in {OBJECTIVES}, Received: objective={objective!r}")
    _check_lambda(lam)
    objective_fn = restore_loss if objective == "restore" else contrast_loss

    def loss(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        x, mask, x_hat = tf.split(y_true, 3, axis=-1)
        return objective_fn(x, mask, x_hat, y_pred, lam)

    loss.__name__ = f"{objective}_loss"
    return loss


def _prepare(
    x: tf.Tensor, mask: tf.Tensor, y_pred: tf.Tensor, lam: float
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """float32 ``x``, ``mask`` and ``E = y_pred - x`` (y_pred may be float16)."""
    _check_lambda(lam)
    x = tf.cast(x, tf.float32)
    return x, tf.cast(mask, tf.float32), tf.cast(y_pred, tf.float32) - x


def _normalised_norm(weight: tf.Tensor, error: tf.Tensor) -> tf.Tensor:
    """``||weight * error||_2 / ||weight||_1`` per image, ``(B,)``; weight is non-negative."""
    squares = tf.reduce_sum(tf.square(weight * error), axis=[1, 2, 3])
    mass = tf.reduce_sum(weight, axis=[1, 2, 3])
    return _safe_sqrt(squares) / tf.maximum(mass, EPSILON)


def _safe_sqrt(squares: tf.Tensor) -> tf.Tensor:
    """``sqrt`` whose value and gradient at 0 are 0 (plain ``sqrt`` gives a NaN gradient)."""
    positive = squares > 0.0
    return tf.where(positive, tf.sqrt(tf.where(positive, squares, 1.0)), 0.0)


def _check_lambda(lam: float) -> None:
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"Expected lambda in [0, 1], Received: lam={lam}")
