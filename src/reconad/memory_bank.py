"""Memory bank of normal feature vectors: build, subsample (coreset), search, score, save.

Patch AE and PatchCore score a test vector by its distance to the nearest vector of the
bank built from the training images. Banks reach ~10^5-10^6 vectors, so the search runs in
chunks on the accelerator (TensorFlow matmuls) with memory bounded by the chunk size, and
the bank can be thinned by greedy k-center coreset selection.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Annotated

import keras
import numpy as np
import tensorflow as tf
from pydantic import Field

from reconad.config import NonNegative, Positive, PositiveFloat, Section, scaled
from reconad.errors import ReconadError
from reconad.io import atomic_write_bytes, reporting_os_errors
from reconad.maps import gaussian_smooth
from reconad.models.base import Scores

MEMORY_BANK_FILE = "memory_bank.npy"
"""Name of the bank inside a trained model folder (next to ``model.keras``)."""


class BankConfig(Section):
    """How the bank is thinned: a greedy coreset of ``coreset_fraction`` of the vectors,
    at most ``coreset_max`` (selection costs bank size x coreset size), chosen on a random
    projection to ``coreset_projection`` dimensions (0: none)."""

    coreset_fraction: Annotated[float, Field(gt=0.0, le=1.0)]
    coreset_max: Positive
    coreset_projection: NonNegative

    def thinned(self, bank: np.ndarray, seed: int) -> np.ndarray:
        """``bank`` reduced to its coreset (unchanged when it already is small enough)."""
        size = min(round(self.coreset_fraction * len(bank)), self.coreset_max)
        if size >= len(bank):
            return bank
        fraction = max(size, 1) / len(bank)
        return bank[greedy_coreset(bank, fraction, self.coreset_projection, seed)]


class KnnScoreConfig(Section):
    """Nearest-neighbour scoring: map smoothing and PatchCore's image-score re-weighting."""

    sigma_px: PositiveFloat
    reweight_neighbours: NonNegative
    """Bank neighbours b of PatchCore's re-weighting (eq. 7); 0: the plain maximum."""
    chunk_size: Positive


def build_bank(features: np.ndarray) -> np.ndarray:
    """Flatten feature maps into one vector per spatial location.

    Args:
        features: ``(N, h, w, c)`` feature maps or ``(M, c)`` vectors.

    Returns:
        float32 ``(M, c)``, C-contiguous, with M = N * h * w.
    """
    if features.ndim < 2:
        raise ValueError(f"Expected features (N, h, w, c) or (M, c). Received: {features.shape}")
    vectors = features.reshape(-1, features.shape[-1])
    return np.ascontiguousarray(vectors, dtype=np.float32)


