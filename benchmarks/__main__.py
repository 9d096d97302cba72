"""Every speed benchmark in one run, figures collected in ``reports/bench.json``.

The benchmarks are registered in :data:`BENCHMARKS`, each with how to run it from one
set of :class:`Options`, how to print its figures, which rows of figures it returns and
which of their fields are the ratios and the references they are taken against (always
measured in the same run). ``corruption``, ``training``, ``inference``, ``coreset``
(needs trained Patch AE models; skipped without them) and ``pipeline`` (``dvc repro`` in
a stubbed scratch project and, when it has nothing to do, in this workspace) run in this
process and return their figures; ``mc_dropout.py`` and ``knn.py`` only print theirs, so
they run as subprocesses and their key numbers are read back from the printed text (a
figure that cannot be found is recorded as null). Each benchmark's text is printed as it
finishes; the load average is recorded with the figures because other work on the
machine slows every rate. Sizes are modest so that the whole run stays within minutes on
two cores. From the repository root (``make bench``)::

    python -m benchmarks
    python -m benchmarks --batches 10 --train-steps 3 --out /tmp/bench.json
    python -m benchmarks --only knn --only pipeline
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconad.runtime import configure_environment

configure_environment()

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks import coreset, corruption, inference, pipeline, training  # noqa: E402
from benchmarks.common import REPOSITORY  # noqa: E402
from reconad import paths  # noqa: E402
from reconad.io import atomic_write_json  # noqa: E402

DEFAULT_OUT = Path("reports/bench.json")

MC_DROPOUT_FLAGS = ("--size", "128", "--channels", "1", "--batch", "8", "--passes", "30")
KNN_FLAGS = ("--bank", "50000", "--queries", "5000", "--memory-banks", "10000", "50000")

NUMBER = r"([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)"
MC_DROPOUT_FIGURES = {
    "deterministic_ms": r"deterministic pass:\s*" + NUMBER + r" ms",
    "batched_mc_ms": r"batched MC passes:\s*" + NUMBER + r" ms",
    "naive_mc_ms": r"naive full passes:\s*" + NUMBER + r" ms",
    "batched_over_deterministic": r"batched / deterministic:\s*" + NUMBER + "x",
    "naive_over_batched": r"naive / batched:\s*" + NUMBER + "x",
    "arithmetic_bound": r"arithmetic bound .*?:\s*" + NUMBER + "x",
}
KNN_FIGURES = {
    "reconad_s": r"reconad chunked TF kNN\s*:\s*" + NUMBER + " s",
    "sklearn_s": r"sklearn brute force\s*:\s*" + NUMBER + " s",
    "speedup": r"speed-up\s*:\s*" + NUMBER + " x",
    "max_abs_difference": r"max \|difference\|\s*:\s*" + NUMBER,
}
KNN_MEMORY_COLUMNS = (
    "bank",
    "bank_mib",
    "full_matrix_mib",
    "reconad_mib",
    "reconad_minus_bank_mib",
    "sklearn_mib",
)


def run_script(name: str, flags: tuple[str, ...]) -> str:
    """Stdout of ``python -m benchmarks.<name> flags`` run by this interpreter from the
    repository, where the scripts import ``benchmarks.common``.

    Raises:
        SystemExit: the script failed; its stderr is shown first.
    """
    command = [sys.executable, "-m", f"benchmarks.{name}", *flags]
    result = subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPOSITORY)
    if result.returncode:
        sys.stderr.write(result.stderr)
        raise SystemExit(f"python -m benchmarks.{name} failed with exit code {result.returncode}")
    return result.stdout


def parse_figures(text: str, patterns: dict[str, str]) -> dict[str, float | None]:
    """The first number each pattern captures in ``text``; None where it does not match."""
    figures: dict[str, float | None] = {}
    for key, pattern in patterns.items():
        found = re.search(pattern, text)
        figures[key] = float(found.group(1)) if found else None
    return figures


def parse_knn_memory(text: str) -> list[dict[str, float]]:
    """Rows of the memory table of ``knn.py``: six numbers per line after its header."""
    row = re.compile(r"^\s*" + r"\s+".join([NUMBER] * len(KNN_MEMORY_COLUMNS)) + r"\s*$")
    rows = []
    for line in text.splitlines():
        found = row.match(line)
        if found:
            bank, *sizes = found.groups()
            values = [int(bank), *map(float, sizes)]
            rows.append(dict(zip(KNN_MEMORY_COLUMNS, values, strict=True)))
    return rows


def machine() -> dict[str, Any]:
    """What the figures depend on besides the code: cores, load, library versions."""
    return {
        "cpus": os.cpu_count(),
        "load_average_1_5_15_min": list(os.getloadavg()),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
    }


@dataclass(frozen=True)
class Options:
    """Sizes and inputs of every benchmark; the defaults are those of ``make bench``."""

    params: Path = Path("params.yaml")
    workspace: Path = Path(".")
    """Folder of the ``dvc.yaml`` and ``params.yaml`` the pipeline benchmark copies, and
    where it times a no-op ``dvc repro`` (the repository root)."""
    batches: int = 30
    crops: tuple[int, ...] | None = None
    train_steps: int = 5
    train_crop: int | None = None
    variants: tuple[str, ...] | None = None
    """Training and inference variants; None: one per family (each module's default)."""
    large_batch: int = 32
    inference_repeats: int = 3
    mc_dropout_flags: tuple[str, ...] = MC_DROPOUT_FLAGS
    knn_flags: tuple[str, ...] = KNN_FLAGS
    coreset_variant: str = "patch_ae"
    coreset_fraction: float | None = None
    models_root: Path = paths.MODELS_DIR
    prepared_root: Path = paths.PREPARED_DIR
    categories: tuple[str, ...] | None = None
    """Categories of the coreset and pipeline benchmarks; None: those of params.yaml."""
    pipeline_repeats: int = 3


@dataclass(frozen=True)
class Ratio:
    """A ratio field of a benchmark's rows and the two fields it divides."""

    field: str
    numerator: str
    denominator: str


@dataclass(frozen=True)
class Benchmark:
    """One registered benchmark."""

    title: str
    run: Callable[[Options], Any]
    """Measures and returns the figures (JSON-ready)."""
    text: Callable[[Any], str]
    """The figures as printable text."""
    rows: Callable[[Any], list[dict[str, Any]]]
    """The rows of the figures that carry :attr:`ratios` (flat dicts)."""
    ratios: tuple[Ratio, ...]
    reference: tuple[str, ...]
    """Fields of each row measured as the reference of a ratio, in the same run."""


def flat(row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``row`` with nested dicts flattened: ``{"full": {"scoring_s": 1}}`` ->
    ``{"full_scoring_s": 1}``."""
    result: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, dict):
            result.update(flat(value, f"{prefix}{key}_"))
        else:
            result[f"{prefix}{key}"] = value
    return result


def _mc_dropout(options: Options) -> dict[str, Any]:
    text = run_script("mc_dropout", ("--params", str(options.params), *options.mc_dropout_flags))
    print(text, end="", flush=True)
    return {"flags": list(options.mc_dropout_flags), **parse_figures(text, MC_DROPOUT_FIGURES)}


def _knn(options: Options) -> dict[str, Any]:
    text = run_script("knn", options.knn_flags)
    print(text, end="", flush=True)
    return {
        "flags": list(options.knn_flags),
        **parse_figures(text, KNN_FIGURES),
        "memory": parse_knn_memory(text),
    }


def _coreset(options: Options) -> list[dict[str, Any]]:
    return coreset.run(
        options.params,
        options.coreset_variant,
        options.categories,
        options.coreset_fraction,
        options.models_root,
        options.prepared_root,
    )


def _coreset_text(rows: list[dict[str, Any]]) -> str:
    return coreset.format_table(rows) if rows else "no trained patch_ae model: skipped"


def _pipeline_rows(figures: dict[str, Any]) -> list[dict[str, Any]]:
    workspace = figures["workspace"]
    return [figures["scratch"]] + ([workspace] if workspace["skipped"] is None else [])


def _printed(text: str) -> str:
    """mc_dropout and knn print as they run: nothing is left to print afterwards."""
    del text
    return ""


BENCHMARKS: dict[str, Benchmark] = {
    "corruption": Benchmark(
        title="tf.data vs NumPy/OpenCV vs training step",
        run=lambda o: corruption.run(o.params, o.batches, o.crops),
        text=corruption.format_figures,
        rows=lambda figures: figures["crops"],
        ratios=(
            Ratio("tf_data_over_reference", "tf_data", "reference"),
            Ratio("tf_data_over_training", "tf_data", "training"),
        ),
        reference=("reference", "training"),
    ),
    "training": Benchmark(
        title="train_on_batch throughput, FLOP/s vs a plain matmul",
        run=lambda o: training.run(o.params, o.train_steps, o.variants, o.train_crop),
        text=training.format_figures,
        rows=lambda figures: figures["variants"],
        ratios=(
            Ratio("step_over_matmul", "gflop_per_s", "matmul_gflop_per_s"),
            Ratio("step_over_forward", "step_gflop", "forward_gflop"),
        ),
        reference=("matmul_gflop_per_s",),
    ),
    "inference": Benchmark(
        title="detector latency (batch 1) vs throughput (large batch)",
        run=lambda o: inference.run(o.params, o.large_batch, o.inference_repeats, o.variants),
        text=inference.format_figures,
        rows=lambda figures: figures["variants"],
        ratios=tuple(
            Ratio(f"{path}_large_over_batch1", f"{path}_ms_per_image_large", f"{path}_ms_batch1")
            for path in ("detector", "network")
        ),
        reference=("detector_ms_batch1", "network_ms_batch1"),
    ),
    "mc_dropout": Benchmark(
        title="T batched passes vs one pass",
        run=_mc_dropout,
        text=_printed,
        rows=lambda figures: [figures],
        ratios=(
            Ratio("batched_over_deterministic", "batched_mc_ms", "deterministic_ms"),
            Ratio("naive_over_batched", "naive_mc_ms", "batched_mc_ms"),
        ),
        reference=("deterministic_ms",),
    ),
    "knn": Benchmark(
        title="chunked TF kNN vs scikit-learn",
        run=_knn,
        text=_printed,
        rows=lambda figures: [figures],
        ratios=(Ratio("speedup", "sklearn_s", "reconad_s"),),
        reference=("sklearn_s",),
    ),
    "coreset": Benchmark(
        title="trained Patch AE models, full memory bank vs its patch_ae.bank coreset",
        run=_coreset,
        text=_coreset_text,
        rows=lambda figures: [flat(row) for row in figures],
        ratios=(Ratio("scoring_speedup", "full_scoring_s", "coreset_scoring_s"),),
        reference=("full_scoring_s",),
    ),
    "pipeline": Benchmark(
        title="`dvc repro` with nothing to do, what loss.lambda re-runs",
        run=lambda o: pipeline.run(o.workspace, o.pipeline_repeats, o.categories),
        text=pipeline.format_figures,
        rows=_pipeline_rows,
        ratios=(Ratio("noop_over_full", "noop_repro_s", "full_stub_repro_s"),),
        reference=("full_stub_repro_s",),
    ),
}
"""Every benchmark, in the order ``python -m benchmarks`` runs them."""


def run_all(options: Options, names: Iterable[str] | None = None) -> dict[str, Any]:
    """Run the benchmarks ``names`` (default all), printing each one's text, and return
    their figures by name.

    The pipeline benchmark reads ``dvc.yaml`` and ``params.yaml`` of
    ``options.workspace`` (the repository root), as ``dvc repro`` does, whatever
    ``options.params`` is.

    Raises:
        ValueError: an unknown benchmark name.
    """
    names = list(BENCHMARKS) if names is None else list(names)
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        raise ValueError(f"unknown benchmark {unknown} (known: {', '.join(BENCHMARKS)})")
    results: dict[str, Any] = {"machine_at_start": machine()}
    started = time.perf_counter()
    for index, name in enumerate(names):
        benchmark = BENCHMARKS[name]
        print(f"{chr(10) if index else ''}== {name}: {benchmark.title}", flush=True)
        results[name] = benchmark.run(options)
        text = benchmark.text(results[name])
        if text:
            print(text, flush=True)
    results["load_average_at_end"] = list(os.getloadavg())
    results["seconds"] = time.perf_counter() - started
    return results


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument(
        "--batches", type=int, default=30, help="timed batches per corruption-benchmark rate"
    )
    parser.add_argument(
        "--train-steps", type=int, default=5, help="timed steps per training-benchmark variant"
    )
    parser.add_argument(
        "--inference-repeats", type=int, default=3, help="timed calls per inference batch size"
    )
    parser.add_argument(
        "--pipeline-repeats", type=int, default=3, help="timed no-op `dvc repro` calls"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=list(BENCHMARKS),
        help="run only this benchmark (repeatable); default: all",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="figures as JSON")
    return parser.parse_args()


def main() -> None:
    args = _arguments()
    options = Options(
        params=args.params,
        batches=args.batches,
        train_steps=args.train_steps,
        inference_repeats=args.inference_repeats,
        pipeline_repeats=args.pipeline_repeats,
    )
    results = run_all(options, args.only)
    atomic_write_json(args.out, results)
    print(f"\nfigures written to {args.out} ({results['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
