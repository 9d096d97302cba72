"""Issue 7, item 6: the same params and seed give the same results on a re-run (CPU).

Two fresh processes run fetch -> prepare -> train -> calibrate -> evaluate in two fresh
folders; their thresholds, per-image scores and metrics must be identical to the byte.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from faults_support import CATEGORY, VARIANT, subprocess_env, write_params

PIPELINE = f"""
from reconad.cli import main
pick = ["--variant", "{VARIANT}", "--category", "{CATEGORY}"]
for argv in (["fetch"], ["prepare"], ["train", *pick], ["calibrate", *pick], ["evaluate", *pick]):
    assert main(argv) == 0, argv
"""
RESULTS = (
    Path("models") / VARIANT / CATEGORY / "threshold.json",
    Path("reports/eval") / VARIANT / CATEGORY / "scores.csv",
    Path("reports/eval") / VARIANT / CATEGORY / "metrics.json",
)


def _run_pipeline(workdir: Path) -> dict[Path, bytes]:
    workdir.mkdir()
    write_params(workdir)
    result = subprocess.run(
        [sys.executable, "-c", PIPELINE],
        cwd=workdir,
        env=subprocess_env(workdir),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    return {path: (workdir / path).read_bytes() for path in RESULTS}


@pytest.mark.slow
def test_same_params_and_seed_give_identical_results_in_fresh_runs(tmp_path: Path) -> None:
    first = _run_pipeline(tmp_path / "first")
    second = _run_pipeline(tmp_path / "second")
    for path in RESULTS:
        assert first[path] == second[path], path