def greedy_coreset(bank: np.ndarray, fraction: float, projection_dim: int, seed: int) -> np.ndarray:
    """Indices of a greedy k-center coreset (PatchCore, Roth et al. 2022, Alg. 1).

    Each step adds the vector farthest from those already selected, so the chosen subset
    covers the bank with a small radius. Distances are computed on a Johnson-Lindenstrauss
    random Gaussian projection to ``projection_dim`` dimensions to save time.

    Args:
        bank: ``(M, c)`` vectors.
        fraction: share of the bank to keep, in (0, 1].
        projection_dim: dimension of the random projection; 0 (or >= c) uses the vectors.
        seed: seeds the first selected vector (the first draw of
            ``np.random.default_rng(seed).integers(M)``) and the projection.

    Returns:
        int64 ``(k,)`` distinct indices, k = max(1, round(fraction * M)), in selection order.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"Expected fraction in (0, 1]. Received: fraction={fraction}")
    if projection_dim < 0:
        raise ValueError(f"Expected projection_dim >= 0. Received: {projection_dim}")
    total = len(bank)
    if total == 0:
        raise ValueError("Cannot select a coreset from an empty bank")
    rng = np.random.default_rng(seed)
    first = int(rng.integers(total))
    points = _projected(bank.astype(np.float32, copy=False), projection_dim, rng)
    squared_norms = np.einsum("ij,ij->i", points, points)
    count = max(1, min(total, round(fraction * total)))
    selected = np.empty(count, dtype=np.int64)
    selected[0] = first
    nearest = np.empty(total, dtype=np.float32)
    _squared_distances_to(points, squared_norms, first, out=nearest)
    distances = np.empty_like(nearest)
    for step in range(1, count):
        chosen = int(np.argmax(nearest))
        selected[step] = chosen
        _squared_distances_to(points, squared_norms, chosen, out=distances)
        np.minimum(nearest, distances, out=nearest)
    return selected


def coreset_bank(bank: np.ndarray, fraction: float, projection_dim: int, seed: int) -> np.ndarray:
    """The bank reduced to its greedy coreset (see :func:`greedy_coreset`)."""
    return bank[greedy_coreset(bank, fraction, projection_dim, seed)]


def _projected(points: np.ndarray, dim: int, rng: np.random.Generator) -> np.ndarray:
    if dim == 0 or dim >= points.shape[1]:
        return points
    matrix = rng.standard_normal((points.shape[1], dim)).astype(np.float32) / math.sqrt(dim)
    return points @ matrix


def _squared_distances_to(
    points: np.ndarray, squared_norms: np.ndarray, index: int, out: np.ndarray
) -> None:
    """||x_i - x_index||^2 for every i into ``out``, as one matrix-vector product.

    In place: the selection loop calls this once per selected vector on banks of ~10^6,
    where fresh temporaries cost as much as the arithmetic."""
    np.matmul(points, points[index], out=out)
    out *= -2.0
    out += squared_norms
    out += squared_norms[index]
    np.maximum(out, 0.0, out=out)


def nearest_distances(
    queries: np.ndarray | tf.Tensor, bank: np.ndarray | tf.Tensor, chunk_size: int
) -> np.ndarray:
    """Euclidean distance from each query to its nearest bank vector: ``(Q,)`` float32.

    See :func:`nearest_neighbours`.
    """
    return nearest_neighbours(queries, bank, chunk_size)[0]


def nearest_neighbours(
    queries: np.ndarray | tf.Tensor, bank: np.ndarray | tf.Tensor, chunk_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Distance from each query to its nearest bank vector, and that vector's index.

    Works on blocks of at most ``chunk_size`` queries x ``chunk_size`` bank vectors, so the
    extra memory is O(chunk_size^2) whatever the bank size. Both sets are shifted by the
    bank mean first: distances do not change, and the float32 expansion
    ||q||^2 - 2 q.b + ||b||^2 loses less precision on features far from the origin.

    Args:
        queries: ``(Q, c)`` vectors.
        bank: ``(M, c)`` vectors, M >= 1 (pass a ``tf.Tensor`` to keep it on the device).
        chunk_size: block side, > 0.

    Returns:
        ``(distances (Q,) float32, indices (Q,) int64)``.
    """
    if chunk_size <= 0:
        raise ValueError(f"Expected chunk_size > 0. Received: chunk_size={chunk_size}")
    bank = tf.convert_to_tensor(bank, dtype=tf.float32)
    queries = tf.convert_to_tensor(queries, dtype=tf.float32)
    if bank.shape.rank != 2 or queries.shape.rank != 2 or bank.shape[1] != queries.shape[1]:
        raise ValueError(
            f"Expected queries (Q, c) and bank (M, c). Received: {queries.shape}, {bank.shape}"
        )
    if bank.shape[0] == 0:
        raise ValueError("Cannot search an empty memory bank")
    centre = tf.reduce_mean(bank, axis=0)
    step = tf.constant(chunk_size, tf.int32)
    parts = [
        _nearest_squared(queries[start : start + chunk_size], bank, centre, step)
        for start in range(0, int(queries.shape[0]), chunk_size)
    ]
    if not parts:
        return np.zeros((0,), np.float32), np.zeros((0,), np.int64)
    squared = tf.concat([part[0] for part in parts], axis=0).numpy()
    indices = tf.concat([part[1] for part in parts], axis=0).numpy().astype(np.int64)
    return np.sqrt(np.maximum(squared, 0.0)), indices


