"""Per-category MVTec AD results as published by the papers reconad reimplements.

The report puts these next to our own numbers. Every value is copied from a table of the
paper (percentages converted to fractions); the "mean" entries are the published averages
over the 15 categories, not recomputed, so they keep the paper's own rounding.

Sources (Markdown copies in the shared ``papers/`` folder):

* ``sdc_ae_v2_restore``: Bauer, "Self-Supervised Training with Autoencoders for Visual
  Anomaly Detection" (v2). Table 2 (pixel AUROC, "model trained with objective (1)") and
  Table 3 (image AUROC), column "Ours". Objective (1) is reconad's ``restore``. Table 4
  repeats the texture rows of objective (1) with the same values, which confirms that
  Table 3 is objective (1) too.
* ``sdc_ae_v1``: the same title, v1 (single author, SDC with dilations 1..16). Table 2 (mean
  of image TPR and TNR at the calibrated threshold), Table 3 (pixel AUROC) and Table 4
  (image F1 / pixel F1 accumulated over the test set), column "Ours". v1 reports no image
  AUROC. v1 trained each category "by optimising either for objective (1) or (3)" and does
  not say which objective produced which row.
* ``aesc_stain_residual`` / ``aesc_stain_uncertainty``: Collin & De Vleeschouwer, "Improved
  anomaly detection by training an autoencoder with skip connections on images corrupted
  with Stain-shaped noise". Table I (image AUC) and Table II (pixel AUC), columns
  "AESc / Stain" under "Residual" and under "Uncertainty" (MC-dropout variance), greyscale
  256 x 256 images; image score = L2 norm of the map.
* ``patch_ae``: Cui, Liu & Lian, "Patch-wise Auto-Encoder for Visual Anomaly Detection".
  Table 1, column "Patch AE" (image AUROC in percent; the paper reports no pixel metric).

Not available: the v3 paper (Bauer, Nakajima & Müller) is only an abstract in ``papers/``,
without its tables; v2 Table 4 gives objective (2) (``contrast``) for the textures only.
"""

from __future__ import annotations

import math

MVTEC_TEXTURES = ("carpet", "grid", "leather", "tile", "wood")
MVTEC_OBJECTS = (
    "bottle",
    "cable",
    "capsule",
    "hazelnut",
    "metal_nut",
    "pill",
    "screw",
    "toothbrush",
    "transistor",
    "zipper",
)
MVTEC_CATEGORIES = (*MVTEC_TEXTURES, *MVTEC_OBJECTS)
MISSING = "–"

