"""Memory bank of normal feature vectors: build, subsample (coreset), search, save.

Patch AE scores a test vector by its distance to the nearest vector of the bank built from
the training images (as PatchCore does). Banks reach ~10^5-10^6 vectors, so the search runs
in chunks on the accelerator (TensorFlow matmuls) with memory bounded by the chunk size,
and the bank can be thinned by greedy k-center coreset selection.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import tensorflow as tf

from reconad.errors import ReconadError
from reconad.io import atomic_write_bytes, reporting_os_errors

MEMORY_BANK_FILE = "memory_bank.npy"
"""Name of the bank inside a trained model folder (next to ``model.keras``)."""


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
    nearest = _squared_distances_to(points, squared_norms, first)
    for step in range(1, count):
        chosen = int(np.argmax(nearest))
        selected[step] = chosen
        np.minimum(nearest, _squared_distances_to(points, squared_norms, chosen), out=nearest)
    return selected


def coreset_bank(bank: np.ndarray, fraction: float, projection_dim: int, seed: int) -> np.ndarray:
    """The bank reduced to its greedy coreset (see :func:`greedy_coreset`)."""
    return bank[greedy_coreset(bank, fraction, projection_dim, seed)]


def _projected(points: np.ndarray, dim: int, rng: np.random.Generator) -> np.ndarray:
    if dim == 0 or dim >= points.shape[1]:
        return points
    matrix = rng.standard_normal((points.shape[1], dim)).astype(np.float32) / math.sqrt(dim)
    return points @ matrix


def _squared_distances_to(points: np.ndarray, squared_norms: np.ndarray, index: int) -> np.ndarray:
    """||x_i - x_index||^2 for every i, as one matrix-vector product."""
    distances = squared_norms - 2.0 * (points @ points[index]) + squared_norms[index]
    return np.maximum(distances, 0.0)


def nearest_distances(
    queries: np.ndarray | tf.Tensor, bank: np.ndarray | tf.Tensor, chunk_size: int
) -> np.ndarray:
    """Euclidean distance from each query to its nearest bank vector.

    Works on blocks of at most ``chunk_size`` queries x ``chunk_size`` bank vectors, so the
    extra memory is O(chunk_size^2) whatever the bank size. Both sets are shifted by the
    bank mean first: distances do not change, and the float32 expansion
    ||q||^2 - 2 q.b + ||b||^2 loses less precision on features far from the origin.

    Args:
        queries: ``(Q, c)`` vectors.
        bank: ``(M, c)`` vectors, M >= 1 (pass a ``tf.Tensor`` to keep it on the device).
        chunk_size: block side, > 0.

    Returns:
        float32 ``(Q,)`` distances.
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
        return np.zeros((0,), np.float32)
    return np.sqrt(np.maximum(tf.concat(parts, axis=0).numpy(), 0.0))


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
) -> tf.Tensor:
    """min_b ||q - b||^2 for one chunk of queries, as a running minimum over bank chunks.

    ||q||^2 is the same for every b, so it is added after the minimum; the loop keeps only
    min_b (||b||^2 - 2 q.b). One iteration at a time (``parallel_iterations=1``): otherwise
    TensorFlow overlaps iterations and the memory grows with the number of bank chunks.
    """
    shifted = queries - centre
    scaled = -2.0 * shifted
    total = tf.shape(bank)[0]

    def step(start: tf.Tensor, best: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        block = bank[start : start + chunk_size] - centre
        block_norms = tf.reduce_sum(tf.square(block), axis=1)
        partial = tf.matmul(scaled, block, transpose_b=True) + block_norms
        return start + chunk_size, tf.minimum(best, tf.reduce_min(partial, axis=1))

    initial = tf.fill(tf.shape(shifted)[:1], tf.constant(np.inf, tf.float32))
    _, best = tf.while_loop(
        lambda start, _: start < total, step, (tf.constant(0), initial), parallel_iterations=1
    )
    return best + tf.reduce_sum(tf.square(shifted), axis=1)


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
