"""SDC-AE training corruption: soft, irregular patches filled with deformed content.

Bauer (v2 sec. 3.2, Fig. 4): pick k patches of random size and position; make a
replacement ``y`` of each (elastic deformation, cut-out or a patch swapped in from
elsewhere, optionally brighter or darker); blend it in through a real-valued mask ``M``,
a disk with a soft border distorted by a smooth random field, so no two masks look
alike: ``x_hat = M * y + (1 - M) * x``.

Everything is vectorised over the batch and written with stateless TensorFlow ops, so
the op runs inside ``tf.data`` with unknown batch size and image size. Patches are
pasted one after the other (a static loop over ``patches_max``; patches beyond an
image's own k have an all-zero mask); overlapping patches therefore compose like
layers, and the returned mask is their soft union ``1 - prod(1 - M_p)``.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import tensorflow as tf
from pydantic import Field, model_validator

from reconad.config import REFERENCE_SIZE, Fraction, Positive, PositiveFloat, Section
from reconad.corrupt.fields import UNIT_FIELD_RMS, bilinear_warp, smooth_random_field
from reconad.errors import ConfigError

DISK_FADE = 0.5
"""Fraction of the disk radius over which a mask fades from 1 (core) to 0 (rim)."""

MIN_SIDE = 2.0
"""Smallest patch side in pixels: a disk this small still covers pixel centres."""

MIN_CHANGE = 1.0 / 255.0
"""An image whose corruption changes it by less than this (L1, summed) is corrupted again."""

FALLBACK_SHIFT = 0.5
"""Brightness shift of the fallback corruption; it changes every masked pixel by exactly this."""


class ElasticConfig(Section):
    """The SDC-AE training corruption (methods.md §1); ``*_px`` are pixels at 256 px.

    Patch sides are drawn in pixels of the image, not as a share of the training crop,
    so that progressive training (growing crops) corrupts at one physical scale.
    """

    patches_min: Positive
    patches_max: Positive
    size_min_px: PositiveFloat
    size_max_px: PositiveFloat
    modes: list[Literal["elastic", "zeros", "swap"]] = Field(min_length=1)
    sigma_px: PositiveFloat
    """Correlation length of the elastic displacement field."""
    displacement_px: PositiveFloat
    """RMS displacement of the elastic field."""
    mask_sigma_px: PositiveFloat
    mask_displacement_px: PositiveFloat
    """The same two for the field that distorts the disk masks."""
    brightness: Fraction

    @model_validator(mode="after")
    def _ordered_ranges(self) -> ElasticConfig:
        if self.patches_min > self.patches_max:
            raise ValueError("sdc_ae.corruption.patches_min: must be <= patches_max")
        if self.size_min_px > self.size_max_px:
            raise ValueError("sdc_ae.corruption.size_min_px: must be <= size_max_px")
        return self


class ElasticOp(NamedTuple):
    """:class:`ElasticConfig` in pixels of the images being corrupted."""

    patches_min: int
    patches_max: int
    size_min: float
    size_max: float
    modes: tuple[str, ...]
    sigma: float
    alpha: float
    mask_sigma: float
    mask_alpha: float
    brightness: float

    @classmethod
    def at_size(cls, config: ElasticConfig, image_size: int) -> ElasticOp:
        """The corruption for images of side ``image_size`` (``*_px`` rescaled); the field
        scales ``alpha`` follow from the displacements (:data:`UNIT_FIELD_RMS`)."""
        scale = image_size / REFERENCE_SIZE
        sigma, mask_sigma = config.sigma_px * scale, config.mask_sigma_px * scale
        return cls(
            config.patches_min,
            config.patches_max,
            config.size_min_px * scale,
            config.size_max_px * scale,
            tuple(config.modes),
            sigma,
            config.displacement_px * scale * sigma / UNIT_FIELD_RMS,
            mask_sigma,
            config.mask_displacement_px * scale * mask_sigma / UNIT_FIELD_RMS,
            config.brightness,
        )


class _Patches(NamedTuple):
    """Random draws for every (image, patch slot); all ``(B, P)``."""

    active: tf.Tensor
    side: tf.Tensor
    top: tf.Tensor
    left: tf.Tensor
    source_top: tf.Tensor
    source_left: tf.Tensor
    mode: tf.Tensor
    brightness: tf.Tensor


def elastic_patch_corruption(
    images: tf.Tensor, seed: tf.Tensor, cfg: ElasticOp
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Corrupt random soft-edged patches of every image (methods.md §1).

    A corruption that happens to change an image by less than ``MIN_CHANGE`` (elastic
    deformation of a flat region, cut-out of a black one, a swap with identical content)
    is replaced, for that image only, by the fallback: the undistorted disk of its first
    patch, shifted in brightness by ``FALLBACK_SHIFT`` (down where ``x > 0.5``, up
    elsewhere, so values stay in [0, 1]). Hence
    ``||x_hat - x||_1 > 0`` for every image, which the ``contrast`` loss divides by.

    Args:
        images: float ``(B, H, W, C)`` in [0, 1]; B, H and W may be unknown.
        seed: int ``(2,)`` seed; the same seed gives the same output.
        cfg: patch count, size (pixels), replacement modes and field parameters.

    Returns:
        ``(x_hat, x, mask)``: the corrupted images, the clean images, and the float32
        mask ``(B, H, W, C)`` in [0, 1], zero outside the patches.

    Raises:
        ConfigError: ``cfg.modes`` is empty.
    """
    if not cfg.modes:
        raise ConfigError("sdc_ae.corruption.modes: needs at least one of elastic, zeros, swap")
    x = tf.convert_to_tensor(images, tf.float32)
    shape = tf.shape(x)
    batch, height, width = shape[0], shape[1], shape[2]
    patch_seed, mask_seed, elastic_seed = tf.unstack(
        tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=3)
    )
    patches = _draw_patches(patch_seed, batch, height, width, cfg)
    mask_flow = smooth_random_field(mask_seed, batch, height, width, cfg.mask_sigma, cfg.mask_alpha)
    elastic = None
    if "elastic" in cfg.modes:
        flow = smooth_random_field(elastic_seed, batch, height, width, cfg.sigma, cfg.alpha)
        elastic = bilinear_warp(x, flow)

    x_hat, keep = x, tf.ones_like(x[..., :1])
    for slot in range(cfg.patches_max):
        mask = _patch_mask(patches, slot, height, width, mask_flow)
        replacement = _replacement(x, elastic, patches, slot, cfg)
        x_hat = mask * replacement + (1.0 - mask) * x_hat
        keep = keep * (1.0 - mask)
    x_hat, mask = _ensure_change(x, x_hat, 1.0 - keep, patches, height, width)
    return x_hat, x, mask * tf.ones_like(x)