# Rows in the papers' order (textures, then objects); "mean" is the "avg. all" /
# "Global mean" / "Avg" row of the same table.
PUBLISHED: dict[str, dict[str, dict[str, float]]] = {
    # Bauer v2, Table 2 (pixel) and Table 3 (image), last column "Ours".
    "sdc_ae_v2_restore": {
        "carpet": {"image_auroc": 0.98, "pixel_auroc": 1.00},
        "grid": {"image_auroc": 1.00, "pixel_auroc": 1.00},
        "leather": {"image_auroc": 1.00, "pixel_auroc": 0.99},
        "tile": {"image_auroc": 1.00, "pixel_auroc": 0.99},
        "wood": {"image_auroc": 0.99, "pixel_auroc": 0.98},
        "bottle": {"image_auroc": 1.00, "pixel_auroc": 0.98},
        "cable": {"image_auroc": 0.83, "pixel_auroc": 0.96},
        "capsule": {"image_auroc": 0.84, "pixel_auroc": 0.97},
        "hazelnut": {"image_auroc": 0.99, "pixel_auroc": 0.98},
        "metal_nut": {"image_auroc": 0.81, "pixel_auroc": 0.97},
        "pill": {"image_auroc": 0.93, "pixel_auroc": 0.97},
        "screw": {"image_auroc": 0.94, "pixel_auroc": 0.99},
        "toothbrush": {"image_auroc": 1.00, "pixel_auroc": 0.99},
        "transistor": {"image_auroc": 0.99, "pixel_auroc": 0.96},
        "zipper": {"image_auroc": 0.98, "pixel_auroc": 0.99},
        "mean": {"image_auroc": 0.95, "pixel_auroc": 0.98},
    },
    # Bauer v1, last column "Ours" of Table 2 (tpr_tnr_mean), Table 3 (pixel_auroc) and
    # Table 4 ("image F1/pixel F1"). The captions of Tables 2 and 3 say "for texture
    # categories" but the tables list all 15 categories with "avg. all" rows; we read them
    # as covering the whole dataset, which matches methods.md §4 (0.92 for "all").
    "sdc_ae_v1": {
        "carpet": {"tpr_tnr_mean": 0.99, "pixel_auroc": 0.99, "image_f1": 0.99, "pixel_f1": 0.76},
        "grid": {"tpr_tnr_mean": 1.00, "pixel_auroc": 0.99, "image_f1": 1.00, "pixel_f1": 0.58},
        "leather": {"tpr_tnr_mean": 1.00, "pixel_auroc": 0.99, "image_f1": 1.00, "pixel_f1": 0.53},
        "tile": {"tpr_tnr_mean": 0.99, "pixel_auroc": 0.97, "image_f1": 0.99, "pixel_f1": 0.74},
        "wood": {"tpr_tnr_mean": 1.00, "pixel_auroc": 0.97, "image_f1": 1.00, "pixel_f1": 0.67},
        "bottle": {"tpr_tnr_mean": 0.99, "pixel_auroc": 0.95, "image_f1": 0.99, "pixel_f1": 0.62},
        "cable": {"tpr_tnr_mean": 0.74, "pixel_auroc": 0.96, "image_f1": 0.85, "pixel_f1": 0.54},
        "capsule": {"tpr_tnr_mean": 0.83, "pixel_auroc": 0.98, "image_f1": 0.91, "pixel_f1": 0.43},
        "hazelnut": {"tpr_tnr_mean": 0.93, "pixel_auroc": 0.98, "image_f1": 0.95, "pixel_f1": 0.59},
        "metal_nut": {
            "tpr_tnr_mean": 0.63,
            "pixel_auroc": 0.95,
            "image_f1": 0.91,
            "pixel_f1": 0.66,
        },
        "pill": {"tpr_tnr_mean": 0.86, "pixel_auroc": 0.98, "image_f1": 0.93, "pixel_f1": 0.37},
        "screw": {"tpr_tnr_mean": 0.86, "pixel_auroc": 0.99, "image_f1": 0.89, "pixel_f1": 0.44},
        "toothbrush": {
            "tpr_tnr_mean": 1.00,
            "pixel_auroc": 0.98,
            "image_f1": 1.00,
            "pixel_f1": 0.53,
        },
        "transistor": {
            "tpr_tnr_mean": 0.92,
            "pixel_auroc": 0.97,
            "image_f1": 0.90,
            "pixel_f1": 0.63,
        },
        "zipper": {"tpr_tnr_mean": 0.99, "pixel_auroc": 0.99, "image_f1": 0.99, "pixel_f1": 0.80},
        "mean": {"tpr_tnr_mean": 0.92, "pixel_auroc": 0.98, "image_f1": 0.95, "pixel_f1": 0.59},
    },
    # Collin, Tables I and II: of the nine value columns (Uncertainty: AE None, AE Stain,
    # AESc None, AESc Stain | Residual: AE None, AE Stain, AESc None, AESc Stain | a
    # baseline) this is the 8th. Table III, column "Stain", repeats the image values.
    "aesc_stain_residual": {
        "carpet": {"image_auroc": 0.89, "pixel_auroc": 0.79},
        "grid": {"image_auroc": 0.97, "pixel_auroc": 0.89},
        "leather": {"image_auroc": 0.89, "pixel_auroc": 0.95},
        "tile": {"image_auroc": 0.99, "pixel_auroc": 0.74},
        "wood": {"image_auroc": 0.95, "pixel_auroc": 0.84},
        "bottle": {"image_auroc": 0.98, "pixel_auroc": 0.84},
        "cable": {"image_auroc": 0.89, "pixel_auroc": 0.85},
        "capsule": {"image_auroc": 0.74, "pixel_auroc": 0.83},
        "hazelnut": {"image_auroc": 0.94, "pixel_auroc": 0.88},
        "metal_nut": {"image_auroc": 0.73, "pixel_auroc": 0.57},
        "pill": {"image_auroc": 0.84, "pixel_auroc": 0.74},
        "screw": {"image_auroc": 0.74, "pixel_auroc": 0.86},
        "toothbrush": {"image_auroc": 1.00, "pixel_auroc": 0.93},
        "transistor": {"image_auroc": 0.91, "pixel_auroc": 0.80},
        "zipper": {"image_auroc": 0.94, "pixel_auroc": 0.78},
        "mean": {"image_auroc": 0.89, "pixel_auroc": 0.82},
    },
    # Collin, Tables I and II, 4th value column (Uncertainty, AESc, Stain).
    "aesc_stain_uncertainty": {
        "carpet": {"image_auroc": 0.80, "pixel_auroc": 0.91},
        "grid": {"image_auroc": 0.97, "pixel_auroc": 0.95},
        "leather": {"image_auroc": 0.72, "pixel_auroc": 0.87},
        "tile": {"image_auroc": 0.95, "pixel_auroc": 0.79},
        "wood": {"image_auroc": 0.78, "pixel_auroc": 0.84},
        "bottle": {"image_auroc": 0.82, "pixel_auroc": 0.88},
        "cable": {"image_auroc": 0.87, "pixel_auroc": 0.84},
        "capsule": {"image_auroc": 0.71, "pixel_auroc": 0.93},
        "hazelnut": {"image_auroc": 0.90, "pixel_auroc": 0.89},
        "metal_nut": {"image_auroc": 0.62, "pixel_auroc": 0.62},
        "pill": {"image_auroc": 0.62, "pixel_auroc": 0.85},
        "screw": {"image_auroc": 0.80, "pixel_auroc": 0.95},
        "toothbrush": {"image_auroc": 0.99, "pixel_auroc": 0.93},
        "transistor": {"image_auroc": 0.90, "pixel_auroc": 0.78},
        "zipper": {"image_auroc": 0.93, "pixel_auroc": 0.90},
        "mean": {"image_auroc": 0.83, "pixel_auroc": 0.86},
    },
    # Cui, Table 1, last column "Patch AE" (percent / 100). Its "Avg" 99.48 is also the
    # mean of the 15 printed values.
    "patch_ae": {
        "carpet": {"image_auroc": 0.9987},
        "grid": {"image_auroc": 0.99},
        "leather": {"image_auroc": 1.00},
        "tile": {"image_auroc": 1.00},
        "wood": {"image_auroc": 0.9969},
        "bottle": {"image_auroc": 1.00},
        "cable": {"image_auroc": 0.9956},
        "capsule": {"image_auroc": 0.991},
        "hazelnut": {"image_auroc": 1.00},
        "metal_nut": {"image_auroc": 0.998},
        "pill": {"image_auroc": 0.982},
        "screw": {"image_auroc": 0.977},
        "toothbrush": {"image_auroc": 1.00},
        "transistor": {"image_auroc": 0.9965},
        "zipper": {"image_auroc": 0.997},
        "mean": {"image_auroc": 0.9948},
    },
}

