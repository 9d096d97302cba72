"""Every speed benchmark in one run, figures collected in ``reports/bench.json``.

``corruption``, ``training``, ``inference``, ``coreset`` (needs trained Patch AE models;
skipped without them) and ``pipeline`` (``dvc repro`` in a stubbed scratch project and,
when it has nothing to do, in this workspace) run in this process and return their
figures; ``mc_dropout.py`` and ``knn.py`` only print theirs, so they run as subprocesses
and their key numbers are read back from the printed text (a figure that cannot be found
is recorded as null). Each benchmark's text is printed as it finishes; the load average
is recorded with the figures because other work on the machine slows every rate. Sizes
are modest so that the whole run stays within minutes on two cores. From the
repository root (``make bench``)::

    python -m benchmarks
    python -m benchmarks --batches 10 --train-steps 3 --out /tmp/bench.json
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from reconad.runtime import configure_environment

configure_environment()

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks import coreset, corruption, inference, pipeline, training  # noqa: E402
from reconad.io import atomic_write_json  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
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
    """Stdout of ``benchmarks/<name>.py flags`` run by this interpreter.

    Raises:
        SystemExit: the script failed; its stderr is shown first.
    """
    command = [sys.executable, str(BENCH_DIR / f"{name}.py"), *flags]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode:
        sys.stderr.write(result.stderr)
        raise SystemExit(f"benchmarks/{name}.py failed with exit code {result.returncode}")
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


def run_all(
    params_path: Path,
    batches: int,
    train_steps: int = 5,
    inference_repeats: int = 3,
    pipeline_repeats: int = 3,
) -> dict[str, Any]:
    """Run every benchmark, printing each one's text, and return their figures.

    The pipeline benchmark reads ``dvc.yaml`` and ``params.yaml`` of the current directory
    (the repository root), as ``dvc repro`` does, whatever ``params_path`` is.
    """
    results: dict[str, Any] = {"machine_at_start": machine()}
    started = time.perf_counter()

    print("== corruption: tf.data vs NumPy/OpenCV vs training step", flush=True)
    results["corruption"] = corruption.run(params_path, batches)
    print(corruption.format_figures(results["corruption"]), flush=True)

    print("\n== training: train_on_batch throughput, FLOP/s vs a plain matmul", flush=True)
    results["training"] = training.run(params_path, train_steps)
    print(training.format_figures(results["training"]), flush=True)

    print("\n== inference: detector latency (batch 1) vs throughput (batch 32)", flush=True)
    results["inference"] = inference.run(params_path, repeats=inference_repeats)
    print(inference.format_figures(results["inference"]), flush=True)

    print("\n== mc_dropout: T batched passes vs one pass", flush=True)
    text = run_script("mc_dropout", ("--params", str(params_path), *MC_DROPOUT_FLAGS))
    print(text, end="", flush=True)
    results["mc_dropout"] = {
        "flags": list(MC_DROPOUT_FLAGS),
        **parse_figures(text, MC_DROPOUT_FIGURES),
    }

    print("\n== knn: chunked TF kNN vs scikit-learn", flush=True)
    text = run_script("knn", KNN_FLAGS)
    print(text, end="", flush=True)
    results["knn"] = {
        "flags": list(KNN_FLAGS),
        **parse_figures(text, KNN_FIGURES),
        "memory": parse_knn_memory(text),
    }

    print("\n== coreset: trained Patch AE models, full memory bank vs 10% coreset", flush=True)
    rows = coreset.run(params_path, "patch_ae", None, coreset.DEFAULT_FRACTION)
    print(coreset.format_table(rows) if rows else "no trained patch_ae model: skipped", flush=True)
    results["coreset"] = rows

    print("\n== pipeline: `dvc repro` with nothing to do, what loss.lambda re-runs", flush=True)
    results["pipeline"] = pipeline.run(Path.cwd(), repeats=pipeline_repeats)
    print(pipeline.format_figures(results["pipeline"]), flush=True)

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
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="figures as JSON")
    return parser.parse_args()


def main() -> None:
    args = _arguments()
    results = run_all(
        args.params, args.batches, args.train_steps, args.inference_repeats, args.pipeline_repeats
    )
    atomic_write_json(args.out, results)
    print(f"\nfigures written to {args.out} ({results['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
