"""Memory bank: chunked kNN against brute force, greedy coreset, save/load."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.neighbors import NearestNeighbors

from reconad.errors import ReconadError
from reconad.memory_bank import (
    build_bank,
    coreset_bank,
    greedy_coreset,
    load_bank,
    nearest_distances,
    save_bank,
)


def _points(count: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)


def _clusters(count: int, dim: int, centres: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=10.0, size=(centres, dim))
    labels = rng.integers(centres, size=count)
    return (means[labels] + rng.normal(scale=0.5, size=(count, dim))).astype(np.float32)


def _covering_radius(bank: np.ndarray, subset: np.ndarray) -> float:
    return float(cdist(bank, bank[subset]).min(axis=1).max())


def test_build_bank_flattens_feature_maps() -> None:
    features = np.arange(2 * 3 * 4 * 5, dtype=np.float64).reshape(2, 3, 4, 5)
    bank = build_bank(features)
    assert bank.shape == (24, 5)
    assert bank.dtype == np.float32
    assert bank.flags.c_contiguous
    np.testing.assert_array_equal(bank[7], features[0, 1, 3])
    assert build_bank(bank).shape == (24, 5)


def test_nearest_distances_match_sklearn_brute_force() -> None:
    bank, queries = _points(301, 6, seed=1), _points(77, 6, seed=2)
    reference = NearestNeighbors(n_neighbors=1, algorithm="brute").fit(bank)
    expected = reference.kneighbors(queries)[0][:, 0]
    ours = nearest_distances(queries, bank, chunk_size=4096)
    assert ours.shape == (77,)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours, cdist(queries, bank).min(axis=1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_size", [1, 7, 50, 76])
def test_chunks_smaller_than_queries_and_bank_give_the_same_distances(chunk_size: int) -> None:
    bank, queries = _points(130, 4, seed=3), _points(77, 4, seed=4)
    whole = nearest_distances(queries, bank, chunk_size=10_000)
    chunked = nearest_distances(queries, bank, chunk_size=chunk_size)
    np.testing.assert_allclose(chunked, whole, rtol=1e-6, atol=1e-6)


def test_bank_vectors_and_far_from_origin_features_stay_accurate() -> None:
    bank = _points(200, 8, seed=5) + 1000.0  # large offset: naive float32 expansion fails
    queries = np.concatenate([bank[:10], bank[10:20] + 0.01])
    distances = nearest_distances(queries, bank, chunk_size=64)
    np.testing.assert_allclose(distances[:10], 0.0, atol=1e-3)
    np.testing.assert_allclose(distances[10:], cdist(queries[10:], bank).min(axis=1), atol=2e-4)


def test_nearest_distances_rejects_bad_inputs() -> None:
    bank = _points(5, 3, seed=0)
    with pytest.raises(ValueError, match="chunk_size"):
        nearest_distances(bank, bank, chunk_size=0)
    with pytest.raises(ValueError, match="empty"):
        nearest_distances(bank, bank[:0], chunk_size=4)
    with pytest.raises(ValueError, match=r"\(Q, c\)"):
        nearest_distances(bank[:, :2], bank, chunk_size=4)
    assert nearest_distances(bank[:0], bank, chunk_size=4).shape == (0,)


def test_greedy_coreset_matches_a_naive_farthest_point_loop() -> None:
    bank = _points(60, 5, seed=6)
    chosen = greedy_coreset(bank, fraction=0.2, projection_dim=0, seed=11)
    expected = [int(np.random.default_rng(11).integers(60))]
    while len(expected) < 12:
        expected.append(int(cdist(bank, bank[expected]).min(axis=1).argmax()))
    np.testing.assert_array_equal(chosen, expected)


def test_coreset_covers_better_than_random_subsets() -> None:
    bank = _clusters(1500, 32, centres=40, seed=7)
    chosen = greedy_coreset(bank, fraction=0.05, projection_dim=8, seed=0)
    assert len(chosen) == 75
    assert len(np.unique(chosen)) == 75
    rng = np.random.default_rng(1)
    random_radii = [
        _covering_radius(bank, rng.choice(len(bank), 75, replace=False)) for _ in range(10)
    ]
    assert _covering_radius(bank, chosen) < min(random_radii)


def test_coreset_first_index_follows_the_seed() -> None:
    bank = _points(500, 16, seed=8)
    for seed in (0, 1, 2):
        chosen = greedy_coreset(bank, fraction=0.01, projection_dim=4, seed=seed)
        assert chosen[0] == np.random.default_rng(seed).integers(500)
        np.testing.assert_array_equal(chosen, greedy_coreset(bank, 0.01, 4, seed))
    assert len(greedy_coreset(bank, fraction=1e-6, projection_dim=0, seed=0)) == 1


def test_coreset_bank_and_argument_checks() -> None:
    bank = _points(40, 3, seed=9)
    reduced = coreset_bank(bank, fraction=0.25, projection_dim=0, seed=3)
    assert reduced.shape == (10, 3)
    np.testing.assert_array_equal(reduced, bank[greedy_coreset(bank, 0.25, 0, 3)])
    with pytest.raises(ValueError, match="fraction"):
        greedy_coreset(bank, fraction=0.0, projection_dim=0, seed=0)
    with pytest.raises(ValueError, match="projection_dim"):
        greedy_coreset(bank, fraction=0.5, projection_dim=-1, seed=0)


def test_save_and_load_bank_round_trip(tmp_path) -> None:
    bank = _points(33, 7, seed=10)
    path = tmp_path / "model" / "memory_bank.npy"
    save_bank(path, bank)
    np.testing.assert_array_equal(load_bank(path), bank)
    assert sorted(p.name for p in path.parent.iterdir()) == ["memory_bank.npy"]


def test_load_bank_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(ReconadError, match=r"memory_bank\.npy: memory bank missing"):
        load_bank(tmp_path / "memory_bank.npy")
    flat = tmp_path / "flat.npy"
    np.save(flat, np.zeros(5, np.float32))
    with pytest.raises(ReconadError, match=r"flat\.npy: expected a float"):
        load_bank(flat)
    junk = tmp_path / "junk.npy"
    junk.write_bytes(b"not numpy")
    with pytest.raises(ReconadError, match=r"junk\.npy: not a memory bank"):
        load_bank(junk)
