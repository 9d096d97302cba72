"""Synthetic surface defects with exact pixel masks, for the test split of ``textures``.

This generator deliberately shares no code with the training corruptions in
``reconad.corrupt`` (it does not import them): a detector that only learnt to undo its
own corruptions would score well on a test set made by the same code, so the test would
measure memorisation instead of generalisation to unseen defects.

Every kind draws a soft opacity map ``alpha`` (H, W) in [0, 1] and a target image. The
mask is ``alpha >= MASK_ALPHA``; inside it the target is blended in with an opacity that
rises from 0 at the mask border, outside it the image is exactly the clean one. Sizes are
fractions of the image side and contrasts are drawn log-uniformly, so there are more faint
defects than strong ones. :func:`make_defect` re-draws until the defect is visible: large
enough (``MIN_MASK_PIXELS``), changed enough in absolute grey levels (``MIN_MEAN_CHANGE``)
and, above all, changed enough relative to the texture under it
(``MIN_TEXTURE_CONTRAST``, see :func:`texture_contrast`). The last floor is what makes
the kinds equally conspicuous on a flat brick and on busy grass: an inspector labels what
they can see, and a pit of the same grey level as the shadows between grass blades is not
a visible defect. All randomness comes from the ``np.random.Generator`` passed in.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import cv2
import numpy as np

from reconad.errors import DataError

MASK_ALPHA = 0.3
"""Opacity from which a pixel belongs to the defect (and to its mask)."""
MIN_MEAN_CHANGE = 0.08
"""Smallest mean |defective - clean| inside the mask, in [0, 1] grey units."""
MIN_MASK_PIXELS = 20
MIN_TEXTURE_CONTRAST = 1.5
"""Smallest mean |defective - clean| inside the mask over the clean texture's mean local
standard deviation there (:func:`texture_contrast`). Chosen by eye on rendered defects
of all three photos (docs/methods.md): below about 1.5, defects on grass and gravel
are hard to tell from the texture's own shadows and stones."""
TEXTURE_SCALE = 1.0 / 32.0
"""Gaussian sigma of the local standard deviation, as a fraction of the image side
(4 px at 128): about the width of a grass blade or a mortar joint."""
MAX_ATTEMPTS = 200
"""Re-draws before giving up on an image too dark, bright or busy for a visible defect."""

# Shapes and contrasts per kind. Lengths and radii are fractions of the image side;
# (low, high) pairs are the range a parameter is drawn from.
SCRATCH_LENGTH = (0.25, 0.8)
SCRATCH_BEND = 0.35
SCRATCH_WIDTH = (0.01, 0.025)
SCRATCH_CONTRAST = (0.15, 0.6)
CRACK_LENGTH = (0.3, 0.75)
CRACK_STEP = (0.02, 0.045)
CRACK_JITTER = 0.6
CRACK_DRIFT = 0.15
CRACK_WIDTH = (0.008, 0.022)
CRACK_BRANCHES = (1, 3)
CRACK_BRANCH_ANGLE = (0.4, 1.2)
CRACK_BRANCH_LENGTH = (0.2, 0.5)
CRACK_DARKNESS = (0.35, 0.9)
CONTAMINATION_RADIUS = (0.04, 0.14)
CONTAMINATION_IRREGULARITY = 0.5
CONTAMINATION_SOFTNESS = (0.05, 0.2)
CONTAMINATION_OPACITY = (0.6, 1.0)
CONTAMINATION_CONTRAST = (0.15, 0.5)
CONTAMINATION_GRAIN = (0.01, 0.1)
CONTAMINATION_GRAIN_SIGMA = (0.6, 2.0)
HOLE_RADIUS = (0.03, 0.1)
HOLE_IRREGULARITY = 0.15
HOLE_SOFTNESS = (0.2, 0.5)
HOLE_OPACITY = (0.7, 1.0)
HOLE_FLOOR = (0.02, 0.2)
HOLE_SHADING = (0.0, 0.15)
HOLE_RESIDUAL = (0.0, 0.3)
DISCOLORATION_RADIUS = (0.1, 0.3)
DISCOLORATION_IRREGULARITY = 0.6
DISCOLORATION_SOFTNESS = (0.3, 0.6)
DISCOLORATION_TINT = (0.15, 0.5)

_BLOB_VERTICES = 72
_BLOB_HARMONICS = 4
_CURVE_POINTS = 64
_FLAT = 1e-6
"""Local standard deviation below which a surface counts as flat (grey levels are 1/255)."""
_SUBPIXEL_BITS = 4
"""cv2 drawing takes fixed-point coordinates: 4 fractional bits = 1/16 pixel."""


