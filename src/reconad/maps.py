"""Anomaly-map post-processing shared by the method families: smoothing and image scores.

Maps are NumPy ``(N, H, W)`` float arrays, one per image. Smoothing never mixes images:
the filters act on the H and W axes only, with scipy's ``mode="reflect"`` border (edge
pixel repeated), the same border as :func:`reconad.corrupt.fields.gaussian_blur`.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

IMAGE_SCORES = ("max", "top_q_mean")


def gaussian_smooth(maps: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian filter of every map (v1/v2 smoothing); ``sigma`` in pixels.

    Args:
        maps: ``(N, H, W)``.
        sigma: standard deviation, > 0.

    Returns:
        float32 ``(N, H, W)``.
    """
    maps = _check_maps(maps)
    if sigma <= 0:
        raise ValueError(f"Expected sigma > 0, Received: sigma={sigma}")
    return ndimage.gaussian_filter(maps, sigma=(0.0, sigma, sigma), mode="reflect")


def box_smooth(maps: np.ndarray, size: int, passes: int) -> np.ndarray:
    """``passes`` rounds of a ``size`` x ``size`` averaging filter: v3's ``anomap^{n,k}``.

    Args:
        maps: ``(N, H, W)``.
        size: side ``k`` of the averaging window, >= 1.
        passes: number ``n`` of rounds, >= 1.

    Returns:
        float32 ``(N, H, W)``.
    """
    maps = _check_maps(maps)
    if size < 1 or passes < 1:
        raise ValueError(f"Expected size >= 1 and passes >= 1, Received: {size=}, {passes=}")
    for _ in range(passes):
        maps = ndimage.uniform_filter(maps, size=(1, size, size), mode="reflect")
    return maps


def image_score(maps: np.ndarray, how: str = "max", q: float = 0.01) -> np.ndarray:
    """One anomaly score per image from its map.

    Args:
        maps: ``(N, H, W)``.
        how: ``max`` (the map's maximum) or ``top_q_mean`` (mean of its ``ceil(q*H*W)``
            largest values, less sensitive to a single hot pixel).
        q: fraction of pixels for ``top_q_mean``, in (0, 1].

    Returns:
        float32 ``(N,)``.
    """
    maps = _check_maps(maps)
    if how not in IMAGE_SCORES:
        raise ValueError(f"Expected how in {IMAGE_SCORES}, Received: how={how!r}")
    flat = maps.reshape(maps.shape[0], maps.shape[1] * maps.shape[2])
    if how == "max":
        return flat.max(axis=1).astype(np.float32)
    if not 0.0 < q <= 1.0:
        raise ValueError(f"Expected 0 < q <= 1, Received: q={q}")
    count = max(1, math.ceil(q * flat.shape[1]))
    top = np.partition(flat, flat.shape[1] - count, axis=1)[:, flat.shape[1] - count :]
    return top.mean(axis=1).astype(np.float32)


def _check_maps(maps: np.ndarray) -> np.ndarray:
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3:
        raise ValueError(f"Expected maps of shape (N, H, W), Received: shape={maps.shape}")
    return maps