# The published texture / object averages ("avg. textures" / "avg. objects", "Mean b" /
# "Mean c"); Patch AE gives none.
PUBLISHED_GROUP_MEANS: dict[str, dict[str, dict[str, float]]] = {
    "sdc_ae_v2_restore": {
        "textures": {"image_auroc": 0.99, "pixel_auroc": 0.99},
        "objects": {"image_auroc": 0.93, "pixel_auroc": 0.98},
    },
    "sdc_ae_v1": {
        "textures": {"tpr_tnr_mean": 0.99, "pixel_auroc": 0.98, "image_f1": 0.99, "pixel_f1": 0.66},
        "objects": {"tpr_tnr_mean": 0.88, "pixel_auroc": 0.97, "image_f1": 0.93, "pixel_f1": 0.56},
    },
    "aesc_stain_residual": {
        "textures": {"image_auroc": 0.94, "pixel_auroc": 0.84},
        "objects": {"image_auroc": 0.87, "pixel_auroc": 0.81},
    },
    "aesc_stain_uncertainty": {
        "textures": {"image_auroc": 0.84, "pixel_auroc": 0.87},
        "objects": {"image_auroc": 0.82, "pixel_auroc": 0.86},
    },
}

PUBLISHED_SOURCES: dict[str, str] = {
    "sdc_ae_v2_restore": "Bauer v2, Tables 2 (pixel) and 3 (image), objective (1) = restore",
    "sdc_ae_v1": "Bauer v1, Tables 2 (TPR/TNR mean), 3 (pixel AUROC) and 4 (image/pixel F1)",
    "aesc_stain_residual": "Collin & De Vleeschouwer, Tables I and II, AESc + Stain, residual",
    "aesc_stain_uncertainty": "Collin & De Vleeschouwer, Tables I and II, AESc + Stain, "
    "uncertainty (MC-dropout)",
    "patch_ae": "Cui et al., Table 1, Patch AE (image AUROC only)",
}

