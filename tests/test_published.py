"""The published MVTec AD numbers: spot checks against the papers and the report table."""

from __future__ import annotations

import math

import pytest

from reconad.published import (
    MVTEC_OBJECTS,
    MVTEC_TEXTURES,
    PUBLISHED,
    PUBLISHED_COLUMNS,
    PUBLISHED_GROUP_MEANS,
    PUBLISHED_SOURCES,
    published_table,
)
from reconad.report import REPORT_METRICS

METHODS = (
    "sdc_ae_v2_restore",
    "sdc_ae_v1",
    "aesc_stain_residual",
    "aesc_stain_uncertainty",
    "patch_ae",
)


@pytest.mark.parametrize(
    ("method", "category", "metric", "expected"),
    [
        # bauer-ssae-v2.md Table 2: "metal nut 0.76 0.82 0.94 0.89 0.94 0.91 0.92 0.93 0.93 0.97"
        ("sdc_ae_v2_restore", "metal_nut", "pixel_auroc", 0.97),
        # bauer-ssae-v2.md Table 3: "cable 0.82 0.81 0.70 0.83"
        ("sdc_ae_v2_restore", "cable", "image_auroc", 0.83),
        # bauer-ssae-v2.md Table 3: "carpet 0.84 0.93 0.99 0.98"
        ("sdc_ae_v2_restore", "carpet", "image_auroc", 0.98),
        # bauer-ssae-v1.md Table 2: "Metal Nut 0.54 0.73 0.50 0.65 - 0.67 <b>0.83</b> 0.63"
        ("sdc_ae_v1", "metal_nut", "tpr_tnr_mean", 0.63),
        # bauer-ssae-v1.md Table 3: "Tile 0.59 0.51 0.50 0.93 0.80 0.88 0.90 0.94 <b>0.97</b>"
        ("sdc_ae_v1", "tile", "pixel_auroc", 0.97),
        # bauer-ssae-v1.md Table 4: "Zipper 0.75/0.29 0.77/0.15 0.99/0.58 <b>0.99/0.80</b>"
        ("sdc_ae_v1", "zipper", "pixel_f1", 0.80),
        ("sdc_ae_v1", "zipper", "image_f1", 0.99),
        # collin-aesc-stain.md Table I: "Screw 0.45 0.77 0.13 <u>0.80</u> 0.68 0.60 0.30 0.74
        # <b>1.00</b>" -> uncertainty AESc Stain 0.80, residual AESc Stain 0.74
        ("aesc_stain_uncertainty", "screw", "image_auroc", 0.80),
        ("aesc_stain_residual", "screw", "image_auroc", 0.74),
        # collin-aesc-stain.md Table II: "Carpet 0.55 0.54 0.43 <b>0.91</b> 0.57 0.62 0.52
        # <u>0.79</u> 0.59"
        ("aesc_stain_uncertainty", "carpet", "pixel_auroc", 0.91),
        ("aesc_stain_residual", "carpet", "pixel_auroc", 0.79),
        # cui-patch-ae.md Table 1: "Cable 86 82 91 81.9 80.6 99.1 96.9 98.5 99.8 99.6 - 99.56"
        ("patch_ae", "cable", "image_auroc", 0.9956),
        # cui-patch-ae.md Table 1: "Screw 96 96 95 84.5 86.3 97.6 97.9 99.7 97.3 98.9 - 97.7"
        ("patch_ae", "screw", "image_auroc", 0.977),
    ],
)
def test_spot_checks_against_paper_text(
    method: str, category: str, metric: str, expected: float
) -> None:
    assert PUBLISHED[method][category][metric] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("method", "group", "metric", "expected"),
    [
        # methods.md §4: SDC-AE v2 (restore) pixel AUROC 0.98, image AUROC 0.95.
        ("sdc_ae_v2_restore", "mean", "pixel_auroc", 0.98),
        ("sdc_ae_v2_restore", "mean", "image_auroc", 0.95),
        # methods.md §4: SDC-AE v1 mean of TPR and TNR 0.92, pixel F1 0.59.
        ("sdc_ae_v1", "mean", "tpr_tnr_mean", 0.92),
        ("sdc_ae_v1", "mean", "pixel_f1", 0.59),
        # methods.md §4: AESc + Stain image AUROC 0.89 (residual), pixel AUROC 0.82 / 0.86.
        ("aesc_stain_residual", "mean", "image_auroc", 0.89),
        ("aesc_stain_residual", "mean", "pixel_auroc", 0.82),
        ("aesc_stain_uncertainty", "mean", "pixel_auroc", 0.86),
        # methods.md §4: Patch AE image AUROC 0.9948.
        ("patch_ae", "mean", "image_auroc", 0.9948),
        # methods.md §4: textures 0.99 / 0.99 (v2), 0.99 (v1 TPR/TNR mean).
        ("sdc_ae_v2_restore", "textures", "pixel_auroc", 0.99),
        ("sdc_ae_v2_restore", "textures", "image_auroc", 0.99),
        ("sdc_ae_v1", "textures", "tpr_tnr_mean", 0.99),
    ],
)
def test_means_match_methods_md_headlines(
    method: str, group: str, metric: str, expected: float
) -> None:
    means = PUBLISHED[method]["mean"] if group == "mean" else PUBLISHED_GROUP_MEANS[method][group]
    assert means[metric] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_covers_the_15_categories_with_valid_metrics(method: str) -> None:
    per_category = PUBLISHED[method]
    assert set(per_category) == {*MVTEC_TEXTURES, *MVTEC_OBJECTS, "mean"}
    metric_sets = {frozenset(values) for values in per_category.values()}
    assert len(metric_sets) == 1
    assert set(next(iter(metric_sets))) <= set(REPORT_METRICS)
    assert all(0.0 <= v <= 1.0 for values in per_category.values() for v in values.values())
    assert method in PUBLISHED_SOURCES


