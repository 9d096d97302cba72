"""CutPaste (Li et al., CVPR 2021): synthetic defects made of the image's own pixels.

A region is cut from one place of the image, colour-jittered, optionally rotated and pasted
at another place. Two shapes, as in the CutPaste paper:

- rectangle: area a fraction in [area_min, area_max] of the image, aspect ratio
  log-uniform in [0.3, 3.3], not rotated;
- scar: a thin rectangle, 2-16 px wide and 10-25 px long at 256 px (scaled with the
  image side), rotated by an angle in [-45, 45] degrees.

Each image of a batch is corrupted with probability ``probability``. Everything is
vectorised over the batch in pure TensorFlow (stateless random ops keyed by one seed), so
it runs inside ``tf.data`` with any batch size.
"""

from __future__ import annotations

import math
from typing import Annotated

import tensorflow as tf
from pydantic import Field

from reconad.config import Fraction, Section

ASPECT_RANGE = (0.3, 3.3)
"""Height/width ratio range of rectangles (CutPaste)."""
SCAR_WIDTH = (2.0 / 256.0, 16.0 / 256.0)
SCAR_LENGTH = (10.0 / 256.0, 25.0 / 256.0)
"""Scar sides as fractions of the image side (CutPaste's pixels at 256 x 256)."""
SCAR_MAX_ANGLE = math.pi / 4.0

# Columns of the per-image uniform draws.
_APPLY, _SCAR, _AREA, _ASPECT, _SCAR_W, _SCAR_L, _ANGLE = range(7)
_SRC_Y, _SRC_X, _DST_Y, _DST_X, _BRIGHT, _CONTRAST, _SATURATION, _HUE = range(7, 15)
_DRAWS = 15

Area = Annotated[float, Field(gt=0.0, le=1.0)]


class CutPasteConfig(Section):
    """Patch AE's training defects; areas are shares of the image area."""

    probability: Fraction
    scar_probability: Fraction
    area_min: Area
    area_max: Area
    jitter: Fraction


def cutpaste(images: tf.Tensor, seed: tf.Tensor, config: CutPasteConfig) -> tf.Tensor:
    """CutPaste-corrupted copies of ``images``.

    Args:
        images: float32 ``(B, H, W, C)`` in [0, 1], C = 1 or 3 known statically.
        seed: int ``(2,)`` seed of the stateless random ops.
        config: ``patch_ae.corruption``.

    Returns:
        float32 ``(B, H, W, C)`` in [0, 1].
    """
    return cutpaste_with_mask(images, seed, config)[0]


def cutpaste_with_mask(
    images: tf.Tensor, seed: tf.Tensor, config: CutPasteConfig
) -> tuple[tf.Tensor, tf.Tensor]:
    """CutPaste plus the mask of the pasted pixels.

    Returns:
        ``(corrupted (B, H, W, C), mask (B, H, W, 1))``; the mask is 1.0 where a pixel was
        pasted and 0.0 elsewhere (all zero for images left unchanged).
    """
    images = tf.convert_to_tensor(images, tf.float32)
    channels = images.shape[-1]
    if channels not in (1, 3):
        raise ValueError(f"Expected 1 or 3 channels known statically. Received: {images.shape}")
    shape = tf.shape(images)
    height, width = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    draws = tf.random.stateless_uniform((shape[0], _DRAWS), seed=seed)
    patch_h, patch_w, angle = _patch_geometry(draws, height, width, config)
    source = _centres(
        draws[:, _SRC_Y], draws[:, _SRC_X], patch_h / 2.0, patch_w / 2.0, height, width
    )
    half_y = tf.abs(patch_h / 2.0 * tf.cos(angle)) + tf.abs(patch_w / 2.0 * tf.sin(angle))
    half_x = tf.abs(patch_w / 2.0 * tf.cos(angle)) + tf.abs(patch_h / 2.0 * tf.sin(angle))
    target = _centres(draws[:, _DST_Y], draws[:, _DST_X], half_y, half_x, height, width)
    local_y, local_x = _local_coordinates(target, angle, shape[1], shape[2])
    inside = (tf.abs(local_y) <= patch_h[:, None, None] / 2.0) & (
        tf.abs(local_x) <= patch_w[:, None, None] / 2.0
    )
    applied = draws[:, _APPLY] < config.probability
    mask = tf.cast(inside & applied[:, None, None], tf.float32)[..., None]
    pasted = _gather_source(images, source, local_y, local_x)
    pasted = _colour_jitter(pasted, mask, draws, config.jitter)
    return mask * pasted + (1.0 - mask) * images, mask