def _draw_patches(
    seed: tf.Tensor, batch: tf.Tensor, height: tf.Tensor, width: tf.Tensor, cfg: ElasticOp
) -> _Patches:
    """Count, size, position, swap source, mode and brightness of every patch slot."""
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, num=8))
    slots = cfg.patches_max
    shape = tf.stack([batch, slots])
    count = tf.random.stateless_uniform(
        tf.reshape(batch, [1]), seeds[0], cfg.patches_min, cfg.patches_max + 1, tf.int32
    )
    active = tf.cast(tf.range(slots)[None, :] < count[:, None], tf.float32)
    height_f, width_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    short = tf.minimum(height_f, width_f)
    drawn = tf.random.stateless_uniform(shape, seeds[1], cfg.size_min, cfg.size_max)
    side = tf.clip_by_value(tf.round(drawn), tf.minimum(MIN_SIDE, short), short)
    return _Patches(
        active=active,
        side=side,
        top=_position(seeds[2], shape, height_f - side),
        left=_position(seeds[3], shape, width_f - side),
        source_top=_position(seeds[4], shape, height_f - side),
        source_left=_position(seeds[5], shape, width_f - side),
        mode=tf.random.stateless_uniform(shape, seeds[6], 0, len(cfg.modes), tf.int32),
        brightness=tf.random.stateless_uniform(shape, seeds[7], -cfg.brightness, cfg.brightness),
    )


def _position(seed: tf.Tensor, shape: tf.Tensor, last: tf.Tensor) -> tf.Tensor:
    """Uniform integer in ``[0, last]`` (as float32), ``last`` broadcast to ``shape``."""
    draw = tf.random.stateless_uniform(shape, seed)
    return tf.minimum(tf.floor(draw * (last + 1.0)), last)