@pytest.mark.parametrize("method", METHODS)
def test_published_means_agree_with_the_rows_up_to_rounding(method: str) -> None:
    """Catches a mistyped row: the papers round rows and means to 2 decimals (±0.005 each)."""
    per_category = PUBLISHED[method]
    groups = {
        "mean": (*MVTEC_TEXTURES, *MVTEC_OBJECTS),
        "textures": MVTEC_TEXTURES,
        "objects": MVTEC_OBJECTS,
    }
    published = {"mean": per_category["mean"], **PUBLISHED_GROUP_MEANS.get(method, {})}
    for group, means in published.items():
        for metric, mean in means.items():
            rows = [per_category[c][metric] for c in groups[group]]
            assert sum(rows) / len(rows) == pytest.approx(mean, abs=0.01), (group, metric)


def test_table_shape_header_and_formatting() -> None:
    ours = {
        "sdc_ae": {
            "carpet": {"image_auroc": 0.91234, "pixel_auroc": 0.95},
            "mean": {"image_auroc": 0.91234, "pixel_auroc": 0.95},
        },
        "aesc@uncertainty": {
            "carpet": {"image_auroc": 0.5, "pixel_auroc": math.nan},
            "mean": {"image_auroc": 0.5, "pixel_auroc": math.nan},
        },
    }
    rows = published_table(ours, ["carpet", "brick"])

    assert len(rows) == 1 + 2 + 1
    assert all(len(row) == 1 + len(ours) + len(PUBLISHED_COLUMNS) for row in rows)
    header = rows[0]
    assert header[:3] == [
        "category",
        "ours: sdc_ae img / pix AUROC",
        "ours: aesc@uncertainty img / pix AUROC",
    ]
    assert header[3:] == [
        "SDC-AE v2 restore img / pix AUROC",
        "SDC-AE v1 TPR/TNR mean / pix AUROC",
        "AESc+Stain residual img / pix AUROC",
        "AESc+Stain uncertainty img / pix AUROC",
        "Patch AE img AUROC",
    ]
    by_name = {row[0]: row for row in rows[1:]}
    assert [row[0] for row in rows[1:]] == ["carpet", "brick", "mean"]
    assert by_name["carpet"] == [
        "carpet",
        "0.912 / 0.950",
        "0.500 / –",
        "0.980 / 1.000",
        "0.990 / 0.990",
        "0.890 / 0.790",
        "0.800 / 0.910",
        "0.999",
    ]
    assert by_name["brick"] == ["brick", "– / –", "– / –", "– / –", "– / –", "– / –", "– / –", "–"]
    assert by_name["mean"] == [
        "mean",
        "0.912 / 0.950",
        "0.500 / –",
        "0.950 / 0.980",
        "0.920 / 0.980",
        "0.890 / 0.820",
        "0.830 / 0.860",
        "0.995",
    ]


def test_table_without_our_series_still_lists_the_papers() -> None:
    rows = published_table({}, ["zipper"])
    assert rows[0][0] == "category"
    assert rows[1] == [
        "zipper",
        "0.980 / 0.990",
        "0.990 / 0.990",
        "0.940 / 0.780",
        "0.930 / 0.900",
        "0.997",
    ]
