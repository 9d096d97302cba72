"""Evaluation metrics of the MVTec AD protocol as plain array functions.

Image AUROC, pixel AUROC, AUPRO (per-region overlap integrated up to a false-positive
rate limit) and the metrics at a calibrated threshold (image TPR/TNR, image and pixel F1).
Every function takes NumPy arrays and returns floats or dicts of floats, so the evaluate
stage can write them to JSON and MLflow unchanged.

Conventions shared by all functions:

* labels are 1 (or True) for a defective image, masks are True on defective pixels;
* a pixel or image is *predicted* defective when its score is >= the threshold of a curve
  point, as in ``sklearn.metrics.roc_curve``; tied scores are one curve point, so a tie
  between a positive and a negative is a diagonal segment (the expected value of a random
  tie-break);
* connected regions use 8-connectivity, as in the MVTec AD evaluation code.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from sklearn.metrics import roc_auc_score, roc_curve

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def connected_components(binary: np.ndarray) -> tuple[np.ndarray, int]:
    """Label the 8-connected components of every image of a stack, independently.

    Args:
        binary: (N, H, W) bool; components never cross image borders.

    Returns:
        (labels (N, H, W) int32 with 0 = background and 1..count unique over the stack,
        count).
    """
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = EIGHT_CONNECTED
    labels, count = ndimage.label(binary, structure=structure)
    return labels, int(count)


def image_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of image scores.

    Args:
        scores: (N,) image scores, higher = more anomalous.
        labels: (N,) 1/True for a defective image, 0/False for a good one.

    Raises:
        ValueError: shapes differ, scores are not finite, or one class is missing.
    """
    scores, labels = _check_scores_labels(scores, labels)
    return float(roc_auc_score(labels, scores))


def pixel_auroc(maps: np.ndarray, masks: np.ndarray) -> float:
    """Area under the ROC curve over all pixels of all test images.

    Exact and equal to ``sklearn.metrics.roc_auc_score`` on the flattened pixels, computed
    as the Mann-Whitney statistic: the fraction of (defective, normal) pixel pairs ranked
    correctly, a tie counting one half. One sort of the normal pixels and a binary search
    per defective pixel keep 8M pixels fast and free of per-pixel Python objects.

    Args:
        maps: (N, H, W) anomaly maps.
        masks: (N, H, W) bool ground truth, True = defective pixel.

    Raises:
        ValueError: shapes differ, maps are not finite, or there are no defective or no
            normal pixels.
    """
    maps, masks = _check_maps_masks(maps, masks)
    normal = np.sort(maps[~masks])
    defective = maps[masks]
    below = np.searchsorted(normal, defective, side="left").sum(dtype=np.int64)
    not_above = np.searchsorted(normal, defective, side="right").sum(dtype=np.int64)
    return float((below + not_above) / (2.0 * defective.size * normal.size))


