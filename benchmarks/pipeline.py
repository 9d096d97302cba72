"""``dvc repro`` with nothing to do, and the stages a ``loss.lambda`` change re-runs.

Scratch project: the workspace's ``dvc.yaml`` and ``params.yaml`` with every method family
of :data:`reconad.models.FAMILIES` switched on (:func:`every_family`: the first variant
``params.yaml`` defines for each family, plus the members of the ensemble), every stage
command replaced by a stub that writes fresh outputs (``benchmarks/dvc_stub.py``). Timed:
the first full ``dvc repro``, where every stub runs (DVC's cost per stage plus a Python
start: the reference), then ``dvc repro`` with nothing to do (median of ``repeats``), as
a ratio to the reference. Then ``loss.lambda`` is halved and ``dvc repro`` must re-run
exactly the SDC branch (:func:`sdc_branch`: the stages of the family that owns the
``loss`` block, SDC-AE train/calibrate/evaluate, and everything downstream of them in the
resolved DAG: the ensemble's train/calibrate/evaluate, whose members are SDC-AE variants,
and the report). Stage counts come from the DAG DVC resolves, never from a fixed list.

Workspace: ``dvc repro`` is timed there only when ``dvc status`` finds nothing to do, so
it never trains; otherwise the reason for skipping is recorded. Neither ``params.yaml``
nor ``dvc.lock`` of the workspace is written. From the repository root::

    python -m benchmarks.pipeline
    python -m benchmarks.pipeline --repeats 5 --category brick
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from benchmarks.dvc_stub import (
    DvcCommandError,
    StageView,
    changed_stages,
    downstream,
    dvc,
    new_project,
    ran_stages,
    resolved_stages,
    stage_family,
    stub_pipeline,
    write_params,
)
from reconad.config import ENSEMBLE
from reconad.models import FAMILIES, block_owner

LOSS_BLOCK = "loss"
"""The top-level params block whose ``lambda`` the benchmark changes."""

LAMBDA_FACTOR = 0.5
"""``loss.lambda`` is multiplied by this to make the change."""


def every_family(variants: dict[str, Any]) -> dict[str, list[str]]:
    """``run`` with every family of :data:`reconad.models.FAMILIES` switched on.

    Each family runs the first variant ``variants`` (params.yaml's ``variants`` block)
    defines for it; an ensemble's members are added to their own families, since ``run``
    must list them. A family without any variant stays empty.
    """
    selection: dict[str, list[str]] = {family: [] for family in FAMILIES}
    for family in FAMILIES:
        name = next((n for n, v in variants.items() if v["method"] == family), None)
        if name is not None and name not in selection[family]:
            selection[family].append(name)
    for name in selection.get(ENSEMBLE, []):
        for member in variants[name].get("members", []):
            family = variants[member]["method"]
            if member not in selection[family]:
                selection[family].append(member)
    return selection


def scratch_params(workspace: Path, categories: Sequence[str] | None) -> dict[str, Any]:
    """The workspace's params with :func:`every_family` selected (and ``categories``, if
    given)."""
    params = yaml.safe_load((workspace / "params.yaml").read_text(encoding="utf-8"))
    params["run"] = every_family(params["variants"])
    if categories is not None:
        params["dataset"]["categories"] = list(categories)
    return params


def sdc_branch(stages: dict[str, StageView]) -> set[str]:
    """The stages a ``loss.lambda`` change must re-run: those of the family that owns the
    ``loss`` block and every stage downstream of them in the resolved DAG."""
    owner = block_owner(LOSS_BLOCK)
    seeds = {name for name in stages if (stage_family(name) or ("", ""))[1] == owner}
    return downstream(stages, seeds)


def stages_per_family(stage_names: set[str]) -> dict[str, int]:
    """How many resolved stages each family has; plain stages count under ``""``."""
    counts = Counter((stage_family(name) or ("", ""))[1] for name in stage_names)
    return dict(sorted(counts.items()))


def timed_repro(project: Path) -> tuple[float, set[str]]:
    """Seconds of one ``dvc repro`` in ``project`` and the stages it ran."""
    start = time.perf_counter()
    repro = dvc(project, "repro")
    return time.perf_counter() - start, ran_stages(repro)


def timed_noop_repros(project: Path, repeats: int) -> tuple[float, set[str], bool]:
    """Median seconds of ``repeats`` ``dvc repro`` calls that should have nothing to do.

    Returns:
        The median, the stages any of them ran (none expected) and whether ``dvc.lock``
        kept its bytes.
    """
    lock = project / "dvc.lock"
    before = lock.read_bytes() if lock.exists() else None
    times, ran = [], set()
    for _ in range(repeats):
        seconds, stages = timed_repro(project)
        times.append(seconds)
        ran |= stages
    after = lock.read_bytes() if lock.exists() else None
    return statistics.median(times), ran, before == after


def change_lambda(project: Path, params: dict[str, Any]) -> None:
    """Multiply ``loss.lambda`` of ``project/params.yaml`` by :data:`LAMBDA_FACTOR`."""
    params[LOSS_BLOCK]["lambda"] = params[LOSS_BLOCK]["lambda"] * LAMBDA_FACTOR
    write_params(project, params)


def measure_scratch(
    workspace: Path, repeats: int = 3, categories: Sequence[str] | None = None
) -> dict[str, Any]:
    """Full stub repro, no-op repro and the ``loss.lambda`` re-run set in a scratch project.

    Args:
        workspace: the folder holding the ``dvc.yaml`` and ``params.yaml`` to copy.
        repeats: no-op repros to time (the median is kept).
        categories: dataset categories instead of the workspace's (fewer: faster).

    Returns:
        Stage names and counts (from the resolved DAG), seconds, the no-op / full ratio
        and the re-run stages.
    """
    if repeats < 1:
        raise ValueError(f"Expected repeats >= 1, Received: repeats={repeats}")
    params = scratch_params(workspace, categories)
    with tempfile.TemporaryDirectory(prefix="reconad-bench-dvc-") as scratch:
        project = new_project(Path(scratch) / "project", workspace / "dvc.yaml", params)
        stages = resolved_stages(project)
        stub_pipeline(project, stages)
        full_s, first = timed_repro(project)
        noop_s, noop_ran, lock_kept = timed_noop_repros(project, repeats)
        change_lambda(project, params)
        rerun = ran_stages(dvc(project, "repro"))
    stage_names = set(stages)
    expected = sdc_branch(stages)
    return {
        "families": params["run"],
        "categories": params["dataset"]["categories"],
        "stages": len(stage_names),
        "stage_names": sorted(stage_names),
        "stages_per_family": stages_per_family(stage_names),
        "first_repro_ran": len(first),
        "full_stub_repro_s": full_s,
        "repeats": repeats,
        "noop_repro_s": noop_s,
        "noop_over_full": noop_s / full_s,
        "noop_ran": sorted(noop_ran),
        "noop_kept_lock": lock_kept,
        "lambda_rerun": sorted(rerun),
        "lambda_rerun_count": len(rerun),
        "lambda_rerun_expected": sorted(expected),
        "lambda_rerun_is_sdc_branch": rerun == expected,
        "lambda_rerun_unexpected": sorted(rerun - expected),
        "lambda_rerun_missing": sorted(expected - rerun),
    }


def skip_reason(workspace: Path) -> str | None:
    """Why ``dvc repro`` in ``workspace`` would not be a no-op; None when it would be."""
    try:
        status = changed_stages(workspace)
    except (DvcCommandError, subprocess.TimeoutExpired) as error:
        return f"`dvc status` failed: {str(error).splitlines()[0]}"
    if status:
        example = next(iter(status))
        return f"not up to date ({len(status)} stages to run, e.g. {example}): it would train"
    return None


def measure_workspace(workspace: Path, reference_s: float, repeats: int = 3) -> dict[str, Any]:
    """``dvc repro`` in ``workspace`` if ``dvc status`` says it has nothing to do.

    Args:
        workspace: a DVC project, normally the repository root.
        reference_s: the full stub repro time of :func:`measure_scratch`, for the ratio.
        repeats: repros to time (the median is kept).

    Returns:
        Seconds and ratio (None when skipped), the reference, the skip reason (None when
        timed), the stages the repros ran (none expected) and whether ``dvc.lock`` kept
        its bytes.
    """
    reason = skip_reason(workspace)
    if reason is not None:
        return {
            "noop_repro_s": None,
            "full_stub_repro_s": reference_s,
            "noop_over_full": None,
            "skipped": reason,
        }
    noop_s, ran, lock_kept = timed_noop_repros(workspace, repeats)
    return {
        "noop_repro_s": noop_s,
        "full_stub_repro_s": reference_s,
        "noop_over_full": noop_s / reference_s,
        "skipped": None,
        "repeats": repeats,
        "stages": len(resolved_stages(workspace)),
        "noop_ran": sorted(ran),
        "noop_kept_lock": lock_kept,
    }


def run(
    workspace: Path | str = ".", repeats: int = 3, categories: Sequence[str] | None = None
) -> dict[str, Any]:
    """Measure the scratch project, then the workspace.

    Args:
        workspace: the repository root (``dvc.yaml``, ``params.yaml``, ``dvc.lock``).
        repeats: no-op repros to time in each project (the median is kept).
        categories: categories of the scratch project; default the workspace's.

    Raises:
        ValueError: ``repeats`` < 1.
    """
    if repeats < 1:
        raise ValueError(f"Expected repeats >= 1, Received: repeats={repeats}")
    workspace = Path(workspace).resolve()
    scratch = measure_scratch(workspace, repeats, categories)
    return {
        "scratch": scratch,
        "workspace": measure_workspace(workspace, scratch["full_stub_repro_s"], repeats),
    }


def format_figures(figures: dict[str, Any]) -> str:
    """The figures of :func:`run` as printable text."""
    scratch, workspace = figures["scratch"], figures["workspace"]
    verdict = "yes" if scratch["lambda_rerun_is_sdc_branch"] else "NO"
    per_family = ", ".join(
        f"{family} {count}" for family, count in scratch["stages_per_family"].items() if family
    )
    lines = [
        f"scratch project, stub commands: {scratch['stages']} stages "
        f"(every family: {per_family}; categories {', '.join(scratch['categories'])})",
        f"  full `dvc repro` (reference)  : {scratch['full_stub_repro_s']:7.2f} s "
        f"({scratch['first_repro_ran']} stages ran)",
        f"  `dvc repro`, nothing to do    : {scratch['noop_repro_s']:7.2f} s "
        f"median of {scratch['repeats']}, {scratch['noop_over_full']:.3f}x reference, "
        f"{len(scratch['noop_ran'])} stages ran",
        f"  re-run after loss.lambda x{LAMBDA_FACTOR:g}: "
        f"{scratch['lambda_rerun_count']} / {scratch['stages']} stages; "
        f"exactly the SDC branch + report: {verdict}",
    ]
    for label in ("unexpected", "missing"):
        if scratch[f"lambda_rerun_{label}"]:
            lines.append(f"    {label}: {', '.join(scratch[f'lambda_rerun_{label}'])}")
    if workspace["skipped"] is not None:
        lines.append(f"workspace `dvc repro`, nothing to do: skipped, {workspace['skipped']}")
    else:
        lines.append(
            f"workspace `dvc repro`, nothing to do: {workspace['noop_repro_s']:.2f} s "
            f"median of {workspace['repeats']} ({workspace['stages']} stages), "
            f"{workspace['noop_over_full']:.3f}x reference, "
            f"{len(workspace['noop_ran'])} stages ran"
        )
    return "\n".join(lines)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, default=Path("."), help="repository root")
    parser.add_argument("--repeats", type=int, default=3, help="timed no-op repros")
    parser.add_argument(
        "--category", action="append", help="repeatable; default: the workspace's categories"
    )
    return parser.parse_args()


def main() -> None:
    args = _arguments()
    print(format_figures(run(args.workspace, args.repeats, args.category)))


if __name__ == "__main__":
    main()
