"""Pictures of anomaly maps: heatmaps, overlays and report panels, as PNG bytes."""

from __future__ import annotations

import io

import cv2
import numpy as np

OVERLAY_ALPHA = 0.45
MASK_COLOUR_BGR = (0, 255, 0)
PREDICTION_COLOUR_BGR = (0, 0, 255)


def to_bgr_uint8(image: np.ndarray) -> np.ndarray:
    """(H, W, C) float image in [0, 1] -> (H, W, 3) uint8 BGR for OpenCV."""
    image8 = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    if image8.ndim == 2 or image8.shape[-1] == 1:
        return cv2.cvtColor(image8.reshape(image8.shape[:2]), cv2.COLOR_GRAY2BGR)
    return cv2.cvtColor(image8, cv2.COLOR_RGB2BGR)


def heatmap(anomaly_map: np.ndarray, threshold: float) -> np.ndarray:
    """Colour-mapped anomaly map, scaled so the threshold sits at the middle colour.

    A fixed scale (0 to twice the threshold) keeps colours comparable between images,
    unlike per-image min-max scaling which paints every normal image red somewhere.
    """
    top = 2.0 * threshold if threshold > 0 else float(anomaly_map.max()) or 1.0
    scaled = np.clip(anomaly_map / top, 0.0, 1.0)
    return cv2.applyColorMap(np.rint(scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)


def overlay(image: np.ndarray, anomaly_map: np.ndarray, threshold: float) -> np.ndarray:
    """The heatmap blended over the image (BGR uint8)."""
    return cv2.addWeighted(
        to_bgr_uint8(image), 1 - OVERLAY_ALPHA, heatmap(anomaly_map, threshold), OVERLAY_ALPHA, 0
    )


def draw_contours(canvas: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return cv2.drawContours(canvas.copy(), contours, -1, colour, 1)


def encode_png(image: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buffer.tobytes()


def example_panel(
    image: np.ndarray,
    anomaly_map: np.ndarray,
    truth: np.ndarray,
    predicted: np.ndarray,
    threshold: float,
    title: str,
) -> bytes:
    """Image | overlay with ground truth (green) and prediction (red) outlines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    marked = draw_contours(overlay(image, anomaly_map, threshold), truth, MASK_COLOUR_BGR)
    marked = draw_contours(marked, predicted, PREDICTION_COLOUR_BGR)
    figure, axes = plt.subplots(1, 2, figsize=(6, 3.2), dpi=100)
    axes[0].imshow(cv2.cvtColor(to_bgr_uint8(image), cv2.COLOR_BGR2RGB))
    axes[0].set_title("image", fontsize=8)
    axes[1].imshow(cv2.cvtColor(marked, cv2.COLOR_BGR2RGB))
    axes[1].set_title("map; truth green, prediction red", fontsize=8)
    for axis in axes:
        axis.axis("off")
    figure.suptitle(title, fontsize=8)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def pick_examples(
    image_scores: np.ndarray, labels: np.ndarray, count: int
) -> list[tuple[str, int]]:
    """Indices of the most and least convincing test images of each class.

    Best = highest-scored defects and lowest-scored normals; worst = the opposite.
    """
    chosen: list[tuple[str, int]] = []
    for label, kind in ((1, "defect"), (0, "good")):
        indices = np.flatnonzero(labels == label)
        if indices.size == 0:
            continue
        order = indices[np.argsort(image_scores[indices], kind="stable")]
        best, worst = (order[::-1], order) if label == 1 else (order, order[::-1])
        chosen += [(f"best_{kind}", int(i)) for i in best[:count]]
        chosen += [(f"worst_{kind}", int(i)) for i in worst[:count]]
    return chosen
