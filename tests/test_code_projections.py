"""The projection study: each code does what its row in docs/quality.md says."""

from __future__ import annotations

import numpy as np
from scipy.spatial import distance
from studies.code_projections import (
    orthogonal_directions,
    principal_directions,
    projections,
    sign_split,
)


def _features(seed: int = 0) -> np.ndarray:
    """Non-negative feature maps ``(N, h, w, c)``, as post-ReLU backbone layers give."""
    return np.random.default_rng(seed).gamma(1.0, size=(3, 4, 4, 12))


def test_random_directions_are_orthonormal_and_depend_on_the_draw() -> None:
    q = orthogonal_directions(12, 5, seed=1)
    np.testing.assert_allclose(q.T @ q, np.eye(5), atol=1e-12)
    assert not np.allclose(q, orthogonal_directions(12, 5, seed=2))


def test_the_sign_split_shrinks_differences_across_zero_and_keeps_the_others() -> None:
    same_sign = sign_split(np.array([[1.0, -2.0], [3.0, -1.0]]))
    across = sign_split(np.array([[1.0, 2.0], [-1.0, 2.0]]))
    assert distance.pdist(same_sign)[0] == np.hypot(2.0, 1.0)
    assert distance.pdist(across)[0] == np.sqrt(2.0) < 2.0


def test_the_shifted_code_keeps_the_distances_of_the_projection_and_is_positive() -> None:
    train = _features()
    rows = projections(train, directions=12, seed=0)
    vectors = train.reshape(-1, 12)
    shifted = rows["shifted 12, draw 0"](vectors)
    assert shifted.min() > 0
    np.testing.assert_allclose(distance.pdist(shifted), distance.pdist(vectors), rtol=1e-9)
    split = rows["sign split 12 (2 x 12 channels), draw 0"](vectors)
    assert (distance.pdist(split) <= distance.pdist(vectors) + 1e-9).all()


def test_principal_directions_keep_data_of_that_rank_whole() -> None:
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(50, 2)) @ rng.normal(size=(2, 6)) + 5.0
    mean, directions = principal_directions(vectors, 2)
    np.testing.assert_allclose(directions.T @ directions, np.eye(2), atol=1e-12)
    codes = (vectors - mean) @ directions
    np.testing.assert_allclose(distance.pdist(codes), distance.pdist(vectors), rtol=1e-9)
