"""Greedy coreset vs the full memory bank of trained Patch AE models: quality and speed.

PatchCore's coreset trades detection quality for a smaller bank and a faster kNN search.
For every category that has a trained Patch AE model (``models/<variant>/<category>``,
left by ``dvc exp run -S 'run.patch_ae=[patch_ae]'`` or by ``dvc repro`` with it in
``run``), loaded with ``reconad.models.trained.load_trained`` as calibration loads it,
this scores the prepared test images twice through the pipeline's own detector
(``reconad.memory_bank.MemoryBankDetector``, behind the same ``AdaptedDetector``): once
with the full bank, the representation R of every training image as the model's encoder
gives it (what training stores before thinning), once with that bank thinned as
``patch_ae.bank`` says (``BankConfig.thinned``: greedy coreset, ``coreset_max``,
``coreset_projection``, the params' seed) at ``--fraction`` (default
``patch_ae.bank.coreset_fraction``). It prints image and pixel AUROC of both, their
difference, the bank sizes (and the size training stored), the time the coreset
selection takes and the scoring time of both banks measured in the same run: the full
bank is the reference. Categories without a trained model are skipped with a line saying
so. From the repository root::

    python -m benchmarks.coreset                  # patch_ae.bank, every category in params.yaml
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
from reconad.memory_bank import BankConfig, MemoryBankDetector, build_bank  # noqa: E402
from reconad.metrics import image_auroc, pixel_auroc  # noqa: E402
from reconad.models.base import AdaptedDetector, adapt_images, batched_predict  # noqa: E402
from reconad.models.trained import TrainedModel, load_trained  # noqa: E402


@dataclass(frozen=True)
class BankScore:
    """Quality and scoring time of one memory bank on a category's test images."""

    vectors: int
    image_auroc: float
    pixel_auroc: float
    scoring_s: float


def memory_bank_detector(trained: TrainedModel) -> MemoryBankDetector:
    """The Patch AE detector inside ``trained`` (loading wraps it in an AdaptedDetector).

    Raises:
        SystemExit: ``trained`` does not score with a memory bank.
    """
    detector = trained.detector
    inner = detector.inner if isinstance(detector, AdaptedDetector) else detector
    if not isinstance(inner, MemoryBankDetector):
        raise SystemExit(
            f"{trained.directory}: not a memory-bank model ({trained.description['method']})"
        )
    return inner


def full_bank(trained: TrainedModel, data: CategoryData) -> np.ndarray:
    """R of every training image, as training computes it before thinning the bank."""
    inner = memory_bank_detector(trained)
    size, channels = int(trained.description["image_size"]), int(trained.description["channels"])
    train = adapt_images(data.train, size, channels).numpy()
    return build_bank(batched_predict(inner.encoder, train, inner.batch_size))


def score_with_bank(trained: TrainedModel, bank: np.ndarray, data: CategoryData) -> BankScore:
    """Score ``data.test`` with ``trained``'s encoder and scoring settings but ``bank``."""
    inner = memory_bank_detector(trained)
    size, channels = int(trained.description["image_size"]), int(trained.description["channels"])
    name = inner.map_names[0]
    probe = AdaptedDetector(
        MemoryBankDetector(inner.encoder, bank, name, inner.config, size, inner.batch_size),
        size,
        channels,
    )
    start = time.perf_counter()
    scores = probe.score(data.test)
    seconds = time.perf_counter() - start
    return BankScore(
        vectors=len(bank),
        image_auroc=image_auroc(scores.image_scores[name], data.test_labels),
        pixel_auroc=pixel_auroc(scores.maps[name], data.test_masks),
        scoring_s=seconds,
    )


def compare_banks(
    trained: TrainedModel, data: CategoryData, bank_config: BankConfig, seed: int
) -> dict[str, Any]:
    """Figures for the full bank and the bank ``bank_config`` thins it to, and how they
    differ; the full bank is the reference."""
    full_vectors = full_bank(trained, data)
    start = time.perf_counter()
    reduced = bank_config.thinned(full_vectors, seed)
    selection_s = time.perf_counter() - start
    full = score_with_bank(trained, full_vectors, data)
    core = score_with_bank(trained, reduced, data)
    return {
        "category": data.category,
        "fraction": bank_config.coreset_fraction,
        "stored_vectors": int(memory_bank_detector(trained).bank.shape[0]),
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
    fraction: float | None = None,
    models_root: Path = paths.MODELS_DIR,
    prepared_root: Path = paths.PREPARED_DIR,
) -> list[dict[str, Any]]:
    """Compare banks for every category of ``variant`` that has a trained model.

    Args:
        params_path: the ``params.yaml`` to score with (``patch_ae.score``, ``seed``).
        variant: a Patch AE variant.
        categories: default every category of ``params.yaml``.
        fraction: share of the bank the coreset keeps; default
            ``patch_ae.bank.coreset_fraction``.
        models_root: where ``<variant>/<category>`` model directories are.
        prepared_root: where the prepared categories are.
    """
    params = load_params(params_path, variant)
    seed_everything(params.seed)
    family = params.variant(variant).method
    bank_config = getattr(params.family(family), "bank", None)
    if not isinstance(bank_config, BankConfig):
        raise SystemExit(f"{variant}: the {family} family has no memory bank")
    if fraction is not None:
        bank_config = BankConfig.model_validate(
            {**bank_config.model_dump(), "coreset_fraction": fraction}
        )
    rows = []
    for category in categories or params.dataset.categories:
        model_dir = models_root / variant / category
        if not (model_dir / paths.MODEL_SUBDIR).is_dir():
            print(f"{category}: skipped, no trained model in {model_dir}")
            continue
        trained = load_trained(model_dir, params)
        data = load_split(paths.prepared_category(category, prepared_root))
        rows.append(compare_banks(trained, data, bank_config, params.seed))
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    header = (
        f"{'category':<10} {'bank':>8} {'stored':>8} {'coreset':>8} {'select s':>9} "
        f"{'img full':>9} {'img core':>9} {'diff':>7} {'pix full':>9} {'pix core':>9} "
        f"{'diff':>7} {'score s full':>13} {'score s core':>13} {'speed-up':>9}"
    )
    lines = [header]
    for row in rows:
        full, core = row["full"], row["coreset"]
        speedup = row["scoring_speedup"]
        lines.append(
            f"{row['category']:<10} {full['vectors']:>8} {row['stored_vectors']:>8} "
            f"{core['vectors']:>8} "
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
    parser.add_argument(
        "--fraction", type=float, default=None, help="default: patch_ae.bank.coreset_fraction"
    )
    args = parser.parse_args(argv)
    rows = run(args.params, args.variant, args.categories, args.fraction)
    if rows:
        print(
            f"Patch AE ({args.variant}): full memory bank vs its {rows[0]['fraction']:.0%} coreset"
        )
        print(format_table(rows))
    else:
        print(f"no trained {args.variant} model: nothing to compare")
    return rows


if __name__ == "__main__":
    main()
