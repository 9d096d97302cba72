"""Threshold calibration on normal validation maps, and the decision rule it serves.

The component rule (Bauer et al. v1, sec. 4.2): with a minimal defect area A, the
threshold t is the smallest value such that no validation map binarised at t
(map > t) has a connected component of A pixels or more. At test time ``decide`` flags an
image iff its map binarised at t has such a component, so the calibrated t flags no
validation image. Components are 8-connected, as the ground-truth regions of the
evaluation protocol (``reconad.metrics.connected_components``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from reconad import paths
from reconad.config import Params
from reconad.data.layout import load_split
from reconad.ensemble import assemble
from reconad.io import atomic_write_json
from reconad.metrics import connected_components
from reconad.score import load_trained, score_images, variant_model_dir


def component_threshold(val_maps: np.ndarray, min_area: int) -> float:
    """Smallest observed map value t whose binarisation keeps every component below A.

    The largest component of ``val_maps > t`` can only shrink as t grows (the binary set
    at a higher t is a subset of the one at a lower t), so a binary search over the sorted
    distinct values of ``val_maps`` finds the exact smallest satisfying candidate with
    O(log(#distinct)) labellings. The maximum value always satisfies the rule (nothing
    is above it), so the search always succeeds; at the next lower candidate the largest
    component has at least ``min_area`` pixels, unless t is already the smallest value.

    Args:
        val_maps: (N, H, W) anomaly maps of normal validation images only.
        min_area: minimal defect area A in pixels (>= 1).

    Returns:
        t, one of the values of ``val_maps``.

    Raises:
        ValueError: empty or non-finite maps, wrong shape, or ``min_area`` < 1.
    """
    val_maps = _check_maps(val_maps)
    _check_min_area(min_area)
    candidates = np.unique(val_maps)
    low, high = 0, candidates.size - 1
    while low < high:
        middle = (low + high) // 2
        if _largest_component(val_maps > candidates[middle]) < min_area:
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
    """Summary of the validation maps, used to put the maps of several models on one scale.

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


def calibrate_model(
    params: Params,
    variant: str,
    category: str,
    prepared_dir: Path = paths.PREPARED_DIR,
    model_dir: Path | None = None,
) -> dict[str, Any]:
    """The calibrate stage: thresholds of every map of a trained model, from the
    validation normals of ``category`` only, saved as ``threshold.json`` next to it.

    Both rules are computed and stored; ``calibrate.rule`` says which one decides.
    The validation map statistics are kept too, to normalise maps for ensembles. An
    ensemble variant is first assembled from its calibrated members.
    """
    model_dir = model_dir or variant_model_dir(params, variant, category)
    if params.variant(variant).method == "ensemble":
        assemble(params, variant, category, out_dir=model_dir)
    trained = load_trained(model_dir, params.score)
    val = load_split(paths.prepared_category(category, prepared_dir)).val
    scores = score_images(trained.detector, val)
    min_area = params.calibrate.min_area_for(category)
    calibration = {
        "rule": params.calibrate.rule,
        "min_area": min_area,
        "percentile": params.calibrate.percentile,
        "primary": trained.primary_map,
        "validation_images": len(val),
        "score": params.score.model_dump(mode="json"),
        "maps": {
            name: {
                "components": component_threshold(maps, min_area),
                "percentile": percentile_threshold(maps, params.calibrate.percentile),
                "stats": map_statistics(maps),
            }
            for name, maps in scores.maps.items()
        },
    }
    atomic_write_json(model_dir / paths.THRESHOLD_FILE, calibration)
    return calibration


def _largest_component(binary: np.ndarray) -> int:
    """Pixel count of the largest component over a whole (N, H, W) stack (0 when empty)."""
    labels, count = connected_components(binary)
    return int(np.bincount(labels.ravel(), minlength=count + 1)[1:].max(initial=0))


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
