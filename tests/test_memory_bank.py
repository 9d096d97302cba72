"""Memory bank: chunked kNN against brute force, greedy coreset, PatchCore re-weighting,
the memory-bank detector, save/load."""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage
from scipy.spatial.distance import cdist
from sklearn.neighbors import NearestNeighbors

from reconad.config import load_params
from reconad.errors import ReconadError
from reconad.memory_bank import (
    BankConfig,
    KnnScoreConfig,
    MemoryBankDetector,
    build_bank,
    coreset_bank,
    distance_maps,
    greedy_coreset,
    load_bank,
    nearest_distances,
    nearest_neighbours,
    reweighted_scores,
    save_bank,
)
from reconad.models.base import Scores

REPO = load_params(Path(__file__).resolve().parents[1] / "params.yaml", "patch_ae")


def _score_config(**overrides: object) -> KnnScoreConfig:
    """``patch_ae.score`` of the repository's params.yaml, ``overrides`` applied."""
    base = REPO.family("patch_ae").score
    return KnnScoreConfig.model_validate({**base.model_dump(), **overrides})


def _bank_config(**overrides: object) -> BankConfig:
    base = REPO.family("patch_ae").bank
    return BankConfig.model_validate({**base.model_dump(), **overrides})


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


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 4096])
def test_nearest_neighbours_returns_the_argmin_index(chunk_size: int) -> None:
    bank, queries = _points(130, 5, seed=11), _points(77, 5, seed=12)
    distances, indices = nearest_neighbours(queries, bank, chunk_size=chunk_size)
    brute = np.linalg.norm(queries[:, None, :] - bank[None, :, :], axis=-1)
    assert indices.shape == (77,) and indices.dtype == np.int64
    np.testing.assert_array_equal(indices, brute.argmin(axis=1))
    np.testing.assert_allclose(distances, brute.min(axis=1), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(distances, nearest_distances(queries, bank, chunk_size))


def test_nearest_neighbours_finds_bank_members_in_a_later_chunk() -> None:
    bank = _points(50, 3, seed=13)
    order = np.array([49, 0, 23, 37, 12])
    distances, indices = nearest_neighbours(bank[order], tf.constant(bank), chunk_size=8)
    np.testing.assert_array_equal(indices, order)
    np.testing.assert_allclose(distances, 0.0, atol=1e-3)
    empty_distances, empty_indices = nearest_neighbours(bank[:0], bank, chunk_size=8)
    assert empty_distances.shape == (0,) and empty_indices.shape == (0,)


# A tiny bank for PatchCore's eq. 7. Test vector q = (0, -1); its nearest bank vector is
# m* = (0, 0), s* = 1. Bank neighbours of m*, nearest first: m* (0), (1, 0) (1), (0, 2) (2),
# (5, 5) (7.07). Distances of q to them: 1, sqrt(2), 3, sqrt(61).
TINY_BANK = np.array([[5.0, 5.0], [0.0, 2.0], [0.0, 0.0], [1.0, 0.0]], np.float32)
QUERY = np.array([[0.0, -1.0]], np.float32)


@pytest.mark.parametrize(
    ("neighbours", "expected"),
    [
        # b = 2: N = {m*, (1, 0)}: 1 - e^1 / (e^1 + e^sqrt2)
        (2, 1.0 - math.e / (math.e + math.exp(math.sqrt(2.0)))),
        # b = 3: N = {m*, (1, 0), (0, 2)}: 1 - e^1 / (e^1 + e^sqrt2 + e^3)
        (3, 1.0 - math.e / (math.e + math.exp(math.sqrt(2.0)) + math.exp(3.0))),
        # b larger than the bank: the whole bank
        (9, 1.0 - math.e / (math.e + math.exp(math.sqrt(2.0)) + math.exp(3.0) + math.exp(61**0.5))),
    ],
)
def test_reweighted_scores_match_patchcore_eq_7_by_hand(neighbours: int, expected: float) -> None:
    distances, nearest = nearest_neighbours(QUERY, TINY_BANK, chunk_size=2)
    assert nearest.tolist() == [2] and distances[0] == pytest.approx(1.0, abs=1e-6)
    scores = reweighted_scores(QUERY, distances, nearest, TINY_BANK, neighbours)
    assert scores.shape == (1,) and scores.dtype == np.float32
    assert scores[0] == pytest.approx(expected * 1.0, rel=1e-5)


def test_reweighting_keeps_more_of_the_score_when_the_nearest_vector_is_isolated() -> None:
    """Two test vectors at the same distance 1 from their nearest bank vector. By eq. 7 the
    weight is ~1 - 1/b when the neighbours of m* are about as far from q as m* itself (a
    dense cluster), and ~1 when they are much farther (m* isolated, a rare pattern): the
    isolated case keeps more of its score, as PatchCore says ("we increase the score")."""
    dense = np.array([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [-0.1, 0.0]], np.float32)
    sparse = np.array([[100.0, 0.0], [110.0, 0.0], [100.0, 10.0], [90.0, 0.0]], np.float32)
    bank = np.concatenate([dense, sparse])
    queries = np.array([[0.0, -1.0], [100.0, -1.0]], np.float32)
    distances, nearest = nearest_neighbours(queries, bank, chunk_size=3)
    scores = reweighted_scores(queries, distances, nearest, bank, 4)
    assert scores[0] < scores[1] < distances[1]
    np.testing.assert_allclose(distances, [1.0, 1.0], rtol=1e-5)
    assert scores[0] == pytest.approx(0.757, abs=0.01)  # ~1 - 1/4, the dense cluster
    assert scores[1] == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(ValueError, match="neighbours >= 2"):
        reweighted_scores(queries, distances, nearest, bank, 1)


class _Pooling(keras.Model):
    """A stand-in encoder: 4 x 4 average pooling, so a feature vector is a patch mean."""

    def call(self, images):
        return tf.nn.avg_pool2d(images, 4, 4, "VALID")


def _train_images() -> np.ndarray:
    return np.random.default_rng(20).random((2, 16, 16, 2)).astype(np.float32)


def _detector_setup(reweight: int) -> tuple[MemoryBankDetector, np.ndarray, np.ndarray]:
    """A detector whose bank holds the 4 x 4 patch means of two random training images."""
    rng = np.random.default_rng(21)
    bank = build_bank(_Pooling()(_train_images()).numpy())
    config = _score_config(reweight_neighbours=reweight, chunk_size=5)
    detector = MemoryBankDetector(_Pooling(), bank, "knn", config, image_size=16, batch_size=2)
    test = rng.random((3, 16, 16, 2)).astype(np.float32)
    test[1, 4:8, 8:12] = 1.0
    return detector, bank, test


def _raw_grid(bank: np.ndarray, test: np.ndarray) -> np.ndarray:
    vectors = _Pooling()(test).numpy().reshape(-1, bank.shape[1])
    return cdist(vectors, bank).min(axis=1).reshape(len(test), 4, 4)


def test_detector_image_score_is_the_largest_raw_patch_distance_without_reweighting() -> None:
    detector, bank, test = _detector_setup(reweight=0)
    scores = detector.score(test)
    assert isinstance(scores, Scores) and detector.map_names == ("knn",)
    assert set(scores.maps) == {"knn"} and set(scores.image_scores) == {"knn"}
    grid = _raw_grid(bank, test)
    np.testing.assert_allclose(scores.image_scores["knn"], grid.max(axis=(1, 2)), rtol=1e-5)
    assert scores.image_scores["knn"].dtype == np.float32
    # the map: the grid upsampled bilinearly and smoothed with sigma_px at 256 px rescaled
    upsampled = tf.image.resize(grid[..., None], (16, 16), method="bilinear").numpy()[..., 0]
    sigma = _score_config().sigma_px * 16 / 256
    expected = ndimage.gaussian_filter(upsampled, sigma=(0, sigma, sigma), mode="reflect")
    assert scores.maps["knn"].shape == (3, 16, 16)
    np.testing.assert_allclose(scores.maps["knn"], expected, rtol=1e-4, atol=1e-5)
    # smoothing lowers the peak: the image score is not the map's maximum
    assert (scores.maps["knn"].max(axis=(1, 2)) < scores.image_scores["knn"]).all()
    normal = detector.score(_train_images())
    np.testing.assert_allclose(normal.image_scores["knn"], 0.0, atol=1e-3)
    np.testing.assert_allclose(normal.maps["knn"], 0.0, atol=1e-3)


def test_detector_reweights_the_highest_patch_as_patchcore() -> None:
    detector, bank, test = _detector_setup(reweight=3)
    scores = detector.score(test).image_scores["knn"]
    vectors = _Pooling()(test).numpy().reshape(3, 16, -1)
    distances, nearest = nearest_neighbours(vectors.reshape(48, -1), bank, chunk_size=5)
    top = distances.reshape(3, 16).argmax(axis=1)
    picked = np.arange(3)
    expected = reweighted_scores(
        vectors[picked, top],
        distances.reshape(3, 16)[picked, top],
        nearest.reshape(3, 16)[picked, top],
        bank,
        3,
    )
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    assert (scores < _raw_grid(bank, test).max(axis=(1, 2))).all()


def test_detector_on_no_images() -> None:
    detector, _, _ = _detector_setup(reweight=0)
    scores = detector.score(np.zeros((0, 16, 16, 2), np.float32))
    assert scores.maps["knn"].shape == (0, 16, 16)
    assert scores.image_scores["knn"].shape == (0,)


def test_distance_maps_put_each_patch_distance_where_the_patch_is() -> None:
    distances = np.zeros((2, 4, 4), np.float32)
    distances[1, 1, 2] = 1.0
    maps = distance_maps(distances, (16, 16), sigma=1.0)
    assert maps.shape == (2, 16, 16) and maps.dtype == np.float32
    np.testing.assert_allclose(maps[0], 0.0, atol=1e-7)
    row, col = np.unravel_index(np.argmax(maps[1]), (16, 16))
    assert 4 <= row < 8 and 8 <= col < 12  # inside the patch's 4 x 4 block of pixels
    assert maps[1].sum() == pytest.approx(16.0, rel=0.05)  # bilinear keeps the mass


def test_bank_config_thins_to_the_coreset() -> None:
    bank = _points(40, 3, seed=14)
    assert _bank_config(coreset_fraction=1.0).thinned(bank, 0) is bank
    quarter = _bank_config(coreset_fraction=0.25, coreset_projection=0)
    np.testing.assert_array_equal(quarter.thinned(bank, 3), coreset_bank(bank, 0.25, 0, 3))
    capped = _bank_config(coreset_fraction=0.5, coreset_max=4, coreset_projection=0)
    assert capped.thinned(bank, 3).shape == (4, 3)


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
