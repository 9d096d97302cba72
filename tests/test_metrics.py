"""Metrics against scikit-learn, a brute-force AUPRO reference and hand-computed values."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from scipy import ndimage
from skimage import measure
from sklearn.metrics import roc_auc_score, roc_curve

from reconad.metrics import (
    aupro,
    connected_components,
    defect_type_metrics,
    evaluate_all,
    image_auroc,
    pixel_auroc,
    pro_curve,
    roc_curve_points,
    threshold_metrics,
)


def reference_aupro(maps: np.ndarray, masks: np.ndarray, max_fpr: float) -> float:
    """Brute force: one full pass per distinct threshold, each region measured on its own."""
    regions = []
    for index, mask in enumerate(masks):
        labelled = measure.label(mask, connectivity=2)
        regions += [(index, labelled == label) for label in range(1, labelled.max() + 1)]
    normal = ~masks
    points = [(0.0, 0.0)]
    for threshold in np.unique(maps)[::-1]:
        predicted = maps >= threshold
        fpr = np.count_nonzero(predicted & normal) / np.count_nonzero(normal)
        pro = np.mean([predicted[index][region].mean() for index, region in regions])
        points.append((fpr, pro))
    area = 0.0
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x0 >= max_fpr:
            break
        if x1 > max_fpr:
            y1 = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
            x1 = max_fpr
        area += (x1 - x0) * (y0 + y1) / 2.0
    return area / max_fpr


def random_case(
    seed: int, n: int = 4, size: int = 16, levels: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Smooth maps and masks with several blobs per defective image; image 0 is good."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=bool)
    for index in range(1, n):
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, size - 3, 2)
            h, w = rng.integers(1, 5, 2)
            masks[index, y : y + h, x : x + w] = True
    maps = ndimage.gaussian_filter(rng.random((n, size, size)), (0, 1, 1)) + 0.3 * masks
    maps += 0.2 * rng.random((n, size, size))
    if levels is not None:
        maps = np.round(maps * levels) / levels
    return maps, masks


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("ties", [False, True])
def test_image_auroc_equals_sklearn(seed: int, ties: bool) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 60)
    labels[:2] = (0, 1)
    scores = rng.normal(size=60) + labels
    if ties:
        scores = np.round(scores * 2) / 2
    assert image_auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_image_auroc_hand_computed() -> None:
    # Pairs (defective, good): (0.35, 0.1) ok, (0.35, 0.4) wrong, (0.8, *) ok -> 3 / 4.
    assert image_auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    # A tie between a defective and a good image counts one half.
    assert image_auroc(np.array([0.5, 0.5]), np.array([False, True])) == 0.5


def test_image_auroc_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="both defective"):
        image_auroc(np.array([0.1, 0.2]), np.array([1, 1]))
    with pytest.raises(ValueError, match="equal length"):
        image_auroc(np.array([0.1, 0.2, 0.3]), np.array([0, 1]))
    with pytest.raises(ValueError, match="0/1"):
        image_auroc(np.array([0.1, 0.2]), np.array([0, 2]))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("levels", [None, 8])
def test_pixel_auroc_equals_sklearn(seed: int, levels: int | None) -> None:
    maps, masks = random_case(seed, n=5, size=24, levels=levels)
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(maps, masks) == pytest.approx(expected, abs=1e-12)


def test_pixel_auroc_hand_computed() -> None:
    maps = np.array([[[0.9, 0.2], [0.5, 0.5]]])
    masks = np.array([[[True, False], [True, False]]])
    # Defective 0.9 beats both normals (2), defective 0.5 beats 0.2 and ties 0.5 (1.5).
    assert pixel_auroc(maps, masks) == pytest.approx(3.5 / 4)


def test_roc_curve_points_thinned_and_on_sklearn_curve() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    scores = rng.normal(size=500) + labels
    points = roc_curve_points(scores, labels, max_points=50)
    fpr, tpr, _ = roc_curve(labels, scores)
    assert 2 < len(points["fpr"]) <= 50
    assert (points["fpr"][0], points["tpr"][0]) == (0.0, 0.0)
    assert (points["fpr"][-1], points["tpr"][-1]) == (1.0, 1.0)
    assert np.all(np.diff(points["fpr"]) >= 0)
    on_curve = set(zip(fpr.tolist(), tpr.tolist(), strict=True))
    assert all(pair in on_curve for pair in zip(points["fpr"], points["tpr"], strict=True))
    assert all(isinstance(value, float) for value in points["fpr"] + points["tpr"])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("levels", [None, 6])
@pytest.mark.parametrize("max_fpr", [0.3, 0.05, 1.0])
def test_aupro_equals_brute_force(seed: int, levels: int | None, max_fpr: float) -> None:
    maps, masks = random_case(seed, levels=levels)
    assert measure.label(masks[1:], connectivity=2).max() >= 3
    expected = reference_aupro(maps, masks, max_fpr)
    assert 0.0 < expected < 1.0
    assert aupro(maps, masks, max_fpr=max_fpr) == pytest.approx(expected, abs=1e-6)


def test_aupro_perfect_and_inverted_detectors() -> None:
    _, masks = random_case(5)
    assert aupro(masks.astype(np.float32), masks) == pytest.approx(1.0, abs=1e-12)
    assert aupro(-masks.astype(np.float32), masks) == pytest.approx(0.0, abs=1e-12)


def test_aupro_hand_computed() -> None:
    # One 4x4 image, a 2-pixel region scored 0.9 and 0.5; 14 normal pixels, the two highest
    # at 0.7 and 0.6. Descending: 0.9 -> (fpr 0, pro 1/2), 0.7 -> (1/14, 1/2),
    # 0.6 -> (2/14, 1/2), 0.5 -> (2/14, 1). Area to 0.3: 1/2 * 2/14 + 1 * (0.3 - 2/14)
    # = 0.3 - 1/14, divided by 0.3: 1 - 1 / 4.2 = 0.76190476...
    maps = np.array([[[0.9, 0.5, 0.7, 0.6]] + [[0.1, 0.2, 0.3, 0.4]] * 3])
    masks = np.zeros((1, 4, 4), dtype=bool)
    masks[0, 0, :2] = True
    assert aupro(maps, masks) == pytest.approx(1.0 - 1.0 / 4.2, abs=1e-12)
    # Tie the region's 0.5 with the 0.6 normal: the step becomes a diagonal from
    # (1/14, 1/2) to (2/14, 1), area 1/2 * 1/14 + 3/4 * 1/14 + (0.3 - 2/14).
    maps[0, 0, 3] = 0.5
    expected = (0.5 / 14 + 0.75 / 14 + 0.3 - 2 / 14) / 0.3
    assert aupro(maps, masks) == pytest.approx(expected, abs=1e-12)


def test_pro_curve_is_cut_exactly_at_max_fpr() -> None:
    maps, masks = random_case(7, n=6, size=20)
    fpr, pro = pro_curve(maps, masks, max_fpr=0.2)
    assert (fpr[0], pro[0]) == (0.0, 0.0)
    assert fpr[-1] == pytest.approx(0.2, abs=1e-15)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= -1e-12)
    grid_fpr, grid_pro = pro_curve(maps, masks, max_fpr=0.2, num_thresholds=400)
    assert grid_fpr.shape == grid_pro.shape == (400,)
    exact_area = np.trapezoid(pro, fpr)
    assert np.trapezoid(grid_pro, grid_fpr) == pytest.approx(exact_area, rel=2e-2)


def test_regions_are_eight_connected() -> None:
    masks = np.zeros((1, 4, 4), dtype=bool)
    masks[0, 0, 0] = masks[0, 0, 1] = masks[0, 1, 2] = True
    _, count = connected_components(masks)
    assert count == 1
    # Only the diagonal pixel detected: one 3-pixel region gives PRO 1/3 (two 4-connected
    # regions would give 1/2).
    maps = np.zeros((1, 4, 4))
    maps[0, 1, 2] = 1.0
    _, pro = pro_curve(maps, masks, max_fpr=1.0)
    assert pro[1] == pytest.approx(1 / 3)


def test_pro_curve_rejects_undefined_cases() -> None:
    maps = np.random.default_rng(0).random((2, 8, 8))
    with pytest.raises(ValueError, match="no defective pixel"):
        aupro(maps, np.zeros((2, 8, 8), dtype=bool))
    with pytest.raises(ValueError, match="no normal pixel"):
        aupro(maps, np.ones((2, 8, 8), dtype=bool))
    with pytest.raises(ValueError, match="max_fpr"):
        aupro(maps, maps > 0.5, max_fpr=0.0)
    with pytest.raises(ValueError, match="NaN"):
        aupro(np.full((2, 8, 8), np.nan), maps > 0.5)


def test_threshold_metrics_hand_made() -> None:
    labels = np.array([1, 1, 1, 0, 0])
    image_pred = np.array([True, True, False, True, False])  # TP 2, FN 1, FP 1, TN 1
    masks = np.zeros((5, 2, 2), dtype=bool)
    pixel_pred = np.zeros((5, 2, 2), dtype=bool)
    masks[0, 0] = True  # 2 true pixels
    pixel_pred[0, 0, 0] = pixel_pred[3, 1, 1] = pixel_pred[3, 1, 0] = True  # TP 1, FP 2, FN 1
    result = threshold_metrics(image_pred, labels, pixel_pred, masks)
    assert result == pytest.approx(
        {
            "tpr": 2 / 3,
            "tnr": 1 / 2,
            "tpr_tnr_mean": (2 / 3 + 1 / 2) / 2,
            "image_f1": 4 / (4 + 1 + 1),
            "pixel_f1": 2 / (2 + 2 + 1),
        }
    )


def test_threshold_metrics_zero_over_zero_is_zero() -> None:
    nothing = np.zeros((2, 3, 3), dtype=bool)
    result = threshold_metrics(np.zeros(2, bool), np.zeros(2, int), nothing, nothing)
    assert result == {"tpr": 0.0, "tnr": 1.0, "tpr_tnr_mean": 0.5, "image_f1": 0.0, "pixel_f1": 0.0}


def test_evaluate_all_returns_json_ready_floats() -> None:
    maps, masks = random_case(3)
    labels = masks.any(axis=(1, 2))
    scores = maps.max(axis=(1, 2))
    result = evaluate_all(scores, labels, maps, masks, scores > 0.8, maps > 0.8, max_fpr=0.3)
    assert set(result) == {
        "image_auroc",
        "pixel_auroc",
        "aupro",
        "tpr",
        "tnr",
        "tpr_tnr_mean",
        "image_f1",
        "pixel_f1",
    }
    assert all(type(value) is float for value in result.values())
    assert result["aupro"] == pytest.approx(reference_aupro(maps, masks, 0.3), abs=1e-6)
    json.dumps(result)


def test_defect_type_metrics_against_sklearn_per_type() -> None:
    rng = np.random.default_rng(7)
    defects = ["good"] * 6 + ["crack"] * 4 + ["hole"] * 3
    labels = np.array([0] * 6 + [1] * 7)
    scores = rng.random(13)
    image_pred = np.array([False] * 5 + [True] + [True, False, True, True] + [False] * 3)
    result = defect_type_metrics(scores, labels, defects, image_pred)
    assert list(result) == ["crack", "hole"]
    for kind, rows, detected in (("crack", slice(6, 10), 3 / 4), ("hole", slice(10, 13), 0.0)):
        subset = np.r_[np.arange(6), np.arange(13)[rows]]
        expected = roc_auc_score(labels[subset], scores[subset])
        assert result[kind] == pytest.approx(
            {"images": rows.stop - rows.start, "image_auroc": expected, "detected": detected}
        )


def test_defect_type_metrics_hand_computed() -> None:
    # good 0.1, 0.5; scratch 0.4 (beats one good of two), 0.9 (beats both) -> 3 / 4.
    result = defect_type_metrics(
        np.array([0.1, 0.5, 0.4, 0.9]),
        np.array([0, 0, 1, 1]),
        ["good", "good", "scratch", "scratch"],
        np.array([False, True, False, True]),
    )
    assert result == {"scratch": {"images": 2, "image_auroc": 0.75, "detected": 0.5}}


def test_defect_type_metrics_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="equal length"):
        defect_type_metrics(np.array([0.1, 0.9]), np.array([0, 1]), ["good"], np.zeros(2, bool))