OURS_METRICS = ("image_auroc", "pixel_auroc")

# (method, column header, metrics joined by " / "): the headline image-level metric, then
# the pixel AUROC where the paper gives one.
PUBLISHED_COLUMNS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("sdc_ae_v2_restore", "SDC-AE v2 restore img / pix AUROC", ("image_auroc", "pixel_auroc")),
    ("sdc_ae_v1", "SDC-AE v1 TPR/TNR mean / pix AUROC", ("tpr_tnr_mean", "pixel_auroc")),
    (
        "aesc_stain_residual",
        "AESc+Stain residual img / pix AUROC",
        ("image_auroc", "pixel_auroc"),
    ),
    (
        "aesc_stain_uncertainty",
        "AESc+Stain uncertainty img / pix AUROC",
        ("image_auroc", "pixel_auroc"),
    ),
    ("patch_ae", "Patch AE img AUROC", ("image_auroc",)),
)


def published_table(
    ours: dict[str, dict[str, dict[str, float]]], categories: list[str]
) -> list[list[str]]:
    """Rows of the report table that puts our AUROCs next to the published ones.

    Our "mean" row is whatever ``ours`` holds (the mean over the categories that were run);
    the published "mean" row is the paper's mean over all 15 MVTec AD categories.

    Args:
        ours: ``{series: {category: {metric: value}, "mean": {...}}}``, the report's
            metrics tree.
        categories: the categories to list, in order; a "mean" row is appended.

    Returns:
        A header row, then one row per category and the mean row; every cell is a string,
        values with 3 decimals joined by " / ", "–" where a value is missing or NaN.
    """
    header = ["category"]
    header += [f"ours: {series} img / pix AUROC" for series in ours]
    header += [title for _, title, _ in PUBLISHED_COLUMNS]
    rows = [header]
    for row_name in [*categories, "mean"]:
        row = [row_name]
        row += [format_cell(values.get(row_name, {}), OURS_METRICS) for values in ours.values()]
        row += [
            format_cell(PUBLISHED[method].get(row_name, {}), metrics)
            for method, _, metrics in PUBLISHED_COLUMNS
        ]
        rows.append(row)
    return rows


def format_cell(values: dict[str, float], metrics: tuple[str, ...]) -> str:
    """``"0.950 / 0.980"`` for the given metrics; "–" for each missing or NaN value."""
    return " / ".join(format_value(values.get(metric)) for metric in metrics)


def format_value(value: float | None) -> str:
    """3 decimals; "–" for a value the paper or our run does not have (None or NaN)."""
    if value is None or not math.isfinite(value):
        return MISSING
    return f"{value:.3f}"
