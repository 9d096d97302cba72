"""Greedy coreset vs the full memory bank of trained Patch AE models: quality and speed.

PatchCore's coreset trades detection quality for a smaller bank and a faster kNN search.
For every category that has a trained Patch AE model (``models/<variant>/<category>``,
left by ``dvc exp run -S 'run.patch_ae=[patch_ae]'`` or by ``dvc repro`` with it in
``run``), this scores the prepared test images twice through the pipeline's own detector:
once with the bank training stored, once with its greedy coreset
(``reconad.memory_bank.coreset_bank``, ``patch_ae.coreset_projection`` dimensions, the
params' seed). It prints image and pixel AUROC of both, their difference, the bank sizes,
the time the coreset selection takes and the scoring time of both banks measured in the
same run. Categories without a trained model are skipped with a line saying so.
From the repository root::

    python -m benchmarks.coreset                  # 10% coreset, every category in params.yaml
    python -m benchmarks.coreset --fraction 0.01 --categories brick
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from reconad.runtime import configure_environment, seed_everything

configure_environment()

import numpy as np  # noqa: E402

from reconad import paths  # noqa: E402
from reconad.config import load_params  # noqa: E402
from reconad.data.layout import CategoryData, load_split  # noqa: E402
from reconad.memory_bank import coreset_bank  # noqa: E402
from reconad.metrics import image_auroc, pixel_auroc  # noqa: E402
from reconad.models.patch_ae import MAP_NAME, PatchAeDetector  # noqa: E402
from reconad.score import load_trained  # noqa: E402

DEFAULT_FRACTION = 0.1
"""The share of the bank the issue asks about (PatchCore uses 1-10%)."""


@dataclass(frozen=True)
class BankScore:
    """Quality and scoring time of one memory bank on a category's test images."""

    vectors: int
    image_auroc: float
    pixel_auroc: float
    scoring_s: float


def score_with_bank(detector: PatchAeDetector, bank: np.ndarray, data: CategoryData) -> BankScore:
    """Score ``data.test`` with ``detector``'s encoder and smoothing but ``bank``."""
    probe = PatchAeDetector(
        detector.encoder,
        bank,
        sigma=detector.sigma,
        chunk_size=detector.chunk_size,
        batch_size=detector.batch_size,
    )
    start = time.perf_counter()
    maps = probe.anomaly_maps(data.test)[MAP_NAME]
    seconds = time.perf_counter() - start
    return BankScore(
        vectors=len(bank),
        image_auroc=image_auroc(probe.image_scores(maps), data.test_labels),
        pixel_auroc=pixel_auroc(maps, data.test_masks),
        scoring_s=seconds,
    )


def compare_banks(
    detector: PatchAeDetector,
    data: CategoryData,
    fraction: float,
    projection_dim: int,
    seed: int,
) -> dict[str, Any]:
    """Figures for the stored bank and its coreset, and how they differ."""
    full_bank = detector.bank.numpy()
    start = time.perf_counter()
    reduced = coreset_bank(full_bank, fraction, projection_dim, seed)
    selection_s = time.perf_counter() - start
    full = score_with_bank(detector, full_bank, data)
    core = score_with_bank(detector, reduced, data)
    return {
        "category": data.category,
        "fraction": fraction,
        "full": asdict(full),
        "coreset": asdict(core),
        "coreset_selection_s": selection_s,
        "image_auroc_difference": core.image_auroc - full.image_auroc,
        "pixel_auroc_difference": core.pixel_auroc - full.pixel_auroc,
        "scoring_speedup": full.scoring_s / core.scoring_s if core.scoring_s > 0 else None,
    }


def run(
    params_path: Path,
    variant: str,
    categories: Iterable[str] | None,
    fraction: float,
    models_root: Path = paths.MODELS_DIR,
    prepared_root: Path = paths.PREPARED_DIR,
) -> list[dict[str, Any]]:
    """Compare banks for every category of ``variant`` that has a trained model."""
    params = load_params(params_path, variant)
    seed_everything(params.seed)
    rows = []
    for category in categories or params.dataset.categories:
        model_dir = models_root / variant / category
        if not (model_dir / paths.MODEL_SUBDIR).is_dir():
            print(f"{category}: skipped, no trained model in {model_dir}")
            continue
        trained = load_trained(model_dir, params.score)
        if not isinstance(trained.detector, PatchAeDetector):
            raise SystemExit(f"{model_dir}: not a Patch AE model ({trained.description['method']})")
        data = load_split(paths.prepared_category(category, prepared_root))
        rows.append(
            compare_banks(
                trained.detector,
                data,
                fraction,
                params.patch_ae.coreset_projection,
                params.seed,
            )
        )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    header = (
        f"{'category':<10} {'bank':>8} {'coreset':>8} {'select s':>9} "
        f"{'img full':>9} {'img core':>9} {'diff':>7} {'pix full':>9} {'pix core':>9} "
        f"{'diff':>7} {'score s full':>13} {'score s core':>13} {'speed-up':>9}"
    )
    lines = [header]
    for row in rows:
        full, core = row["full"], row["coreset"]
        speedup = row["scoring_speedup"]
        lines.append(
            f"{row['category']:<10} {full['vectors']:>8} {core['vectors']:>8} "
            f"{row['coreset_selection_s']:>9.2f} {full['image_auroc']:>9.3f} "
            f"{core['image_auroc']:>9.3f} {row['image_auroc_difference']:>+7.3f} "
            f"{full['pixel_auroc']:>9.3f} {core['pixel_auroc']:>9.3f} "
            f"{row['pixel_auroc_difference']:>+7.3f} {full['scoring_s']:>13.2f} "
            f"{core['scoring_s']:>13.2f} "
            + (f"{speedup:>8.2f}x" if speedup is not None else f"{'-':>9}")
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--variant", default="patch_ae")
    parser.add_argument("--categories", nargs="+", default=None)
    parser.add_argument("--fraction", type=float, default=DEFAULT_FRACTION)
    args = parser.parse_args(argv)
    rows = run(args.params, args.variant, args.categories, args.fraction)
    if rows:
        print(f"Patch AE ({args.variant}): stored memory bank vs its {args.fraction:.0%} coreset")
        print(format_table(rows))
    else:
        print(f"no trained {args.variant} model: nothing to compare")
    return rows


if __name__ == "__main__":
    main()
