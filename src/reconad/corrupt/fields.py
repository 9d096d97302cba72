"""Gaussian blur, smooth random displacement fields and bilinear warping in pure TensorFlow.

Shared by the corruption ops so that they run inside ``tf.data`` (and on a GPU) without
NumPy or Python callbacks. Shapes may be dynamic: batch, height and width are read with
``tf.shape`` at run time; only ``sigma`` (and hence the kernel length) is static.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import tensorflow as tf

TRUNCATE = 4.0
"""Gaussian kernels reach ``TRUNCATE * sigma`` pixels, as in ``scipy.ndimage.gaussian_filter``."""


UNIT_FIELD_RMS = 1.0 / (2.0 * math.sqrt(3.0 * math.pi))
"""RMS of uniform noise on [-1, 1] (1/sqrt(3)) after a 2-D Gaussian of sigma 1 (a factor
1/(2 sqrt(pi))): a field of ``alpha`` and ``sigma`` moves pixels by about
``alpha * UNIT_FIELD_RMS / sigma`` pixels RMS."""


def gaussian_kernel(sigma: float) -> tf.Tensor:
    """Normalised 1-D Gaussian kernel of length ``2 * ceil(TRUNCATE * sigma) + 1``.

    Raises:
        ValueError: ``sigma`` is not positive.
    """
    if sigma <= 0:
        raise ValueError(f"Expected sigma > 0, Received: sigma={sigma}")
    radius = math.ceil(TRUNCATE * sigma)
    offsets = tf.range(-radius, radius + 1, dtype=tf.float32)
    weights = tf.exp(-0.5 * tf.square(offsets / sigma))
    return weights / tf.reduce_sum(weights)


def gaussian_blur(images: tf.Tensor, sigma: float) -> tf.Tensor:
    """Blur every channel of ``images`` with a separable Gaussian.

    Borders are mirrored with the edge pixel repeated (TF ``SYMMETRIC`` padding, which is
    scipy's ``mode="reflect"``), so the result equals
    ``scipy.ndimage.gaussian_filter(images, (0, sigma, sigma, 0), mode="reflect")``.
    Needs height and width of at least ``ceil(TRUNCATE * sigma)``.

    Args:
        images: float32 ``(B, H, W, C)``.
        sigma: standard deviation in pixels.

    Returns:
        float32 ``(B, H, W, C)``.
    """
    kernel = gaussian_kernel(sigma)
    radius = (int(kernel.shape[0]) - 1) // 2
    planes, restore = _to_planes(tf.convert_to_tensor(images, tf.float32))
    padded = tf.pad(planes, [[0, 0], [radius, radius], [radius, radius], [0, 0]], "SYMMETRIC")
    return restore(_separable_valid_conv(padded, kernel))


def smooth_random_field(
    seed: tf.Tensor,
    batch: tf.Tensor,
    height: tf.Tensor,
    width: tf.Tensor,
    sigma: float,
    alpha: float,
) -> tf.Tensor:
    """A random displacement field ``alpha * G_sigma * U(-1, 1)`` (Simard et al., 2003).

    Uniform noise is drawn on a canvas larger by the kernel radius and filtered without
    padding, so the field is stationary up to the image border (no mirrored noise).
    The displacement RMS is about ``alpha * UNIT_FIELD_RMS / sigma`` pixels.

    Args:
        seed: int ``(2,)`` seed of ``tf.random.stateless_uniform``.
        batch, height, width: int scalars, the field size.
        sigma: smoothing (correlation length) in pixels.
        alpha: scale of the smoothed noise, in pixels.

    Returns:
        float32 ``(B, H, W, 2)``: displacements ``(dy, dx)`` in pixels.
    """
    kernel = gaussian_kernel(sigma)
    pad = int(kernel.shape[0]) - 1
    noise = tf.random.stateless_uniform(
        tf.stack([batch * 2, height + pad, width + pad, 1]), seed, minval=-1.0, maxval=1.0
    )
    field = tf.reshape(_separable_valid_conv(noise, kernel), tf.stack([batch, 2, height, width]))
    return alpha * tf.transpose(field, [0, 2, 3, 1])


def bilinear_warp(images: tf.Tensor, flow: tf.Tensor) -> tf.Tensor:
    """Resample ``images`` at ``(i + dy, j + dx)`` with bilinear interpolation.

    Sample positions outside the image are clamped to the border (edge replication).
    An integer ``flow`` is an exact translation.

    Args:
        images: float32 ``(B, H, W, C)``.
        flow: float32 ``(B, H, W, 2)`` displacements ``(dy, dx)`` in pixels.

    Returns:
        float32 ``(B, H, W, C)``.
    """
    shape = tf.shape(images)
    height, width = shape[1], shape[2]
    rows = tf.cast(tf.range(height), tf.float32)[None, :, None]
    cols = tf.cast(tf.range(width), tf.float32)[None, None, :]
    y = tf.clip_by_value(rows + flow[..., 0], 0.0, tf.cast(height - 1, tf.float32))
    x = tf.clip_by_value(cols + flow[..., 1], 0.0, tf.cast(width - 1, tf.float32))
    y0, x0 = tf.floor(y), tf.floor(x)
    wy, wx = (y - y0)[..., None], (x - x0)[..., None]
    y0, x0 = tf.cast(y0, tf.int32), tf.cast(x0, tf.int32)
    y1, x1 = tf.minimum(y0 + 1, height - 1), tf.minimum(x0 + 1, width - 1)
    flat = tf.reshape(images, tf.stack([shape[0], height * width, shape[3]]))

    def pick(rows_idx: tf.Tensor, cols_idx: tf.Tensor) -> tf.Tensor:
        index = tf.reshape(rows_idx * width + cols_idx, tf.stack([shape[0], height * width]))
        return tf.reshape(tf.gather(flat, index, batch_dims=1), shape)

    top = (1.0 - wx) * pick(y0, x0) + wx * pick(y0, x1)
    bottom = (1.0 - wx) * pick(y1, x0) + wx * pick(y1, x1)
    return (1.0 - wy) * top + wy * bottom


def _to_planes(images: tf.Tensor) -> tuple[tf.Tensor, Callable[[tf.Tensor], tf.Tensor]]:
    """``(B, H, W, C)`` -> ``(B*C, H, W, 1)`` plus the inverse, so any C shares one kernel."""
    shape = tf.shape(images)
    planes = tf.reshape(tf.transpose(images, [0, 3, 1, 2]), tf.stack([-1, shape[1], shape[2], 1]))

    def restore(result: tf.Tensor) -> tf.Tensor:
        stacked = tf.reshape(result, tf.stack([shape[0], shape[3], shape[1], shape[2]]))
        return tf.transpose(stacked, [0, 2, 3, 1])

    return planes, restore


def _separable_valid_conv(planes: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """Filter ``(N, H, W, 1)`` along H then W without padding (output shrinks by len - 1).

    Each pass is a matrix product with the kernel's banded (Toeplitz) matrix rather than a
    ``Conv2D``: oneDNN, TensorFlow's CPU convolution, asks for gigabytes of scratch space
    and aborts the process for single-channel kernels a few hundred taps long (sigma 32 at
    512 px), and a matrix product is as fast as a convolution on every device.
    """
    values = planes[..., 0]
    shape = tf.shape(values)
    rows = _band_matrix(kernel, shape[1])
    cols = _band_matrix(kernel, shape[2])
    filtered = tf.einsum("ih,nhw,jw->nij", rows, values, cols)
    return filtered[..., None]


def _band_matrix(kernel: tf.Tensor, length: tf.Tensor) -> tf.Tensor:
    """``(length - len + 1, length)`` matrix whose row ``i`` holds ``kernel`` from column ``i``:
    its product with a signal is the signal's valid cross-correlation with ``kernel``."""
    size = tf.shape(kernel)[0]
    offsets = tf.range(length)[None, :] - tf.range(length - size + 1)[:, None]
    inside = (offsets >= 0) & (offsets < size)
    return tf.where(inside, tf.gather(kernel, tf.clip_by_value(offsets, 0, size - 1)), 0.0)
