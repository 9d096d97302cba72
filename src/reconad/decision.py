"""The decision rule: thresholds from validation normals, and the verdicts they give.

Pure functions on arrays, shared by the calibrate and evaluate stages and by ``predict``.

A map decides through a threshold t and a minimal defect area A: an image is anomalous
iff its map binarised at t (``map > t``) has an 8-connected component of A pixels or more,
and the pixels of those components are its predicted defect mask (:func:`decide`).
Components are 8-connected, as the ground-truth regions of the evaluation protocol
(``reconad.metrics.connected_components``). Three rules choose t on validation normals:

- ``components`` (Bauer et al. v1, sec. 4.2): the smallest t at which no validation image
  is flagged;
- ``fpr``: the smallest t at which at most ``target_fpr`` of the validation images are
  flagged. With a target of 0 it is the component rule; a small target keeps one odd
  normal image from setting the threshold for all;
- ``percentile``: a percentile of all validation pixels, with A = 1.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from reconad.metrics import connected_components

RULES = ("components", "fpr", "percentile")


def component_threshold(val_maps: np.ndarray, min_area: int) -> float:
    """Smallest observed map value t whose binarisation keeps every component below A.

    Args:
        val_maps: (N, H, W) anomaly maps of normal validation images only.
        min_area: minimal defect area A in pixels (>= 1).

    Returns:
        t, one of the values of ``val_maps``.

    Raises:
        ValueError: empty or non-finite maps, wrong shape, or ``min_area`` < 1.
    """
    return float(image_thresholds(val_maps, min_area).max())


def fpr_threshold(val_maps: np.ndarray, min_area: int, target_fpr: float) -> float:
    """Smallest t at which at most ``floor(target_fpr * N)`` validation images are flagged.

    Args:
        val_maps: (N, H, W) anomaly maps of normal validation images only.
        min_area: minimal defect area A in pixels (>= 1).
        target_fpr: the share of normal images allowed to be flagged, in [0, 1).

    Raises:
        ValueError: empty or non-finite maps, wrong shape, ``min_area`` < 1, or
            ``target_fpr`` outside [0, 1).
    """
    if not 0.0 <= target_fpr < 1.0:
        raise ValueError(f"target_fpr must be in [0, 1), got {target_fpr}")
    per_image = np.sort(image_thresholds(val_maps, min_area))
    allowed = math.floor(target_fpr * per_image.size)
    return float(per_image[per_image.size - 1 - allowed])


def image_thresholds(val_maps: np.ndarray, min_area: int) -> np.ndarray:
    """For each map, the smallest of its values t at which it has no component of A pixels.

    Image i is flagged at t exactly when t is below its value here: the largest component
    of ``map > t`` can only shrink as t grows (the binary set at a higher t is a subset of
    the one at a lower t), so a binary search over the sorted distinct values of each map
    finds it with O(log(#distinct)) labellings. The map's maximum always qualifies
    (nothing is above it).

    Args:
        val_maps: (N, H, W) anomaly maps.
        min_area: minimal defect area A in pixels (>= 1).

    Returns:
        (N,) float64.
    """
    val_maps = _check_maps(val_maps)
    _check_min_area(min_area)
    return np.array([_image_threshold(one, min_area) for one in val_maps])


def _image_threshold(one_map: np.ndarray, min_area: int) -> float:
    candidates = np.unique(one_map)
    low, high = 0, candidates.size - 1
    while low < high:
        middle = (low + high) // 2
        if largest_component_sizes(one_map[None] > candidates[middle])[0] < min_area:
            high = middle
        else:
            low = middle + 1
    return float(candidates[low])


def percentile_threshold(val_maps: np.ndarray, percentile: float) -> float:
    """The ``percentile``-th percentile of all validation pixels (linear interpolation).

    Args:
        val_maps: (N, H, W) anomaly maps of normal validation images only.
        percentile: in (0, 100).

    Raises:
        ValueError: empty or non-finite maps, wrong shape, or percentile outside (0, 100).
    """
    val_maps = _check_maps(val_maps)
    if not 0.0 < percentile < 100.0:
        raise ValueError(f"percentile must be in (0, 100), got {percentile}")
    return float(np.percentile(val_maps, percentile))


def rule_thresholds(
    val_maps: np.ndarray, min_area: int, target_fpr: float, percentile: float
) -> dict[str, float]:
    """The threshold of every rule for one map: ``{rule: t}``."""
    return {
        "components": component_threshold(val_maps, min_area),
        "fpr": fpr_threshold(val_maps, min_area, target_fpr),
        "percentile": percentile_threshold(val_maps, percentile),
    }


def decision_threshold(calibration: dict[str, Any], name: str) -> tuple[float, int]:
    """The threshold of map ``name`` under the calibrated rule, and its minimal area.

    The percentile rule thresholds pixels only, so its minimal area is one pixel.
    """
    rule = calibration["rule"]
    threshold = float(calibration["maps"][name][rule])
    min_area = int(calibration["min_area"]) if rule != "percentile" else 1
    return threshold, min_area


def decide(maps: np.ndarray, threshold: float, min_area: int) -> tuple[np.ndarray, np.ndarray]:
    """Image decisions and predicted masks at a threshold and minimal defect area.

    Args:
        maps: (N, H, W) anomaly maps.
        threshold: t; pixels with map > t are candidates.
        min_area: A; only 8-connected candidate components of >= A pixels are defects.
            A = 1 reduces the rule to ``maps > threshold``.

    Returns:
        (image_pred (N,) bool: the image has a defect component,
        pixel_pred (N, H, W) bool: the pixels of its defect components).

    Raises:
        ValueError: empty or non-finite maps, wrong shape, or ``min_area`` < 1.
    """
    maps = _check_maps(maps)
    _check_min_area(min_area)
    labels, count = connected_components(maps > threshold)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    is_defect = sizes >= min_area
    is_defect[0] = False
    pixel_pred = is_defect[labels]
    return pixel_pred.any(axis=(1, 2)), pixel_pred


def largest_component_sizes(binary: np.ndarray) -> np.ndarray:
    """Pixel count of the largest 8-connected component of each image (0 when empty).

    Args:
        binary: (N, H, W) bool.

    Returns:
        (N,) int64.
    """
    binary = np.asarray(binary, dtype=bool)
    if binary.ndim != 3:
        raise ValueError(f"binary must be (N, H, W), got shape {binary.shape}")
    labels, count = connected_components(binary)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    image_of_label = np.zeros(count + 1, dtype=np.int64)
    image_index = np.broadcast_to(np.arange(binary.shape[0])[:, None, None], binary.shape)
    image_of_label[labels[binary]] = image_index[binary]
    largest = np.zeros(binary.shape[0], dtype=np.int64)
    np.maximum.at(largest, image_of_label[1:], sizes[1:])
    return largest


def map_statistics(val_maps: np.ndarray) -> dict[str, float]:
    """Summary of the validation maps, kept with the calibration for reading it later.

    Args:
        val_maps: (N, H, W) anomaly maps of normal validation images.

    Returns:
        {"mean", "std", "min", "p50", "p99", "max"} over all pixels, as plain floats.
    """
    val_maps = _check_maps(val_maps)
    p50, p99 = np.percentile(val_maps, [50.0, 99.0])
    return {
        "mean": float(val_maps.mean(dtype=np.float64)),
        "std": float(val_maps.std(dtype=np.float64)),
        "min": float(val_maps.min()),
        "p50": float(p50),
        "p99": float(p99),
        "max": float(val_maps.max()),
    }


def _check_maps(maps: np.ndarray) -> np.ndarray:
    maps = np.asarray(maps)
    if maps.ndim != 3:
        raise ValueError(f"anomaly maps must be (N, H, W), got shape {maps.shape}")
    if maps.size == 0:
        raise ValueError("anomaly maps are empty: calibration needs validation images")
    if not np.issubdtype(maps.dtype, np.floating):
        maps = maps.astype(np.float64)
    if not np.isfinite(maps).all():
        raise ValueError("anomaly maps contain NaN or infinite values")
    return maps


def _check_min_area(min_area: int) -> None:
    if int(min_area) != min_area or min_area < 1:
        raise ValueError(f"min_area must be an integer >= 1 (pixels), got {min_area}")