def _patch_mask(
    patches: _Patches,
    slot: int,
    height: tf.Tensor,
    width: tf.Tensor,
    flow: tf.Tensor | None,
) -> tf.Tensor:
    """Soft disk inscribed in patch ``slot``, sampled through ``flow``; ``(B, H, W, 1)``.

    The disk is 1 up to ``(1 - DISK_FADE)`` of its radius and fades to 0 at the patch
    side with a smoothstep; ``flow`` (``None`` = no distortion) bends its outline. The
    patch box clips the result so the mask is zero outside the patch.
    """
    rows = tf.cast(tf.range(height), tf.float32)[None, :, None]
    cols = tf.cast(tf.range(width), tf.float32)[None, None, :]
    side = patches.side[:, slot, None, None]
    top = patches.top[:, slot, None, None]
    left = patches.left[:, slot, None, None]
    radius = side / 2.0
    sample_rows = rows if flow is None else rows + flow[..., 0]
    sample_cols = cols if flow is None else cols + flow[..., 1]
    distance = tf.sqrt(
        tf.square(sample_rows - (top + radius - 0.5))
        + tf.square(sample_cols - (left + radius - 0.5))
    )
    disk = _smoothstep((radius - distance) / (DISK_FADE * radius))
    inside = _within(rows, top, side) * _within(cols, left, side)
    return (disk * inside * patches.active[:, slot, None, None])[..., None]


def _within(coords: tf.Tensor, start: tf.Tensor, length: tf.Tensor) -> tf.Tensor:
    """1.0 where ``start <= coords < start + length``, else 0.0."""
    return tf.cast((coords >= start) & (coords < start + length), tf.float32)


def _smoothstep(t: tf.Tensor) -> tf.Tensor:
    """0 below 0, 1 above 1, ``3t^2 - 2t^3`` between: a fade with no kinks."""
    t = tf.clip_by_value(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _replacement(
    x: tf.Tensor, elastic: tf.Tensor | None, patches: _Patches, slot: int, cfg: ElasticOp
) -> tf.Tensor:
    """Content ``y`` of patch ``slot`` for every image, by that patch's drawn mode."""
    made: dict[str, tf.Tensor] = {}
    for mode in cfg.modes:
        if mode in made:
            continue
        if mode == "elastic":
            made[mode] = elastic
        elif mode == "zeros":
            made[mode] = tf.zeros_like(x)
        else:
            made[mode] = _swapped(x, patches, slot)
    choice = patches.mode[:, slot, None, None, None]
    replacement = made[cfg.modes[0]]
    for index, mode in enumerate(cfg.modes[1:], start=1):
        replacement = tf.where(choice == index, made[mode], replacement)
    if cfg.brightness > 0:
        shift = patches.brightness[:, slot, None, None, None]
        replacement = tf.clip_by_value(replacement + shift, 0.0, 1.0)
    return replacement


def _swapped(x: tf.Tensor, patches: _Patches, slot: int) -> tf.Tensor:
    """``x`` translated so that the patch's source box lands on the patch box."""
    shape = tf.shape(x)
    offset = tf.stack(
        [
            patches.source_top[:, slot] - patches.top[:, slot],
            patches.source_left[:, slot] - patches.left[:, slot],
        ],
        axis=-1,
    )
    flow = tf.broadcast_to(offset[:, None, None, :], tf.stack([shape[0], shape[1], shape[2], 2]))
    return bilinear_warp(x, flow)


def _ensure_change(
    x: tf.Tensor,
    x_hat: tf.Tensor,
    mask: tf.Tensor,
    patches: _Patches,
    height: tf.Tensor,
    width: tf.Tensor,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Swap in the fallback corruption for images that ``x_hat`` left (almost) unchanged."""
    change = tf.reduce_sum(tf.abs(x_hat - x), axis=[1, 2, 3])
    changed = (change >= MIN_CHANGE)[:, None, None, None]
    disk = _patch_mask(patches, 0, height, width, flow=None)
    shifted = tf.where(x > 0.5, x - FALLBACK_SHIFT, x + FALLBACK_SHIFT)
    fallback = disk * shifted + (1.0 - disk) * x
    return tf.where(changed, x_hat, fallback), tf.where(changed, mask, disk)
