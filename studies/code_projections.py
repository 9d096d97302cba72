"""What Patch AE's untrained code costs against PatchCore's features, before any training.

Patch AE scores the memory bank of its code R, two 1x1 conv + ReLU layers over the
backbone features PatchCore scores whole. Untrained, with ``compression_init:
orthogonal``, R is an orthogonal projection of those features. This study scores the
features of a trained ``patchcore`` model through the ways of projecting them that were
tried, each with the same coreset indices, maps and metrics, so the rows differ by the
projection only:

- ``full``: PatchCore's features;
- ``orthogonal``: ``Q^T x``, Q random orthonormal (the Johnson-Lindenstrauss cost alone);
- ``sign split``: ``[ReLU(Q^T x), ReLU(-Q^T x)]``, the code of ``[Q, -Q]`` kernels, two
  channels per direction (what ``orthogonal`` meant before 2026-12-05);
- ``shifted``: ``ReLU(Q^T x + b)``, b from :func:`reconad.models.patch_ae.positive_shift`
  on the training images of :func:`~reconad.models.patch_ae.shift_sample` (the code of
  now, one channel per direction);
- ``pca``: the leading principal directions of the training features instead of random ones.

It reads the model as the pipeline left it, so it runs after ``dvc repro`` / ``dvc exp
run`` in the same folder::

    python -m studies.code_projections --category bottle --directions 128 --directions 256
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from reconad.runtime import configure_environment

configure_environment()

import numpy as np  # noqa: E402

from reconad import paths  # noqa: E402
from reconad.config import load_params  # noqa: E402
from reconad.data.layout import load_split  # noqa: E402
from reconad.memory_bank import distance_maps, nearest_distances  # noqa: E402
from reconad.metrics import aupro, image_auroc, pixel_auroc  # noqa: E402
from reconad.models.base import adapt_images, batched_predict  # noqa: E402
from reconad.models.patch_ae import positive_shift, shift_sample  # noqa: E402
from reconad.models.trained import load_trained, variant_dir  # noqa: E402

Projection = Callable[[np.ndarray], np.ndarray]
VARIANT = "patchcore"


def orthogonal_directions(channels: int, directions: int, seed: int) -> np.ndarray:
    """``(channels, directions)`` with orthonormal columns, drawn at random."""
    gaussian = np.random.default_rng(seed).normal(size=(channels, directions))
    return np.linalg.qr(gaussian)[0]


def principal_directions(vectors: np.ndarray, directions: int) -> tuple[np.ndarray, np.ndarray]:
    """The mean of ``vectors`` and their ``directions`` leading principal directions."""
    mean = vectors.mean(axis=0)
    _, _, rows = np.linalg.svd(vectors - mean, full_matrices=False)
    return mean, rows[:directions].T


def sign_split(codes: np.ndarray) -> np.ndarray:
    """The positive and negative parts of each coordinate, side by side."""
    return np.concatenate([np.maximum(codes, 0.0), np.maximum(-codes, 0.0)], axis=-1)


def projections(train: np.ndarray, directions: int, seed: int) -> dict[str, Projection]:
    """The codes of one random draw Q, fitted on the training feature maps ``train``
    ``(N, h, w, c)``: the shift on Patch AE's sample of them."""
    q = orthogonal_directions(train.shape[-1], directions, seed)
    sample = shift_sample(train)
    shift = positive_shift(sample.reshape(-1, sample.shape[-1]) @ q)
    return {
        f"orthogonal {directions}, draw {seed}": lambda x: x @ q,
        f"sign split {directions} (2 x {directions} channels), draw {seed}": lambda x: sign_split(
            x @ q
        ),
        f"shifted {directions}, draw {seed}": lambda x: np.maximum(x @ q + shift, 0.0),
    }


def scored(
    project: Projection,
    bank: np.ndarray,
    test: np.ndarray,
    grid: tuple[int, int, int],
    masks: np.ndarray,
    labels: np.ndarray,
    sigma: float,
) -> tuple[float, float, float]:
    """Image AUROC (plain maximum), pixel AUROC and AUPRO of the projected bank's maps."""
    distances = nearest_distances(project(test), project(bank), chunk_size=4096).reshape(grid)
    maps = distance_maps(distances, masks.shape[1:3], sigma)
    image_scores = distances.reshape(len(distances), -1).max(axis=1)
    return image_auroc(image_scores, labels), pixel_auroc(maps, masks), aupro(maps, masks)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--category", required=True)
    parser.add_argument("--directions", type=int, action="append", default=None)
    parser.add_argument("--draws", type=int, default=2, help="random projections per size")
    args = parser.parse_args(argv)
    data = load_split(paths.prepared_category(args.category))
    params = load_params(args.params, VARIANT)
    detector = load_trained(variant_dir(params, VARIANT, args.category), params).detector
    knn = detector.inner

    def features(images: np.ndarray) -> np.ndarray:
        adapted = adapt_images(images, detector.size, detector.channels).numpy()
        return batched_predict(knn.encoder, adapted, params.score.batch_size)

    train, test = features(data.train), features(data.test)
    bank = params.family(VARIANT).bank.thinned(train.reshape(-1, train.shape[-1]), params.seed)
    grid = test.shape[:3]
    test = test.reshape(-1, test.shape[-1])

    def row(name: str, project: Projection) -> None:
        figures = scored(project, bank, test, grid, data.test_masks, data.test_labels, knn.sigma)
        print(f"| {name} | " + " | ".join(f"{value:.4f}" for value in figures) + " |", flush=True)

    print("| code | image AUROC | pixel AUROC | AUPRO |\n|---|---|---|---|")
    row("full (PatchCore's features)", lambda x: x)
    sizes = args.directions or [128, 256]
    mean, principal = principal_directions(train.reshape(-1, train.shape[-1]), max(sizes))
    for directions in sizes:
        for seed in range(args.draws):
            for name, project in projections(train, directions, seed).items():
                row(name, project)
        leading = principal[:, :directions]
        row(f"pca {directions}", lambda x, leading=leading: (x - mean) @ leading)


if __name__ == "__main__":
    main()