class Defect(NamedTuple):
    """A defective image and where it differs from the clean one.

    Attributes:
        image: float32 (H, W) in [0, 1].
        mask: bool (H, W), True on the defect.
    """

    image: np.ndarray
    mask: np.ndarray


def scratch(image: np.ndarray, rng: np.random.Generator) -> Defect:
    """A thin, gently curved line (quadratic Bezier), darker or brighter than the surface.

    Args:
        image: float32 (H, W) in [0, 1], the clean image.
        rng: source of every random draw.
    """
    side = min(image.shape)
    length = side * rng.uniform(*SCRATCH_LENGTH)
    middle = _point_inside(image.shape, rng)
    heading = rng.uniform(0.0, 2.0 * math.pi)
    direction = np.array([math.cos(heading), math.sin(heading)])
    normal = np.array([-direction[1], direction[0]])
    start = middle - 0.5 * length * direction
    end = middle + 0.5 * length * direction
    control = middle + length * rng.uniform(-SCRATCH_BEND, SCRATCH_BEND) * normal
    t = np.linspace(0.0, 1.0, _CURVE_POINTS)[:, None]
    curve = (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * end
    width = _stroke_width(side, SCRATCH_WIDTH, rng)
    alpha = _stroke_alpha(image.shape, [curve], [width])
    polarity = rng.choice([-1.0, 1.0])
    contrast = _log_uniform(rng, SCRATCH_CONTRAST)
    return _compose(image, alpha, image + polarity * contrast)


def crack(image: np.ndarray, rng: np.random.Generator) -> Defect:
    """A dark, jagged line with one to three thinner branches.

    Args:
        image: float32 (H, W) in [0, 1], the clean image.
        rng: source of every random draw.
    """
    side = min(image.shape)
    length = side * rng.uniform(*CRACK_LENGTH)
    step = side * rng.uniform(*CRACK_STEP)
    heading = rng.uniform(0.0, 2.0 * math.pi)
    direction = np.array([math.cos(heading), math.sin(heading)])
    start = _point_inside(image.shape, rng) - 0.5 * length * direction
    trunk = _jagged_path(start, heading, length, step, rng)
    width = _stroke_width(side, CRACK_WIDTH, rng)
    paths, widths = [trunk], [width]
    for _ in range(rng.integers(CRACK_BRANCHES[0], CRACK_BRANCHES[1] + 1)):
        origin = trunk[rng.integers(1, len(trunk) - 1)]
        turn = rng.choice([-1.0, 1.0]) * rng.uniform(*CRACK_BRANCH_ANGLE)
        branch_length = length * rng.uniform(*CRACK_BRANCH_LENGTH)
        paths.append(_jagged_path(origin, heading + turn, branch_length, step, rng))
        widths.append(max(1, width - 1))
    alpha = _stroke_alpha(image.shape, paths, widths)
    darkness = _log_uniform(rng, CRACK_DARKNESS)
    return _compose(image, alpha, image * (1.0 - darkness))


def contamination(image: np.ndarray, rng: np.random.Generator) -> Defect:
    """An irregular blob of foreign material: another grey level with its own fine grain.

    Args:
        image: float32 (H, W) in [0, 1], the clean image.
        rng: source of every random draw.
    """
    radius = min(image.shape) * rng.uniform(*CONTAMINATION_RADIUS)
    shape_alpha = _blob_alpha(
        image.shape,
        _point_inside(image.shape, rng),
        radius,
        CONTAMINATION_IRREGULARITY,
        radius * rng.uniform(*CONTAMINATION_SOFTNESS),
        rng,
    )
    alpha = shape_alpha * rng.uniform(*CONTAMINATION_OPACITY)
    local_mean = float((image * shape_alpha).sum() / max(shape_alpha.sum(), 1e-6))
    polarity = rng.choice([-1.0, 1.0])
    level = np.clip(local_mean + polarity * _log_uniform(rng, CONTAMINATION_CONTRAST), 0, 1)
    grain = _grain(image.shape, rng.uniform(*CONTAMINATION_GRAIN_SIGMA), rng)
    target = level + rng.uniform(*CONTAMINATION_GRAIN) * grain
    return _compose(image, alpha, target)


def hole(image: np.ndarray, rng: np.random.Generator) -> Defect:
    """A dark, roughly round pit with a soft rim, lit a little more on one side.

    Args:
        image: float32 (H, W) in [0, 1], the clean image.
        rng: source of every random draw.
    """
    radius = min(image.shape) * rng.uniform(*HOLE_RADIUS)
    center = _point_inside(image.shape, rng)
    shape_alpha = _blob_alpha(
        image.shape,
        center,
        radius,
        HOLE_IRREGULARITY,
        radius * rng.uniform(*HOLE_SOFTNESS),
        rng,
    )
    alpha = shape_alpha * rng.uniform(*HOLE_OPACITY)
    light = rng.uniform(0.0, 2.0 * math.pi)
    rows, cols = np.mgrid[0 : image.shape[0], 0 : image.shape[1]].astype(np.float32)
    ramp = ((cols - center[0]) * math.cos(light) + (rows - center[1]) * math.sin(light)) / radius
    lit = 0.5 * (np.clip(ramp, -1.0, 1.0) + 1.0)
    floor = rng.uniform(*HOLE_FLOOR) + rng.uniform(*HOLE_SHADING) * lit
    target = floor + rng.uniform(*HOLE_RESIDUAL) * image
    return _compose(image, alpha, target)


def discoloration(image: np.ndarray, rng: np.random.Generator) -> Defect:
    """A faint, smooth tint over a large irregular area; the texture stays intact.

    Args:
        image: float32 (H, W) in [0, 1], the clean image.
        rng: source of every random draw.
    """
    radius = min(image.shape) * rng.uniform(*DISCOLORATION_RADIUS)
    alpha = _blob_alpha(
        image.shape,
        _point_inside(image.shape, rng),
        radius,
        DISCOLORATION_IRREGULARITY,
        radius * rng.uniform(*DISCOLORATION_SOFTNESS),
        rng,
    )
    tint = rng.choice([-1.0, 1.0]) * _log_uniform(rng, DISCOLORATION_TINT)
    return _compose(image, alpha, image + tint)


DefectFn = Callable[[np.ndarray, np.random.Generator], Defect]

DEFECT_KINDS: dict[str, DefectFn] = {
    "scratch": scratch,
    "crack": crack,
    "contamination": contamination,
    "hole": hole,
    "discoloration": discoloration,
}


def make_defect(image: np.ndarray, kind: str, rng: np.random.Generator) -> Defect:
    """Draw a visible defect of ``kind`` on ``image``, quantised to 8-bit grey levels.

    The result is on the 1/255 grid, so the visibility guarantee still holds once the
    image is saved as an 8-bit PNG; outside the mask it equals ``image`` exactly.

    Args:
        image: float32 (H, W) in [0, 1], the clean image (ideally on the 1/255 grid).
        kind: a key of ``DEFECT_KINDS``.
        rng: source of every random draw.

    Raises:
        ValueError: ``kind`` is unknown or ``image`` is not a 2-D float image in [0, 1].
        DataError: no visible defect after ``MAX_ATTEMPTS`` draws (an almost flat image).
    """
    if kind not in DEFECT_KINDS:
        raise ValueError(f"unknown defect kind '{kind}' (allowed: {', '.join(DEFECT_KINDS)})")
    _check_image(image)
    for _ in range(MAX_ATTEMPTS):
        defect = _quantised(image, DEFECT_KINDS[kind](image, rng))
        if is_visible(image, defect):
            return defect
    raise DataError(f"could not draw a visible '{kind}' defect in {MAX_ATTEMPTS} attempts")


def mean_change(clean: np.ndarray, defect: Defect) -> float:
    """Mean |defective - clean| inside the mask (0 for an empty mask)."""
    if not defect.mask.any():
        return 0.0
    diff = np.abs(defect.image.astype(np.float64) - clean.astype(np.float64))
    return float(diff[defect.mask].mean())


def local_std(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-weighted standard deviation around every pixel: how busy the texture is."""
    image = image.astype(np.float64)
    mean = cv2.GaussianBlur(image, (0, 0), sigma)
    mean_of_squares = cv2.GaussianBlur(image * image, (0, 0), sigma)
    return np.sqrt(np.maximum(mean_of_squares - mean * mean, 0.0))


def texture_contrast(clean: np.ndarray, defect: Defect) -> float:
    """Mean change inside the mask in units of the clean texture's local standard deviation.

    A change of 0.1 grey levels stands out on a flat brick face and vanishes among grass
    blades; dividing by the texture's own variation at the same place (Gaussian window of
    ``TEXTURE_SCALE`` times the image side) measures how much the defect stands out from
    it. A flat surface gives a very large value; an empty mask gives 0.
    """
    if not defect.mask.any():
        return 0.0
    busyness = float(local_std(clean, TEXTURE_SCALE * min(clean.shape))[defect.mask].mean())
    return mean_change(clean, defect) / max(busyness, _FLAT)


def is_visible(clean: np.ndarray, defect: Defect) -> bool:
    """Large enough, changed enough, and standing out from the texture under it."""
    return (
        int(defect.mask.sum()) >= MIN_MASK_PIXELS
        and mean_change(clean, defect) >= MIN_MEAN_CHANGE
        and texture_contrast(clean, defect) >= MIN_TEXTURE_CONTRAST
    )


def _check_image(image: np.ndarray) -> None:
    if image.ndim != 2 or not np.issubdtype(image.dtype, np.floating):
        raise ValueError(
            f"expected a grey float image of shape (H, W), got {image.dtype} {image.shape}"
        )
    if image.size and (image.min() < 0.0 or image.max() > 1.0):
        raise ValueError("expected image values in [0, 1]")


def _compose(image: np.ndarray, alpha: np.ndarray, target: np.ndarray) -> Defect:
    """Blend ``target`` in where ``alpha >= MASK_ALPHA``; keep ``image`` elsewhere.

    The opacity is rescaled to fall to 0 at the mask border, so cutting ``alpha`` at
    ``MASK_ALPHA`` leaves no artificial step that would give a faint defect away.
    """
    mask = alpha >= MASK_ALPHA
    opacity = np.clip((alpha - MASK_ALPHA) / (1.0 - MASK_ALPHA), 0.0, 1.0)
    blended = np.clip(image + opacity * (target - image), 0.0, 1.0)
    return Defect(np.where(mask, blended, image).astype(np.float32), mask)


def _quantised(image: np.ndarray, defect: Defect) -> Defect:
    levels = np.round(defect.image * 255.0) / 255.0
    return Defect(np.where(defect.mask, levels, image).astype(np.float32), defect.mask)


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    """Log-uniform draw: as many defects between 0.05 and 0.1 as between 0.2 and 0.4."""
    return float(math.exp(rng.uniform(math.log(bounds[0]), math.log(bounds[1]))))


def _point_inside(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """An (x, y) point in the central 80 % of the image, so most of the defect is visible."""
    height, width = shape
    return np.array([rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height])


def _stroke_width(side: int, bounds: tuple[float, float], rng: np.random.Generator) -> int:
    return max(1, round(side * rng.uniform(*bounds)))


def _fixed_point(points: np.ndarray) -> np.ndarray:
    """(N, 2) float (x, y) -> int32 coordinates with ``_SUBPIXEL_BITS`` fractional bits."""
    return np.round(points * (1 << _SUBPIXEL_BITS)).astype(np.int32)


def _stroke_alpha(shape: tuple[int, ...], paths: list[np.ndarray], widths: list[int]) -> np.ndarray:
    """Anti-aliased polylines (each (N, 2) x, y) as an opacity map (H, W) in [0, 1]."""
    canvas = np.zeros(shape, np.uint8)
    for path, width in zip(paths, widths, strict=True):
        cv2.polylines(canvas, [_fixed_point(path)], False, 255, width, cv2.LINE_AA, _SUBPIXEL_BITS)
    return canvas.astype(np.float32) / 255.0


def _jagged_path(
    start: np.ndarray, heading: float, length: float, step: float, rng: np.random.Generator
) -> np.ndarray:
    """A zig-zag path: each segment deviates from a slowly drifting heading."""
    segments = max(2, math.ceil(length / step))
    drift = np.cumsum(rng.normal(0.0, CRACK_DRIFT, segments))
    angles = heading + drift + rng.normal(0.0, CRACK_JITTER, segments)
    steps = step * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return np.concatenate([start[None], start + np.cumsum(steps, axis=0)])


def _blob_alpha(
    shape: tuple[int, ...],
    center: np.ndarray,
    radius: float,
    irregularity: float,
    softness: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """An irregular filled outline r(theta) = radius * (1 + low harmonics), blurred.

    Returns:
        float32 (H, W) opacity in [0, 1] with a peak of exactly 1.
    """
    angles = np.linspace(0.0, 2.0 * math.pi, _BLOB_VERTICES, endpoint=False)
    orders = np.arange(1, _BLOB_HARMONICS + 1)[:, None]
    amplitudes = irregularity * rng.uniform(0.0, 1.0, (_BLOB_HARMONICS, 1)) / orders
    phases = rng.uniform(0.0, 2.0 * math.pi, (_BLOB_HARMONICS, 1))
    wobble = (amplitudes * np.cos(orders * angles + phases)).sum(axis=0)
    radii = radius * np.maximum(1.0 + wobble, 0.3)
    outline = center + radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    canvas = np.zeros(shape, np.uint8)
    cv2.fillPoly(canvas, [_fixed_point(outline)], 255, cv2.LINE_AA, _SUBPIXEL_BITS)
    alpha = canvas.astype(np.float32) / 255.0
    if softness > 0.0:
        alpha = cv2.GaussianBlur(alpha, (0, 0), softness)
    return alpha / max(float(alpha.max()), 1e-6)


def _grain(shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Smoothed white noise with unit standard deviation: a texture unlike the photo's."""
    noise = cv2.GaussianBlur(rng.normal(0.0, 1.0, shape).astype(np.float32), (0, 0), sigma)
    return noise / max(float(noise.std()), 1e-6)