@tf.function(
    input_signature=[
        tf.TensorSpec((None, None), tf.float32),
        tf.TensorSpec((None, None), tf.float32),
        tf.TensorSpec((None,), tf.float32),
        tf.TensorSpec((), tf.int32),
    ]
)
def _nearest_squared(
    queries: tf.Tensor, bank: tf.Tensor, centre: tf.Tensor, chunk_size: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """min_b ||q - b||^2 and its argmin for one chunk of queries, as a running minimum over
    bank chunks.

    ||q||^2 is the same for every b, so it is added after the minimum; the loop keeps only
    min_b (||b||^2 - 2 q.b). One iteration at a time (``parallel_iterations=1``): otherwise
    TensorFlow overlaps iterations and the memory grows with the number of bank chunks.
    """
    shifted = queries - centre
    scaled = -2.0 * shifted
    total = tf.shape(bank)[0]

    def step(
        start: tf.Tensor, best: tf.Tensor, where: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        block = bank[start : start + chunk_size] - centre
        block_norms = tf.reduce_sum(tf.square(block), axis=1)
        partial = tf.matmul(scaled, block, transpose_b=True) + block_norms
        block_best = tf.reduce_min(partial, axis=1)
        block_where = tf.argmin(partial, axis=1, output_type=tf.int32) + start
        better = block_best < best
        return (
            start + chunk_size,
            tf.where(better, block_best, best),
            tf.where(better, block_where, where),
        )

    rows = tf.shape(shifted)[:1]
    initial = (
        tf.constant(0),
        tf.fill(rows, tf.constant(np.inf, tf.float32)),
        tf.zeros(rows, tf.int32),
    )
    _, best, where = tf.while_loop(
        lambda start, *_: start < total, step, initial, parallel_iterations=1
    )
    return best + tf.reduce_sum(tf.square(shifted), axis=1), where


def reweighted_scores(
    features: np.ndarray,
    distances: np.ndarray,
    nearest: np.ndarray,
    bank: np.ndarray | tf.Tensor,
    neighbours: int,
) -> np.ndarray:
    """PatchCore's image score (Roth et al. 2022, eq. 7) for each query vector given.

    The score ``s* = ||m_test - m*||`` of a test vector is scaled by
    ``1 - exp(||m_test - m*||) / sum_{m in N_b(m*)} exp(||m_test - m||)``, where
    ``N_b(m*)`` are the ``neighbours`` bank vectors nearest to ``m*`` (``m*`` included).
    The weight is near 1 when ``m*`` is far from its own neighbours (already a rare
    normal pattern, so being near it is little evidence of normality) and near ``1 - 1/b``
    in a dense cluster. PatchCore applies it to each image's maximum.

    Args:
        features: ``(N, c)`` test vectors (one per image: its highest-scoring one).
        distances: ``(N,)`` their nearest-neighbour distances.
        nearest: ``(N,)`` indices of their nearest bank vectors.
        bank: ``(M, c)``.
        neighbours: b >= 2 (with b = 1 every weight would be 0).

    Returns:
        ``(N,)`` float32 reweighted scores.
    """
    if neighbours < 2:
        raise ValueError(f"Expected neighbours >= 2. Received: neighbours={neighbours}")
    bank = tf.convert_to_tensor(bank, tf.float32)
    anchors = tf.gather(bank, nearest)
    support = _k_nearest(anchors, bank, min(neighbours, int(bank.shape[0])))
    candidates = tf.gather(bank, support)
    to_support = tf.norm(tf.convert_to_tensor(features, tf.float32)[:, None] - candidates, axis=-1)
    to_support = tf.concat(
        [tf.convert_to_tensor(distances, tf.float32)[:, None], to_support[:, 1:]], axis=1
    )
    weights = 1.0 - tf.nn.softmax(to_support, axis=1)[:, 0]
    return (weights * distances).numpy().astype(np.float32)


def _k_nearest(queries: tf.Tensor, bank: tf.Tensor, k: int) -> tf.Tensor:
    """``(N, k)`` indices of the k bank vectors nearest to each query (itself first)."""
    squared = (
        tf.reduce_sum(tf.square(queries), axis=1, keepdims=True)
        - 2.0 * tf.matmul(queries, bank, transpose_b=True)
        + tf.reduce_sum(tf.square(bank), axis=1)[None, :]
    )
    return tf.math.top_k(-squared, k=k).indices


class MemoryBankDetector:
    """Scores images by the distance of each feature vector to its nearest bank vector.

    The map is the grid of distances upsampled (bilinear) to the image and Gaussian
    smoothed; the image score is the largest raw patch distance, re-weighted as PatchCore
    does when ``reweight_neighbours`` > 0 (Cui et al. score as PatchCore).

    Args:
        encoder: images ``(N, H, W, C)`` to feature maps ``(N, h, w, c)``.
        bank: ``(M, c)`` normal vectors.
        map_name: name of the single map.
        config: smoothing, re-weighting, search chunk.
        image_size: side of the images scored (``sigma_px`` is rescaled to it).
        batch_size: images per encoder call.
    """

    def __init__(
        self,
        encoder: keras.Model,
        bank: np.ndarray,
        map_name: str,
        config: KnnScoreConfig,
        image_size: int,
        batch_size: int,
    ) -> None:
        self.encoder = encoder
        self.bank = tf.convert_to_tensor(bank, tf.float32)
        self.map_names = (map_name,)
        self.config = config
        self.sigma = scaled(config.sigma_px, image_size)
        self.batch_size = batch_size

    def score(self, images: np.ndarray) -> Scores:
        maps, image_scores = [], []
        for start in range(0, len(images), self.batch_size):
            batch_maps, batch_scores = self._score_batch(images[start : start + self.batch_size])
            maps.append(batch_maps)
            image_scores.append(batch_scores)
        name = self.map_names[0]
        if not maps:
            return Scores({name: np.zeros(images.shape[:3], np.float32)}, {name: np.zeros(0)})
        return Scores({name: np.concatenate(maps)}, {name: np.concatenate(image_scores)})

    def _score_batch(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        features = np.asarray(self.encoder(tf.convert_to_tensor(images, tf.float32)))
        count, rows, cols, depth = features.shape
        vectors = features.reshape(count, rows * cols, depth)
        distances, nearest = nearest_neighbours(
            vectors.reshape(-1, depth), self.bank, self.config.chunk_size
        )
        distances = distances.reshape(count, rows * cols)
        nearest = nearest.reshape(count, rows * cols)
        top = np.argmax(distances, axis=1)
        picked = np.arange(count)
        image_scores = distances[picked, top]
        if self.config.reweight_neighbours > 0:
            image_scores = reweighted_scores(
                vectors[picked, top],
                image_scores,
                nearest[picked, top],
                self.bank,
                self.config.reweight_neighbours,
            )
        maps = distance_maps(distances.reshape(count, rows, cols), images.shape[1:3], self.sigma)
        return maps, image_scores.astype(np.float32)


def distance_maps(distances: np.ndarray, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Anomaly maps ``(N, H, W)`` from each patch's distance to the bank ``(N, rows, cols)``:
    upsampled bilinearly to the image ``shape``, then smoothed by PatchCore's Gaussian of
    ``sigma`` pixels."""
    grid = np.asarray(distances, np.float32)[..., None]
    upsampled = tf.image.resize(grid, shape, method="bilinear").numpy()[..., 0]
    return gaussian_smooth(upsampled, sigma)


def save_bank(path: Path, bank: np.ndarray) -> None:
    """Write ``bank`` as ``.npy`` atomically (a crash never leaves half a file).

    Raises:
        ReconadError: the disk is full, read-only, or the folder is not writable.
    """
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(bank, dtype=np.float32), allow_pickle=False)
    atomic_write_bytes(Path(path), buffer.getvalue())


def load_bank(path: Path) -> np.ndarray:
    """Read a bank written by :func:`save_bank`.

    Raises:
        ReconadError: the file is missing or not a (M, c) float array.
    """
    path = Path(path)
    if not path.is_file():
        raise ReconadError(
            f"{path}: memory bank missing; re-run `reconad train` (dvc repro) for this model"
        )
    with reporting_os_errors(path):
        try:
            bank = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise ReconadError(f"{path}: not a memory bank ({exc}); re-run training") from exc
    if bank.ndim != 2 or not np.issubdtype(bank.dtype, np.floating):
        raise ReconadError(
            f"{path}: expected a float (M, c) memory bank, got {bank.dtype} {bank.shape}"
        )
    return bank.astype(np.float32, copy=False)
