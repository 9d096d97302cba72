"""The DVC pipeline in a scratch project, with every stage's command replaced by a stub.

A stub writes fresh content into the stage's outputs (as a real training writes new
weights) and keeps its deps, params and outs, so ``dvc repro`` decides what to re-run
exactly as it does for the real pipeline, in seconds and without TensorFlow. Shared by
``tests/test_dvc_dag.py`` (which stages a params change re-runs) and
``benchmarks/pipeline.py`` (how long DVC itself takes).

Every method family has train, calibrate and evaluate stages
(``<kind>_<family>@<variant>-<category>``), the ensemble too (``train_ensemble`` assembles
into ``ensembles/``); :func:`stage_family` reads kind and family back from a stage name
and :func:`downstream` follows the resolved DAG, so that callers derive stage sets and
counts from what DVC resolves instead of hard-coding them.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from reconad.errors import ReconadError

UP_TO_DATE = "Data and pipelines are up to date."
"""What ``dvc repro`` prints when no stage has anything to do."""

DVC_TIMEOUT_S = 300
"""Longest a single ``dvc`` call may take: a full stub repro of every family (one category)
takes < 1 min."""

STUB_STAGE = '''"""Stand-in for a reconad stage: fresh content in every output it is given."""
import json
import sys
import uuid
from pathlib import Path

for name in sys.argv[1:]:
    path = Path(name)
    target = path if path.suffix else path / "stub.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({"token": uuid.uuid4().hex}))
'''


class DvcCommandError(ReconadError):
    """A ``dvc`` call exited non-zero; the message holds what it printed."""


@dataclass(frozen=True)
class Output:
    """How DVC keeps one output: in its cache, and whether it is a metric or a plot."""

    cache: bool
    metric: bool
    plot: bool


@dataclass(frozen=True)
class StageView:
    """A resolved stage (matrix expanded, ``${...}`` substituted) as plain data."""

    cmd: str
    deps: frozenset[str]
    params: frozenset[str]
    outs: dict[str, Output]


def dvc_executable() -> Path:
    """The ``dvc`` console script next to this interpreter (``.venv/bin/dvc``)."""
    return Path(sys.executable).parent / "dvc"


def dvc(project: Path, *args: str, timeout: float = DVC_TIMEOUT_S) -> subprocess.CompletedProcess:
    """``dvc <args>`` in ``project`` with the DVC of this interpreter's environment.

    Analytics are off so that no call waits on the network.

    Raises:
        DvcCommandError: DVC exited non-zero.
    """
    completed = subprocess.run(
        [str(dvc_executable()), *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "DVC_NO_ANALYTICS": "1"},
    )
    if completed.returncode:
        raise DvcCommandError(
            f"dvc {' '.join(args)} in {project} exited with {completed.returncode}:\n"
            f"{completed.stdout}\n{completed.stderr}"
        )
    return completed


def write_params(project: Path, params: dict[str, Any]) -> Path:
    """``params`` as ``project/params.yaml``, keys in their given order."""
    path = project / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


def new_project(root: Path, dvc_yaml: Path, params: dict[str, Any]) -> Path:
    """A fresh git + DVC project at ``root`` holding a copy of ``dvc_yaml`` and ``params``.

    Raises:
        FileExistsError: ``root`` already exists.
    """
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True, timeout=60)
    dvc(root, "init", "-q")
    dvc(root, "config", "core.analytics", "false")
    shutil.copy(dvc_yaml, root / "dvc.yaml")
    write_params(root, params)
    return root


def resolved_stages(project: Path) -> dict[str, StageView]:
    """Every stage of ``project`` as DVC's Python API resolves it, by stage name."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        return {
            stage.name: StageView(
                cmd=stage.cmd,
                deps=frozenset(
                    d.def_path for d in stage.deps if not isinstance(d, ParamsDependency)
                ),
                params=frozenset(
                    key for d in stage.deps if isinstance(d, ParamsDependency) for key in d.params
                ),
                outs={
                    o.def_path: Output(bool(o.use_cache), bool(o.metric), bool(o.plot))
                    for o in stage.outs
                },
            )
            for stage in repo.index.stages
        }


def inside(path: str, folder: str) -> bool:
    """Whether ``path`` lies strictly below ``folder`` (both relative to the project)."""
    return Path(folder) in Path(path).parents


def overlaps(first: str, second: str) -> bool:
    """Whether two project paths are the same or one lies below the other."""
    return first == second or inside(first, second) or inside(second, first)


def stage_family(name: str) -> tuple[str, str] | None:
    """``(kind, family)`` of a matrix stage ``<kind>_<family>@<variant>-<category>``
    (``train_ensemble@sdc_ensemble-brick``: ``("train", "ensemble")``); None for a stage
    of no family (``fetch``, ``prepare@brick``, ``report``)."""
    group, at, _ = name.partition("@")
    kind, _, family = group.partition("_")
    return (kind, family) if at and family else None


def depends_on(later: StageView, earlier: StageView) -> bool:
    """Whether ``later`` reads what ``earlier`` writes: one of its deps is, contains or lies
    inside one of ``earlier``'s outs (``models`` contains ``models/<variant>/<cat>/model``)."""
    return any(overlaps(dep, out) for dep in later.deps for out in earlier.outs)


def downstream(stages: dict[str, StageView], seeds: set[str]) -> set[str]:
    """``seeds`` and every stage that depends on them, directly or through other stages."""
    reached = set(seeds)
    frontier = list(seeds)
    while frontier:
        current = stages[frontier.pop()]
        for name, stage in stages.items():
            if name not in reached and depends_on(stage, current):
                reached.add(name)
                frontier.append(name)
    return reached


def stub_pipeline(project: Path, stages: dict[str, StageView]) -> None:
    """Replace every ``cmd`` of ``project/dvc.yaml`` by the stub stage, in place.

    The stub gets the stage's outs (still ``${item...}`` templates that DVC fills in).
    Source files the stages depend on become placeholders.

    Args:
        project: a project made by :func:`new_project`.
        stages: its stages, from :func:`resolved_stages` before stubbing.
    """
    (project / "stub_stage.py").write_text(STUB_STAGE, encoding="utf-8")
    dvc_yaml = project / "dvc.yaml"
    definition = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))
    every_dep = {dep for stage in stages.values() for dep in stage.deps}
    every_out = {out for stage in stages.values() for out in stage.outs}
    for stage in definition["stages"].values():
        paths = [
            entry if isinstance(entry, str) else next(iter(entry))
            for key in ("outs", "metrics", "plots")
            for entry in stage.get(key, [])
        ]
        stage["cmd"] = shlex.join([sys.executable, "stub_stage.py", *paths])
    dvc_yaml.write_text(yaml.safe_dump(definition, sort_keys=False), encoding="utf-8")
    for dep in every_dep:
        if not any(overlaps(dep, out) for out in every_out):
            (project / dep).parent.mkdir(parents=True, exist_ok=True)
            (project / dep).write_text("# placeholder\n", encoding="utf-8")


def ran_stages(repro: subprocess.CompletedProcess) -> set[str]:
    """The stages a ``dvc repro`` ran, read from what it printed."""
    return set(re.findall(r"Running stage '([^']+)'", repro.stdout))


def changed_stages(project: Path) -> dict[str, Any]:
    """``dvc status --json``: the stages whose deps or params differ from dvc.lock."""
    return json.loads(dvc(project, "status", "--json").stdout or "{}")
