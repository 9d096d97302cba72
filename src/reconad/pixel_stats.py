"""Per-pixel statistics of anomaly maps over normal images, and the standard scores they give.

On aligned products (a bottle seen from above, a screw on a fixed jig) a reconstruction
model's error is not uniform even on good images: it is always high where normal
appearance varies most (a bottle's rim and its reflections) and always low on plain
background. A defect on plain glass then scores below a good rim. Dividing each pixel's
error by its own spread over normal images (a z-score per position, PaDiM's per-position
statistics applied to a residual) asks "unusual *here*?" instead of "large?".

The spread is estimated from the training normals, so the calibration stage still sets
thresholds on validation normals the statistics never saw. A floor under each standard
deviation, a fraction of the median over pixels, keeps a pixel whose error never varied
(a saturated background) from turning noise into alarms. On products that are not
aligned the true spread is the same everywhere, and a few hundred images estimate it
with noise that the standard score passes on (docs/quality.md: the embedded textures).
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reconad.errors import ReconadError
from reconad.io import atomic_write_bytes, reporting_os_errors

STATS_FILE = "pixel_stats.npz"
"""Where a model directory keeps its statistics."""


@dataclass(frozen=True)
class PixelStats:
    """Mean and floored standard deviation of normal maps at each position ``(H, W)``."""

    mean: np.ndarray
    scale: np.ndarray
    """Standard deviation plus the floor: always > 0."""

    def standardise(self, maps: np.ndarray) -> np.ndarray:
        """``(maps - mean) / scale`` for maps ``(N, H, W)`` of the statistics' size."""
        maps = np.asarray(maps, np.float32)
        if maps.shape[1:] != self.mean.shape:
            raise ReconadError(
                f"anomaly maps of size {maps.shape[1:]} cannot use pixel statistics of size "
                f"{self.mean.shape}; re-run training at this image size"
            )
        return ((maps - self.mean) / self.scale).astype(np.float32)


def fit_pixel_stats(map_batches: Iterable[np.ndarray], floor: float) -> PixelStats:
    """Statistics of maps given in batches ``(n, H, W)``, never all in memory at once.

    Args:
        map_batches: maps of normal images.
        floor: added to every standard deviation, as a fraction of their median over
            positions; > 0.

    Raises:
        ReconadError: no maps, or maps that never vary.
    """
    if not floor > 0.0:
        raise ValueError(f"Expected floor > 0, Received: floor={floor}")
    count, total, squares = 0, np.float64(0.0), np.float64(0.0)
    for batch in map_batches:
        batch = np.asarray(batch, np.float64)
        total = total + batch.sum(axis=0)
        squares = squares + (batch**2).sum(axis=0)
        count += len(batch)
    if count == 0:
        raise ReconadError("pixel statistics need at least one normal image; none were given")
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    typical = float(np.median(std))
    if not typical > 0.0:
        raise ReconadError(
            f"the anomaly maps of the {count} normal images do not vary at most positions "
            "(median standard deviation 0): pixel statistics cannot scale them"
        )
    return PixelStats(mean.astype(np.float32), (std + floor * typical).astype(np.float32))


def save_pixel_stats(directory: Path, stats: PixelStats) -> None:
    """Write ``STATS_FILE`` in ``directory`` atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, mean=stats.mean, scale=stats.scale)
    atomic_write_bytes(Path(directory) / STATS_FILE, buffer.getvalue())


def load_pixel_stats(directory: Path) -> PixelStats:
    """Read the statistics :func:`save_pixel_stats` wrote.

    Raises:
        ReconadError: the file is missing or damaged, naming it.
    """
    path = Path(directory) / STATS_FILE
    if not path.is_file():
        raise ReconadError(f"{path}: pixel statistics missing; re-run training for this model")
    with reporting_os_errors(path):
        try:
            with np.load(path, allow_pickle=False) as stored:
                mean, scale = stored["mean"], stored["scale"]
        except (ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise ReconadError(f"{path}: not pixel statistics ({exc}); re-run training") from exc
    if mean.ndim != 2 or mean.shape != scale.shape or not np.all(scale > 0):
        raise ReconadError(
            f"{path}: expected (H, W) means and positive scales, got {mean.shape} and "
            f"{scale.shape}; re-run training"
        )
    return PixelStats(mean.astype(np.float32), scale.astype(np.float32))
