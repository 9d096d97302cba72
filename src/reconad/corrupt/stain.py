"""AESc training corruptions (Collin & De Vleeschouwer, sec. III-B and IV-C).

Every op maps ``(images (B, H, W, C) float32 in [0, 1], seed int (2,))`` to
``(corrupted (B, H, W, C), region (B, H, W, 1) float32 in {0, 1})``; the region is where
the op may have changed pixels (all ones for ``gaussian``, all zeros for ``none``). The
ops are vectorised over the batch, written with stateless TensorFlow ops only, and work
with unknown batch and image sizes, so they run inside ``tf.data``; the same seed gives
the same corruption.

Geometry is in pixel units: pixel ``(i, j)`` has its centre at row ``i``, column ``j``,
and a shape covers a pixel when it covers that centre.

Stain rasterisation. The paper interpolates 20 jittered ellipse-border points, sorted
by polar angle, with a closed cubic curve and fills it. We parameterise the curve as a
radius function ``r(theta)`` around the ellipse centre: the control points sit at
equally spaced polar angles, their radii are the ellipse radius at that angle plus a
radial jitter, and ``r`` is the closed uniform Catmull-Rom interpolation of these
radii over the angle. A pixel is inside iff its distance to the centre is at most
``r`` at its own polar angle. This is exact (no polygon approximation) because such a
curve is star-shaped around the centre, and costs O(1) per pixel.

Where the paper is silent we follow the authors' public code: the 1-12 % of the
smaller side bound the ellipse *semi*-axes, the jitter is 10 % of the mean semi-axis,
and the stain stays inside the image. We differ from that code where methods.md says
otherwise: the stain is one flat grey level drawn uniformly in [0, 1] (the code blurs
its edge and adds faint noise), every drop has its own grey level and its own diameter,
and the scratch is 2-4 px wide between two random pixels. ``gaussian`` draws the
standard deviation from {0.1, 0.2, 0.4, 0.8} (the paper's text and the code treat these
as variances) and ``mix2`` uses that same op. Colour images get the same grey level on
every channel.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import tensorflow as tf

Corruption = Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]

STAIN_POINTS = 20
"""Control points on the stain border (paper Fig. 3)."""

STAIN_SEMI_AXES = (0.01, 0.12)
"""Range of both ellipse semi-axes, as fractions of the smaller image side."""

STAIN_JITTER = 0.1
"""Radial jitter of each control point, as a fraction of the mean semi-axis (authors' code)."""

SCRATCH_HALF_WIDTH = (1.0, 2.0)
"""Range of the scratch half-width in pixels (the authors stamp a 3 x 3 neighbourhood)."""

SCRATCH_SAMPLES_PER_PIXEL = 8
"""Curve samples per pixel of the longer image side; keeps samples < 0.5 px apart."""

SCRATCH_SINE_AMPLITUDE = 0.2
"""Largest sine amplitude, as a fraction of the chord between the scratch end points."""

SCRATCH_SINE_HALF_PERIODS = 4
"""Largest number of half periods of a sine scratch (at least one)."""

DROPS_COUNT = 10
"""Drops per image (paper sec. IV-C)."""

DROPS_DIAMETER = (0.01, 0.02)
"""Range of the drop diameters, as fractions of the smaller image side."""

DROPS_SPREAD = 0.02
"""Standard deviation of the drop centres around their common centre, as a fraction of
the smaller side: one maximal diameter, so the drops partly overlap."""

GAUSSIAN_SIGMAS = (0.1, 0.2, 0.4, 0.8)
"""Standard deviations of the additive white noise, one drawn per image."""

MIXTURES: dict[str, tuple[tuple[str, float], ...]] = {
    "mix1": (("stain", 0.6), ("scratch", 0.2), ("drops", 0.2)),
    "mix2": (("stain", 0.6), ("gaussian", 0.4)),
}
"""Per-image choice between corruptions, with their probabilities."""


class StainShape(NamedTuple):
    """Random stain geometry of a batch, in pixel units."""

    centre: tf.Tensor
    """(B, 2) row, column of the ellipse centre (whole pixels)."""
    first_angle: tf.Tensor
    """(B,) polar angle of control point 0; point k sits at ``first_angle + 2 pi k / N``."""
    radii: tf.Tensor
    """(B, N) distance of every control point to the centre."""


def stain(images: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """One irregular elliptic stain of one grey level per image."""
    batch, height, width = _dims(images)
    keys = tf.random.experimental.stateless_split(seed, num=2)
    shape = stain_shapes(keys[0], batch, height, width)
    inside = star_mask(shape, height, width)
    grey = tf.random.stateless_uniform([batch], keys[1])
    return _fill(images, inside, grey[:, None, None]), _region(inside)


def stain_shapes(
    seed: tf.Tensor, batch: tf.Tensor, height: tf.Tensor, width: tf.Tensor
) -> StainShape:
    """Draw ``batch`` stains: a rotated ellipse whose border points are radially jittered.

    The centre keeps the jittered control points inside the image, as in the authors' code.
    """
    keys = tf.random.experimental.stateless_split(seed, num=5)
    side = tf.cast(tf.minimum(height, width), tf.float32)
    low, high = STAIN_SEMI_AXES
    semi_axes = tf.random.stateless_uniform([batch, 2], keys[0], low, high) * side
    tilt = tf.random.stateless_uniform([batch, 1], keys[1], 0.0, math.pi)
    step = 2.0 * math.pi / STAIN_POINTS
    first_angle = tf.random.stateless_uniform([batch], keys[2], 0.0, step)
    angles = first_angle[:, None] + step * tf.range(STAIN_POINTS, dtype=tf.float32)
    ellipse = _ellipse_radius(semi_axes[:, :1], semi_axes[:, 1:], angles - tilt)
    jitter = tf.random.stateless_uniform([batch, STAIN_POINTS], keys[3], -1.0, 1.0)
    mean_axis = tf.reduce_mean(semi_axes, axis=1, keepdims=True)
    radii = ellipse + STAIN_JITTER * mean_axis * jitter
    reach = tf.math.ceil(tf.reduce_max(semi_axes, axis=1) + STAIN_JITTER * mean_axis[:, 0])
    centre = _whole_pixels_inside(keys[4], batch, height, width, reach)
    return StainShape(centre, first_angle, radii)


def star_mask(shape: StainShape, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """(B, H, W) bool: pixels inside the closed curve ``r(theta)`` of ``shape``."""
    rows = tf.cast(tf.range(height), tf.float32)[None, :, None] - shape.centre[:, 0, None, None]
    cols = tf.cast(tf.range(width), tf.float32)[None, None, :] - shape.centre[:, 1, None, None]
    distance = tf.sqrt(rows**2 + cols**2)
    angle = tf.math.atan2(rows, cols) - shape.first_angle[:, None, None]
    position = tf.math.floormod(angle, 2.0 * math.pi) * (STAIN_POINTS / (2.0 * math.pi))
    segment = tf.floor(position)
    border = _periodic_catmull_rom(shape.radii, tf.cast(segment, tf.int32), position - segment)
    return distance <= border


def scratch(images: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """One curve (line, sine or square-root path) between two random pixels, one grey level."""
    batch, height, width = _dims(images)
    keys = tf.random.experimental.stateless_split(seed, num=3)
    points = scratch_paths(keys[0], batch, height, width)
    low, high = SCRATCH_HALF_WIDTH
    half_width = tf.random.stateless_uniform([batch, 1], keys[1], low, high)
    radii = tf.broadcast_to(half_width, tf.shape(points)[:2])
    inside = paint_discs(points, radii, height, width) > 0
    grey = tf.random.stateless_uniform([batch], keys[2])
    return _fill(images, inside, grey[:, None, None]), _region(inside)


def scratch_paths(
    seed: tf.Tensor, batch: tf.Tensor, height: tf.Tensor, width: tf.Tensor
) -> tf.Tensor:
    """(B, K, 2) dense samples of one curve per image, from one whole pixel to another.

    Each image gets, with equal probability, a straight line, a sine wave around the
    chord (1 to ``SCRATCH_SINE_HALF_PERIODS`` half periods, so it ends on the end point)
    or the graph of a square root (``sqrt`` along one axis, linear along the other).
    """
    keys = tf.random.experimental.stateless_split(seed, num=7)
    start = _whole_pixels_inside(keys[0], batch, height, width, tf.zeros([batch]))
    chord = _whole_pixels_inside(keys[1], batch, height, width, tf.zeros([batch])) - start
    samples = SCRATCH_SAMPLES_PER_PIXEL * tf.maximum(height, width)
    t = tf.linspace(0.0, 1.0, samples)[None, :, None]
    start, chord = start[:, None, :], chord[:, None, :]
    line = start + t * chord
    amplitude = tf.random.stateless_uniform(
        [batch, 1, 1], keys[2], -SCRATCH_SINE_AMPLITUDE, SCRATCH_SINE_AMPLITUDE
    )
    half_periods = tf.random.stateless_uniform(
        [batch, 1, 1], keys[3], 1, SCRATCH_SINE_HALF_PERIODS + 1, dtype=tf.int32
    )
    normal = tf.stack([-chord[..., 1], chord[..., 0]], axis=-1)
    wave = tf.sin(math.pi * tf.cast(half_periods, tf.float32) * t)
    sine = line + amplitude * wave * normal
    # The graph of sqrt, {(sqrt(u), u)}, sampled as (t, t^2): evenly spaced samples on it,
    # where sqrt's infinite slope at 0 would leave gaps.
    root_on_rows = tf.random.stateless_uniform([batch, 1, 1], keys[4]) < 0.5
    root_weights = tf.where(
        root_on_rows,
        tf.concat([t, t**2], axis=-1),
        tf.concat([t**2, t], axis=-1),
    )
    root = start + root_weights * chord
    kind = tf.random.stateless_uniform([batch], keys[5], 0, 3, dtype=tf.int32)
    return tf.gather(tf.stack([line, sine, root], axis=1), kind, batch_dims=1)


def drops(images: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """``DROPS_COUNT`` partly overlapping discs per image, each of its own grey level.

    Where drops overlap, the later drop covers the earlier one.
    """
    batch, height, width = _dims(images)
    keys = tf.random.experimental.stateless_split(seed, num=4)
    side = tf.cast(tf.minimum(height, width), tf.float32)
    cluster = _whole_pixels_inside(keys[0], batch, height, width, tf.zeros([batch]))
    offsets = tf.random.stateless_normal([batch, DROPS_COUNT, 2], keys[1]) * DROPS_SPREAD * side
    upper = tf.cast(tf.stack([height, width]) - 1, tf.float32)
    centres = tf.clip_by_value(tf.round(cluster[:, None, :] + offsets), 0.0, upper)
    low, high = DROPS_DIAMETER
    radii = tf.random.stateless_uniform([batch, DROPS_COUNT], keys[2], low, high) * side / 2.0
    label = paint_discs(centres, radii, height, width)
    greys = tf.random.stateless_uniform([batch, DROPS_COUNT], keys[3])
    grey = tf.gather(tf.pad(greys, [[0, 0], [1, 0]]), label, batch_dims=1)
    inside = label > 0
    return _fill(images, inside, grey), _region(inside)


def paint_discs(
    centres: tf.Tensor, radii: tf.Tensor, height: tf.Tensor, width: tf.Tensor
) -> tf.Tensor:
    """Rasterise discs by scattering each into its own small window of pixels.

    Memory grows with the number of discs times their area, not with the image size,
    which is what lets a scratch be drawn as thousands of overlapping small discs.

    Args:
        centres: float32 ``(B, K, 2)`` row, column of every disc centre.
        radii: float32 ``(B, K)``.
        height: image height.
        width: image width.

    Returns:
        int32 ``(B, H, W)``: 1 + index of the last disc covering each pixel, 0 where none.
    """
    batch, count = tf.shape(centres)[0], tf.shape(centres)[1]
    reach = tf.cast(tf.math.ceil(tf.maximum(tf.reduce_max(radii), 0.0) + 0.5), tf.int32)
    steps = tf.range(-reach, reach + 1)
    window = tf.reshape(tf.stack(tf.meshgrid(steps, steps, indexing="ij"), axis=-1), [-1, 2])
    pixels = tf.cast(tf.round(centres), tf.int32)[:, :, None, :] + window[None, None]
    offset = tf.cast(pixels, tf.float32) - centres[:, :, None, :]
    covered = tf.reduce_sum(offset**2, axis=-1) <= radii[:, :, None] ** 2
    upper = tf.stack([height, width]) - 1
    in_image = tf.reduce_all((pixels >= 0) & (pixels <= upper), axis=-1)
    labels = tf.where(covered & in_image, tf.range(1, count + 1)[None, :, None], 0)
    pixels = tf.clip_by_value(pixels, 0, upper)
    images_index = tf.broadcast_to(tf.range(batch)[:, None, None], tf.shape(labels))
    indices = tf.concat([images_index[..., None], pixels], axis=-1)
    return tf.tensor_scatter_nd_max(
        tf.zeros(tf.stack([batch, height, width]), tf.int32),
        tf.reshape(indices, [-1, 3]),
        tf.reshape(labels, [-1]),
    )


def gaussian(images: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Additive white noise, sigma drawn per image from ``GAUSSIAN_SIGMAS``, clipped to [0, 1]."""
    batch = tf.shape(images)[0]
    keys = tf.random.experimental.stateless_split(seed, num=2)
    choice = tf.random.stateless_uniform([batch], keys[0], 0, len(GAUSSIAN_SIGMAS), dtype=tf.int32)
    sigma = tf.gather(tf.constant(GAUSSIAN_SIGMAS, tf.float32), choice)[:, None, None, None]
    noise = tf.random.stateless_normal(tf.shape(images), keys[1]) * sigma
    region = tf.ones_like(images[..., :1])
    return tf.clip_by_value(images + noise, 0.0, 1.0), region


def none(images: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """No corruption: the plain autoencoder objective."""
    del seed
    return tf.identity(images), tf.zeros_like(images[..., :1])


CORRUPTIONS: dict[str, Corruption] = {
    "stain": stain,
    "scratch": scratch,
    "drops": drops,
    "gaussian": gaussian,
    "none": none,
}
"""The single corruption models; ``MIXTURES`` combine them."""

CORRUPTION_MODELS: tuple[str, ...] = (
    "stain",
    "scratch",
    "drops",
    "gaussian",
    "mix1",
    "mix2",
    "none",
)
"""Every value ``aesc.corruption.model`` accepts."""


def corrupt(images: tf.Tensor, seed: tf.Tensor, model: str) -> tuple[tf.Tensor, tf.Tensor]:
    """Apply corruption ``model`` (``aesc.corruption.model``) to a batch.

    Raises:
        ValueError: unknown ``model``.
    """
    if model in CORRUPTIONS:
        return CORRUPTIONS[model](images, seed)
    if model in MIXTURES:
        return _mixture(images, seed, MIXTURES[model])
    known = ", ".join(sorted([*CORRUPTIONS, *MIXTURES]))
    raise ValueError(f"unknown corruption model '{model}' (allowed: {known})")


def choose_components(seed: tf.Tensor, batch: tf.Tensor, weights: tuple[float, ...]) -> tf.Tensor:
    """(B,) int32: an index into ``weights`` per image, drawn with those probabilities."""
    thresholds = tf.constant(_cumulative(weights)[:-1], tf.float32)
    u = tf.random.stateless_uniform([batch], seed)
    return tf.reduce_sum(tf.cast(u[:, None] >= thresholds[None, :], tf.int32), axis=1)


def _mixture(
    images: tf.Tensor, seed: tf.Tensor, parts: tuple[tuple[str, float], ...]
) -> tuple[tf.Tensor, tf.Tensor]:
    """Every image gets one of ``parts``: all candidates are computed, then selected."""
    keys = tf.random.experimental.stateless_split(seed, num=len(parts) + 1)
    choice = choose_components(keys[0], tf.shape(images)[0], tuple(w for _, w in parts))
    corrupted, region = images, tf.zeros_like(images[..., :1])
    for index, (name, _) in enumerate(parts):
        candidate, candidate_region = CORRUPTIONS[name](images, keys[index + 1])
        chosen = (choice == index)[:, None, None, None]
        corrupted = tf.where(chosen, candidate, corrupted)
        region = tf.where(chosen, candidate_region, region)
    return corrupted, region


def _cumulative(weights: tuple[float, ...]) -> list[float]:
    total = sum(weights)
    running, out = 0.0, []
    for weight in weights:
        running += weight / total
        out.append(running)
    return out


def _dims(images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    shape = tf.shape(images)
    return shape[0], shape[1], shape[2]


def _ellipse_radius(a: tf.Tensor, b: tf.Tensor, angle: tf.Tensor) -> tf.Tensor:
    """Distance from the centre to the border of an ellipse with semi-axes a, b at ``angle``."""
    return a * b / tf.sqrt((b * tf.cos(angle)) ** 2 + (a * tf.sin(angle)) ** 2)


def _whole_pixels_inside(
    seed: tf.Tensor, batch: tf.Tensor, height: tf.Tensor, width: tf.Tensor, margin: tf.Tensor
) -> tf.Tensor:
    """(B, 2) float32 whole-pixel positions at least ``margin`` (B,) pixels from every edge.

    The margin shrinks where the image is too small to honour it. A shape centred on a
    whole pixel always covers at least that pixel.
    """
    extent = tf.cast(tf.stack([height, width]), tf.float32)[None, :]
    margin = tf.minimum(margin[:, None], tf.floor((extent - 1.0) / 2.0))
    u = tf.random.stateless_uniform([batch, 2], seed)
    return margin + tf.floor(u * (extent - 2.0 * margin))


def _periodic_catmull_rom(values: tf.Tensor, segment: tf.Tensor, t: tf.Tensor) -> tf.Tensor:
    """Closed uniform Catmull-Rom spline through ``values`` (B, N) at ``segment + t``.

    ``segment`` (B, ...) int32 in [0, N], ``t`` (B, ...) in [0, 1); indices wrap around.
    """
    count = tf.shape(values)[1]
    p0, p1, p2, p3 = (
        tf.gather(values, tf.math.floormod(segment + shift, count), batch_dims=1)
        for shift in (-1, 0, 1, 2)
    )
    return 0.5 * (
        2.0 * p1
        + (p2 - p0) * t
        + (2.0 * p0 - 5.0 * p1 + 4.0 * p2 - p3) * t**2
        + (3.0 * (p1 - p2) + p3 - p0) * t**3
    )


def _fill(images: tf.Tensor, inside: tf.Tensor, grey: tf.Tensor) -> tf.Tensor:
    """Paint ``grey`` (broadcast to (B, H, W)) on every channel where ``inside`` (B, H, W)."""
    grey = tf.broadcast_to(grey, tf.shape(inside))[..., None]
    return tf.where(inside[..., None], grey, images)


def _region(inside: tf.Tensor) -> tf.Tensor:
    return tf.cast(inside, tf.float32)[..., None]