def _patch_geometry(
    draws: tf.Tensor, height: tf.Tensor, width: tf.Tensor, config: CutPasteConfig
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Per image: patch height, width (pixels) and rotation angle (radians)."""
    area = _lerp(config.area_min, config.area_max, draws[:, _AREA]) * height * width
    log_aspect = _lerp(math.log(ASPECT_RANGE[0]), math.log(ASPECT_RANGE[1]), draws[:, _ASPECT])
    rect_h = tf.sqrt(area * tf.exp(log_aspect))
    rect_w = tf.sqrt(area / tf.exp(log_aspect))
    side = tf.minimum(height, width)
    scar_w = _lerp(*SCAR_WIDTH, draws[:, _SCAR_W]) * side
    scar_l = _lerp(*SCAR_LENGTH, draws[:, _SCAR_L]) * side
    scar_angle = _lerp(-SCAR_MAX_ANGLE, SCAR_MAX_ANGLE, draws[:, _ANGLE])
    scar = draws[:, _SCAR] < config.scar_probability
    patch_h = tf.clip_by_value(tf.where(scar, scar_l, rect_h), 1.0, height - 1.0)
    patch_w = tf.clip_by_value(tf.where(scar, scar_w, rect_w), 1.0, width - 1.0)
    angle = tf.where(scar, scar_angle, tf.zeros_like(scar_angle))
    return patch_h, patch_w, angle


def _centres(
    u_y: tf.Tensor,
    u_x: tf.Tensor,
    half_y: tf.Tensor,
    half_x: tf.Tensor,
    height: tf.Tensor,
    width: tf.Tensor,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Uniform centres keeping a box of half-extents (half_y, half_x) inside the image."""
    return _lerp_inside(u_y, half_y, height), _lerp_inside(u_x, half_x, width)


def _lerp_inside(u: tf.Tensor, half: tf.Tensor, extent: tf.Tensor) -> tf.Tensor:
    low = tf.minimum(half, extent / 2.0)
    return _lerp(low, extent - low, u)


def _local_coordinates(
    target: tuple[tf.Tensor, tf.Tensor], angle: tf.Tensor, height: tf.Tensor, width: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """Pixel centres in the frame of the pasted patch (centred, rotated back): (B, H, W)."""
    rows = tf.cast(tf.range(height), tf.float32)[None, :, None] + 0.5
    cols = tf.cast(tf.range(width), tf.float32)[None, None, :] + 0.5
    dy = rows - target[0][:, None, None]
    dx = cols - target[1][:, None, None]
    cos, sin = tf.cos(angle)[:, None, None], tf.sin(angle)[:, None, None]
    return cos * dy - sin * dx, sin * dy + cos * dx


def _gather_source(
    images: tf.Tensor, source: tuple[tf.Tensor, tf.Tensor], local_y: tf.Tensor, local_x: tf.Tensor
) -> tf.Tensor:
    """For every pixel, the source pixel its patch coordinates map to (nearest neighbour)."""
    shape = tf.shape(images)
    src_y = tf.floor(source[0][:, None, None] + local_y)
    src_x = tf.floor(source[1][:, None, None] + local_x)
    src_y = tf.clip_by_value(tf.cast(src_y, tf.int32), 0, shape[1] - 1)
    src_x = tf.clip_by_value(tf.cast(src_x, tf.int32), 0, shape[2] - 1)
    return tf.gather_nd(images, tf.stack([src_y, src_x], axis=-1), batch_dims=1)


def _colour_jitter(
    pasted: tf.Tensor, mask: tf.Tensor, draws: tf.Tensor, strength: float
) -> tf.Tensor:
    """Brightness and contrast (and saturation and hue for RGB) factors in 1 +- strength."""
    if strength == 0.0:
        return pasted

    def factor(column: int) -> tf.Tensor:
        return (1.0 + strength * (2.0 * draws[:, column] - 1.0))[:, None, None, None]

    out = pasted * factor(_BRIGHT)
    area = tf.maximum(tf.reduce_sum(mask, axis=(1, 2, 3), keepdims=True), 1.0)
    channels = pasted.shape[-1]
    mean = tf.reduce_sum(out * mask, axis=(1, 2, 3), keepdims=True) / (area * channels)
    out = (out - mean) * factor(_CONTRAST) + mean
    if channels == 3:
        grey = tf.reduce_mean(out, axis=-1, keepdims=True)
        out = (out - grey) * factor(_SATURATION) + grey
        hsv = tf.image.rgb_to_hsv(tf.clip_by_value(out, 0.0, 1.0))
        shift = (strength * (2.0 * draws[:, _HUE] - 1.0))[:, None, None]
        hue = tf.math.floormod(hsv[..., 0] + shift, 1.0)
        out = tf.image.hsv_to_rgb(tf.stack([hue, hsv[..., 1], hsv[..., 2]], axis=-1))
    return tf.clip_by_value(out, 0.0, 1.0)


def _lerp(low: float | tf.Tensor, high: float | tf.Tensor, u: tf.Tensor) -> tf.Tensor:
    return low + (high - low) * u
