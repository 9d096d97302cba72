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
(a saturated background) from turning noise into alarms.

On products that are not aligned the true spread is the same everywhere, and a few
hundred images estimate it per pixel with noise that the standard score passes on
(docs/quality.md: the embedded textures). The statistics can therefore be pooled over
neighbouring positions (a Gaussian of some width), and the data choose the width: fitted
on half the training maps, the statistics that best predict the other half (held-out
Gaussian likelihood, both ways round) are at the width the alignment of the images
supports. No label and no validation image is needed for the choice.
"""

from __future__ import annotations

import io
import logging
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from reconad.errors import ReconadError
from reconad.io import atomic_write_bytes, reporting_os_errors

STATS_FILE = "pixel_stats.npz"
"""Where a model directory keeps its statistics."""

log = logging.getLogger("reconad")


@dataclass(frozen=True)
class PixelStats:
    """Mean and floored standard deviation of normal maps at each position ``(H, W)``."""

    mean: np.ndarray
    scale: np.ndarray
    """Standard deviation, at least the floor: always > 0."""

    def standardise(self, maps: np.ndarray) -> np.ndarray:
        """``(maps - mean) / scale`` for maps ``(N, H, W)`` of the statistics' size."""
        maps = np.asarray(maps, np.float32)
        if maps.shape[1:] != self.mean.shape:
            raise ReconadError(
                f"anomaly maps of size {maps.shape[1:]} cannot use pixel statistics of size "
                f"{self.mean.shape}; re-run training at this image size"
            )
        return ((maps - self.mean) / self.scale).astype(np.float32)


@dataclass(frozen=True)
class Moments:
    """Count, sum and sum of squares of maps at each position, in float64: all that the
    statistics and their held-out likelihood need, gathered one batch at a time."""

    count: int = 0
    total: np.ndarray | float = 0.0
    squares: np.ndarray | float = 0.0

    def add(self, maps: np.ndarray) -> Moments:
        """These moments and those of ``maps`` ``(n, H, W)``."""
        maps = np.asarray(maps, np.float64)
        return Moments(
            self.count + len(maps),
            self.total + maps.sum(axis=0),
            self.squares + (maps**2).sum(axis=0),
        )

    def __add__(self, other: Moments) -> Moments:
        return Moments(
            self.count + other.count, self.total + other.total, self.squares + other.squares
        )

    def stats(self, sigma: float, floor: float) -> PixelStats:
        """Mean and floored spread, pooled over a Gaussian neighbourhood of ``sigma``
        pixels (0: each position alone).

        Raises:
            ReconadError: no maps, or maps that never vary.
        """
        if self.count == 0:
            raise ReconadError("pixel statistics need at least one normal image; none were given")
        mean = self.total / self.count
        second = self.squares / self.count
        if sigma > 0:
            mean = ndimage.gaussian_filter(mean, sigma, mode="reflect")
            second = ndimage.gaussian_filter(second, sigma, mode="reflect")
        std = np.sqrt(np.maximum(second - mean**2, 0.0))
        typical = float(np.median(std))
        if not typical > 0.0:
            raise ReconadError(
                f"the anomaly maps of the {self.count} normal images do not vary at most "
                "positions (median standard deviation 0): pixel statistics cannot scale them"
            )
        scale = np.maximum(std, floor * typical)
        return PixelStats(mean.astype(np.float32), scale.astype(np.float32))

    def negative_log_likelihood(self, stats: PixelStats) -> float:
        """Mean Gaussian negative log-likelihood (without its constant) of these maps under
        ``stats``, from the moments alone."""
        mean = stats.mean.astype(np.float64)
        scale = stats.scale.astype(np.float64)
        squared_error = self.squares - 2.0 * mean * self.total + self.count * mean**2
        return float(np.mean(np.log(scale) + 0.5 * squared_error / (self.count * scale**2)))


def fold_moments(map_batches: Iterable[np.ndarray]) -> tuple[Moments, Moments]:
    """Moments of the even- and odd-numbered maps given in batches ``(n, H, W)``, never all
    in memory at once."""
    even, odd = Moments(), Moments()
    for batch in map_batches:
        first = even.count + odd.count
        even = even.add(batch[first % 2 :: 2])
        odd = odd.add(batch[1 - first % 2 :: 2])
    return even, odd


def held_out_sigma(
    folds: tuple[Moments, Moments], sigmas: Sequence[float], floor: float
) -> tuple[float, dict[float, float]]:
    """The pooling width under which each fold's statistics best predict the other fold,
    and the mean held-out negative log-likelihood of every candidate (the first of equals
    wins). A width at which a fold's maps never vary is not a candidate.

    Raises:
        ReconadError: no width gives statistics on both folds.
    """
    scores = {}
    for sigma in sigmas:
        try:
            fitted = [fold.stats(sigma, floor) for fold in folds]
        except ReconadError:
            continue
        scores[sigma] = float(
            np.mean([folds[1 - k].negative_log_likelihood(fitted[k]) for k in (0, 1)])
        )
    if not scores:
        counts = " and ".join(str(fold.count) for fold in folds)
        raise ReconadError(
            f"pixel statistics: folds of {counts} normal maps vary at no pooling width "
            f"{list(sigmas)}; give more normal images"
        )
    return min(scores, key=scores.__getitem__), scores


def fit_pixel_stats(
    map_batches: Iterable[np.ndarray], floor: float, sigmas: Sequence[float] = (0.0,)
) -> PixelStats:
    """Statistics of maps given in batches ``(n, H, W)``, never all in memory at once.

    Args:
        map_batches: maps of normal images.
        floor: the least standard deviation, as a fraction of their median over
            positions; > 0.
        sigmas: candidate pooling widths in pixels (0: none); with more than one, the
            :func:`held_out_sigma` of the maps.

    Raises:
        ReconadError: no maps, or maps that never vary.
    """
    if not floor > 0.0:
        raise ValueError(f"Expected floor > 0, Received: floor={floor}")
    if not sigmas or min(sigmas) < 0:
        raise ValueError(f"Expected widths >= 0, Received: sigmas={list(sigmas)}")
    folds = fold_moments(map_batches)
    sigma = sigmas[0]
    if len(sigmas) > 1 and min(fold.count for fold in folds) > 0:
        sigma, scores = held_out_sigma(folds, sigmas, floor)
        log.info(
            "pixel statistics pooled at sigma %.3g px: held-out negative log-likelihood %s",
            sigma,
            ", ".join(f"{s:g} px {nll:.3f}" for s, nll in scores.items()),
        )
    return (folds[0] + folds[1]).stats(sigma, floor)


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
