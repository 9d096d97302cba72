"""Chunked TensorFlow kNN (reconad.memory_bank) vs scikit-learn brute force.

Times one nearest-neighbour search of the same queries in the same bank with both, checks
that they agree and prints the speed ratio against scikit-learn, the reference measured
in the same run (goal: ours >= 1.5x faster). Then, for a few
bank sizes, each in a fresh subprocess, prints the peak extra resident memory of one
search, to show that chunking keeps the working memory bounded: ours also copies the
bank once into a TensorFlow tensor (the Patch AE detector does that once per model), so
its working memory is the peak minus one bank.

    python -m benchmarks.knn                      # 50k x 64 bank, 5k queries
    python -m benchmarks.knn --bank 200000 --chunk 2048

Memory is sampled from /proc/self/statm (Linux, glibc).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from sklearn.neighbors import NearestNeighbors

from benchmarks.common import REPOSITORY, median_seconds
from reconad.memory_bank import nearest_distances

MIB = 2**20


def sklearn_distances(queries: np.ndarray, bank: np.ndarray) -> np.ndarray:
    """Nearest-neighbour distances by scikit-learn's brute-force search."""
    index = NearestNeighbors(n_neighbors=1, algorithm="brute").fit(bank)
    return index.kneighbors(queries)[0][:, 0]


def make_data(bank_size: int, queries: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative features (as after a ReLU) for the bank and the queries."""
    rng = np.random.default_rng(seed)
    bank = np.abs(rng.standard_normal((bank_size, dim), dtype=np.float32))
    return np.abs(rng.standard_normal((queries, dim), dtype=np.float32)), bank


def timed(fn: Callable[[], np.ndarray], repeats: int) -> tuple[np.ndarray, float]:
    """The result and the median of ``repeats`` wall times: one search takes a fraction of
    a second, so a single timing is at the mercy of whatever else the cores do."""
    return fn(), median_seconds(fn, repeats, warmup=0)


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def peak_extra_memory(fn: Callable[[], object], interval: float = 0.002) -> int:
    """Peak resident memory above the level before ``fn`` ran, sampled every ``interval`` s.

    Freed heap memory is first handed back to the system (glibc ``malloc_trim``), so that
    ``fn`` cannot silently reuse memory counted in the baseline.
    """
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    baseline = resident_bytes()
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, resident_bytes())
            time.sleep(interval)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    return max(peak, resident_bytes()) - baseline


def compare_speed(args: argparse.Namespace) -> None:
    queries, bank = make_data(args.bank, args.queries, args.dim, args.seed)
    nearest_distances(queries[:8], bank[:64], args.chunk)  # trace the tf.function once
    sklearn_distances(queries[:8], bank[:64])
    ours, ours_time = timed(lambda: nearest_distances(queries, bank, args.chunk), args.repeats)
    theirs, theirs_time = timed(lambda: sklearn_distances(queries, bank), args.repeats)
    print(
        f"bank {args.bank} x {args.dim}, {args.queries} queries, chunk {args.chunk}, "
        f"median of {args.repeats}"
    )
    print(f"  reconad chunked TF kNN : {ours_time:10.6f} s")
    print(f"  sklearn brute force    : {theirs_time:10.6f} s")
    print(f"  speed-up               : {theirs_time / ours_time:9.3f} x")
    print(f"  max |difference|       : {np.max(np.abs(ours - theirs)):.2e}")


def measure_memory(args: argparse.Namespace) -> None:
    """Child process: peak extra memory (MiB) of one search with one implementation."""
    queries, bank = make_data(args.memory_child, args.queries, args.dim, args.seed)
    if args.sklearn:
        sklearn_distances(queries[:8], bank[:64])
        peak = peak_extra_memory(lambda: sklearn_distances(queries, bank))
    else:
        nearest_distances(queries[:8], bank[:64], args.chunk)
        peak = peak_extra_memory(lambda: nearest_distances(queries, bank, args.chunk))
    print(f"{peak / MIB:.1f}")


def child_peak(args: argparse.Namespace, bank_size: int, sklearn: bool) -> float:
    """Peak extra memory measured in a fresh process, so runs do not share freed memory."""
    command = [sys.executable, "-m", "benchmarks.knn", "--memory-child", str(bank_size)]
    command += _shared_flags(args)
    if sklearn:
        command.append("--sklearn")
    output = subprocess.run(
        command, check=True, capture_output=True, text=True, cwd=REPOSITORY
    ).stdout
    return float(output.split()[-1])


def compare_memory(args: argparse.Namespace) -> None:
    print(f"peak extra resident memory of one search ({args.queries} queries, dim {args.dim}):")
    print(
        f"  {'bank':>8} {'bank MiB':>9} {'Q x M matrix MiB':>17} {'ours MiB':>9} "
        f"{'ours - bank':>12} {'sklearn MiB':>12}"
    )
    for size in args.memory_banks:
        ours = child_peak(args, size, sklearn=False)
        theirs = child_peak(args, size, sklearn=True)
        bank_mib = size * args.dim * 4 / MIB
        full_mib = size * args.queries * 4 / MIB
        print(
            f"  {size:>8} {bank_mib:>9.1f} {full_mib:>17.1f} {ours:>9.1f} "
            f"{ours - bank_mib:>12.1f} {theirs:>12.1f}"
        )


def _shared_flags(args: argparse.Namespace) -> list[str]:
    flags = {
        "--queries": args.queries,
        "--dim": args.dim,
        "--chunk": args.chunk,
        "--seed": args.seed,
    }
    return [item for flag, value in flags.items() for item in (flag, str(value))]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bank", type=int, default=50_000, help="bank vectors")
    parser.add_argument("--queries", type=int, default=5_000, help="query vectors")
    parser.add_argument("--dim", type=int, default=64, help="vector dimension")
    parser.add_argument("--chunk", type=int, default=4096, help="reconad chunk size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5, help="timed searches (median)")
    parser.add_argument(
        "--memory-banks",
        type=int,
        nargs="*",
        default=[10_000, 50_000, 200_000],
        help="bank sizes of the memory comparison (none: skip it)",
    )
    parser.add_argument("--memory-child", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--sklearn", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.memory_child:
        measure_memory(args)
        return
    compare_speed(args)
    if args.memory_banks:
        compare_memory(args)


if __name__ == "__main__":
    main()