def roc_curve_points(
    scores: np.ndarray, labels: np.ndarray, max_points: int = 200
) -> dict[str, list[float]]:
    """Image-level ROC curve, thinned to at most ``max_points`` points for plots and logs.

    Args:
        scores: (N,) image scores.
        labels: (N,) 1/True for a defective image.
        max_points: upper bound on the number of returned points (>= 2); the first
            (0, 0) and last (1, 1) points are always kept.

    Returns:
        {"fpr": [...], "tpr": [...]} as plain floats, fpr non-decreasing.
    """
    if max_points < 2:
        raise ValueError(f"max_points must be >= 2, got {max_points}")
    scores, labels = _check_scores_labels(scores, labels)
    fpr, tpr, _ = roc_curve(labels, scores)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(max_points, len(fpr))).round())
    keep = keep.astype(int)
    return {"fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist()}


def pro_curve(
    maps: np.ndarray,
    masks: np.ndarray,
    max_fpr: float = 0.3,
    num_thresholds: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-region-overlap (PRO) curve of the MVTec AD protocol, up to ``max_fpr``.

    Regions are the 8-connected components of each ground-truth mask. At a threshold t
    (pixels with map >= t are predicted defective), PRO(t) is the mean over all regions of
    the whole test set of |region ∩ predicted| / |region|, and FPR(t) is the number of
    predicted normal pixels over the number of normal pixels of the whole test set (good
    images included). Because PRO(t) is a cumulative sum of the weight 1 / (|region| * R)
    of each defective pixel in decreasing score order, the exact curve at every distinct
    score needs one sort instead of one pass over the images per threshold.

    Args:
        maps: (N, H, W) anomaly maps.
        masks: (N, H, W) bool ground truth.
        max_fpr: the curve is cut at this FPR, in (0, 1]; its last point is interpolated
            linearly exactly at ``max_fpr``.
        num_thresholds: None returns the exact curve (one point per distinct score, plus
            the (0, 0) start); an int >= 2 resamples it at that many evenly spaced FPR
            values in [0, max_fpr] (for plots; the area is then approximate).

    Returns:
        (fpr, pro), both (P,) float64, fpr non-decreasing from 0 to ``max_fpr``.

    Raises:
        ValueError: shapes differ, maps are not finite, ``max_fpr`` is outside (0, 1],
            there is no defective pixel (no region: PRO is undefined) or no normal pixel
            (FPR is undefined).
    """
    if not 0.0 < max_fpr <= 1.0:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    if num_thresholds is not None and num_thresholds < 2:
        raise ValueError(f"num_thresholds must be None or >= 2, got {num_thresholds}")
    maps, masks = _check_maps_masks(maps, masks)
    fpr, pro = _cut_curve(*_pro_curve_points(maps, masks, max_fpr), max_fpr)
    if num_thresholds is None:
        return fpr, pro
    return _resample_curve(fpr, pro, max_fpr, num_thresholds)


def aupro(maps: np.ndarray, masks: np.ndarray, max_fpr: float = 0.3) -> float:
    """Area under the PRO curve for FPR in [0, max_fpr], divided by ``max_fpr``.

    The exact curve of ``pro_curve`` integrated with the trapezoid rule, so a perfect
    detector scores 1.0. Edge cases: no defective pixel or no normal pixel raises
    ValueError (see ``pro_curve``); ties in the scores form one curve point.

    Args:
        maps: (N, H, W) anomaly maps.
        masks: (N, H, W) bool ground truth.
        max_fpr: integration limit in (0, 1]; 0.3 in the MVTec AD protocol.
    """
    fpr, pro = pro_curve(maps, masks, max_fpr=max_fpr)
    return float(np.trapezoid(pro, fpr) / max_fpr)


def threshold_metrics(
    image_pred: np.ndarray,
    labels: np.ndarray,
    pixel_pred: np.ndarray,
    masks: np.ndarray,
) -> dict[str, float]:
    """Metrics of the binary decisions made at the calibrated threshold.

    A ratio whose denominator is zero (e.g. TPR without defective images, F1 with neither
    predicted nor true positives) is defined as 0.0, so the result is always a number.

    Args:
        image_pred: (N,) bool, True = image predicted defective.
        labels: (N,) 1/True for a defective image.
        pixel_pred: (N, H, W) bool predicted defect masks.
        masks: (N, H, W) bool ground-truth masks.

    Returns:
        {"tpr", "tnr", "tpr_tnr_mean", "image_f1", "pixel_f1"}; pixel F1 is accumulated
        over all pixels of all images (not averaged per image).
    """
    image_pred = _as_bool(image_pred, "image_pred")
    labels = _as_bool(labels, "labels")
    pixel_pred = _as_bool(pixel_pred, "pixel_pred")
    masks = _as_bool(masks, "masks")
    if image_pred.ndim != 1 or image_pred.shape != labels.shape:
        raise ValueError(
            f"image_pred and labels must be (N,) of equal length, got "
            f"{image_pred.shape} and {labels.shape}"
        )
    if pixel_pred.ndim != 3 or pixel_pred.shape != masks.shape:
        raise ValueError(
            f"pixel_pred and masks must be (N, H, W) of equal shape, got "
            f"{pixel_pred.shape} and {masks.shape}"
        )
    tp, fp, tn, fn = _confusion(image_pred, labels)
    tpr = _ratio(tp, tp + fn)
    tnr = _ratio(tn, tn + fp)
    ptp, pfp, _, pfn = _confusion(pixel_pred, masks)
    return {
        "tpr": tpr,
        "tnr": tnr,
        "tpr_tnr_mean": (tpr + tnr) / 2.0,
        "image_f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "pixel_f1": _ratio(2 * ptp, 2 * ptp + pfp + pfn),
    }


def evaluate_all(
    image_scores: np.ndarray,
    labels: np.ndarray,
    maps: np.ndarray,
    masks: np.ndarray,
    image_pred: np.ndarray,
    pixel_pred: np.ndarray,
    max_fpr: float,
) -> dict[str, float]:
    """All metrics of one test set, as plain Python floats ready for JSON.

    Args:
        image_scores: (N,) image scores.
        labels: (N,) 1/True for a defective image.
        maps: (N, H, W) anomaly maps.
        masks: (N, H, W) bool ground truth.
        image_pred: (N,) bool decisions at the calibrated threshold.
        pixel_pred: (N, H, W) bool predicted masks at the calibrated threshold.
        max_fpr: AUPRO integration limit.

    Returns:
        {"image_auroc", "pixel_auroc", "aupro", "tpr", "tnr", "tpr_tnr_mean",
        "image_f1", "pixel_f1"}.
    """
    return {
        "image_auroc": image_auroc(image_scores, labels),
        "pixel_auroc": pixel_auroc(maps, masks),
        "aupro": aupro(maps, masks, max_fpr=max_fpr),
        **threshold_metrics(image_pred, labels, pixel_pred, masks),
    }


def defect_type_metrics(
    image_scores: np.ndarray,
    labels: np.ndarray,
    defects: list[str],
    image_pred: np.ndarray,
) -> dict[str, dict[str, float]]:
    """Image AUROC and detection rate of each defect type, each against all good images.

    One AUROC over the whole test set hides which kinds of defect a detector misses;
    an inspection engineer chooses a method by the defects it must catch.

    Args:
        image_scores: (N,) image scores.
        labels: (N,) 1/True for a defective image.
        defects: (N,) defect type of each image (ignored for good images).
        image_pred: (N,) bool decisions at the calibrated threshold.

    Returns:
        ``{defect: {"images", "image_auroc", "detected"}}`` in sorted defect order;
        ``detected`` is the share of that type's images flagged at the threshold.

    Raises:
        ValueError: lengths differ, or there are no good or no defective images.
    """
    image_scores, labels = _check_scores_labels(image_scores, labels)
    image_pred = _as_bool(image_pred, "image_pred")
    if len(defects) != len(labels) or image_pred.shape != labels.shape:
        raise ValueError(
            f"defects, image_pred and labels must have equal length, got "
            f"{len(defects)}, {image_pred.shape[0]} and {labels.shape[0]}"
        )
    kinds = np.asarray(defects)
    good = ~labels
    out: dict[str, dict[str, float]] = {}
    for kind in sorted(set(kinds[labels].tolist())):
        of_kind = labels & (kinds == kind)
        subset = good | of_kind
        out[kind] = {
            "images": int(of_kind.sum()),
            "image_auroc": image_auroc(image_scores[subset], of_kind[subset]),
            "detected": float(image_pred[of_kind].mean()),
        }
    return out


def _pro_curve_points(
    maps: np.ndarray, masks: np.ndarray, max_fpr: float
) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, pro) from (0, 0) at every distinct score until FPR first exceeds max_fpr.

    Only pixels scoring at least as high as a normal pixel ranked just beyond the FPR
    limit are sorted: the curve below them is never integrated.
    """
    regions, count = connected_components(masks)
    region_sizes = np.bincount(regions.ravel(), minlength=count + 1)
    region_weights = np.zeros(count + 1, dtype=np.float64)
    region_weights[1:] = 1.0 / (region_sizes[1:] * count)
    scores, normal = maps.ravel(), ~masks.ravel()
    top = scores >= _score_beyond_fpr(scores[normal], max_fpr)
    overlap, false_positives = _ranked_cumulative_sums(
        scores[top], region_weights[regions.ravel()[top]], normal[top]
    )
    pro = _prepend_zero(np.minimum(overlap, 1.0))
    fpr = _prepend_zero(false_positives / np.count_nonzero(normal))
    return fpr, pro


def _score_beyond_fpr(normal_scores: np.ndarray, max_fpr: float) -> float:
    """A normal score whose threshold gives FPR > max_fpr (or the lowest normal score).

    Two normal pixels more than floor(max_fpr * count) make the margin robust to
    rounding in the product.
    """
    needed = min(normal_scores.size, int(np.floor(max_fpr * normal_scores.size)) + 2)
    kth = normal_scores.size - needed
    return float(np.partition(normal_scores, kth)[kth])


def _ranked_cumulative_sums(
    scores: np.ndarray, positive_weights: np.ndarray, negatives: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative positive weight and negative count above each distinct score.

    Args:
        scores: (P,) pixel scores.
        positive_weights: (P,) weight of each pixel on the positive axis.
        negatives: (P,) bool, True for a pixel counted on the negative axis.

    Returns:
        (positive, negative), each (D,) for the D distinct scores in decreasing order:
        sums over all pixels whose score is >= that distinct score.
    """
    order = np.argsort(scores)[::-1]
    ranked = scores[order]
    group_ends = np.append(np.flatnonzero(np.diff(ranked)), ranked.size - 1)
    positive = np.cumsum(positive_weights[order])[group_ends]
    negative = np.cumsum(negatives[order])[group_ends]
    return positive, negative


def _cut_curve(fpr: np.ndarray, pro: np.ndarray, max_fpr: float) -> tuple[np.ndarray, np.ndarray]:
    """Keep the points with fpr <= max_fpr and end the curve exactly at max_fpr."""
    kept = int(np.searchsorted(fpr, max_fpr, side="right"))
    cut_fpr, cut_pro = fpr[:kept], pro[:kept]
    if cut_fpr[-1] < max_fpr:
        x0, x1, y0, y1 = fpr[kept - 1], fpr[kept], pro[kept - 1], pro[kept]
        y_at_max = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
        cut_fpr = np.append(cut_fpr, max_fpr)
        cut_pro = np.append(cut_pro, y_at_max)
    return cut_fpr, cut_pro


def _resample_curve(
    fpr: np.ndarray, pro: np.ndarray, max_fpr: float, num_points: int
) -> tuple[np.ndarray, np.ndarray]:
    """The curve at evenly spaced FPR values; a vertical step takes its upper value."""
    last_of_each_fpr = np.append(np.flatnonzero(np.diff(fpr)), fpr.size - 1)
    grid = np.linspace(0.0, max_fpr, num_points)
    return grid, np.interp(grid, fpr[last_of_each_fpr], pro[last_of_each_fpr])


def _confusion(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int, int, int]:
    """(TP, FP, TN, FN) counts of two bool arrays of the same shape."""
    tp = int(np.count_nonzero(pred & truth))
    fp = int(np.count_nonzero(pred & ~truth))
    fn = int(np.count_nonzero(~pred & truth))
    tn = int(pred.size - tp - fp - fn)
    return tp, fp, tn, fn


def _ratio(numerator: int, denominator: int) -> float:
    """numerator / denominator with 0 / 0 defined as 0.0."""
    return float(numerator / denominator) if denominator else 0.0


def _prepend_zero(values: np.ndarray) -> np.ndarray:
    return np.concatenate(([0.0], values.astype(np.float64)))


def _as_bool(values: np.ndarray, name: str) -> np.ndarray:
    """A 0/1 or bool array as bool; any other value is an error, not silently True."""
    values = np.asarray(values)
    if values.dtype != bool and not np.isin(values, (0, 1)).all():
        raise ValueError(f"{name} must contain only 0/1 or bool values")
    return values.astype(bool)


def _check_scores_labels(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    labels = _as_bool(labels, "labels")
    if scores.ndim != 1 or scores.shape != labels.shape:
        raise ValueError(
            f"scores and labels must be (N,) of equal length, got {scores.shape} and {labels.shape}"
        )
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinite values")
    if labels.all() or not labels.any():
        raise ValueError(
            "image AUROC needs both defective (label 1) and good (label 0) images; "
            f"got {int(labels.sum())} defective out of {labels.size}"
        )
    return scores, labels


def _check_maps_masks(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    maps = np.asarray(maps)
    if not np.issubdtype(maps.dtype, np.floating):
        maps = maps.astype(np.float64)
    masks = _as_bool(masks, "masks")
    if maps.ndim != 3 or maps.shape != masks.shape:
        raise ValueError(
            f"maps and masks must be (N, H, W) of equal shape, got {maps.shape} and {masks.shape}"
        )
    if not np.isfinite(maps).all():
        raise ValueError("anomaly maps contain NaN or infinite values")
    defective = int(np.count_nonzero(masks))
    if defective == 0:
        raise ValueError("masks contain no defective pixel: pixel AUROC and PRO are undefined")
    if defective == masks.size:
        raise ValueError("masks contain no normal pixel: the false-positive rate is undefined")
    return maps, masks
