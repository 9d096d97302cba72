"""Every ``dvc.yaml`` stage depends on all the code it runs and all the params it reads.

A stale cache is a bug: if a stage runs a module that its ``deps`` do not cover, changing
that module leaves old outputs in place and ``dvc repro`` says nothing changed. So:

- code: ``stage_closure`` finds the reconad modules each stage's command imports
  (transitively); each must be a dep, as its file or a folder that holds it;
- params: the tiny pipeline of every family runs in this process with every read of a
  params field recorded (``Section.__getattribute__``); each value a stage read must be
  covered by one of the stage's ``params`` keys. ``tracking`` is exempt: where MLflow
  logs does not change any output.
"""

from __future__ import annotations

import contextlib
import shlex
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from benchmarks.dvc_stub import StageView, new_project, resolved_stages

from pipeline_fixtures import (
    REPO_DVC_YAML,
    in_project,
    repo_params,
    run_cli,
    tiny_every_family_params,
    with_every_family,
    write_yaml,
)
from reconad import config
from reconad.config import Section, dotted_leaves
from stage_closure import stage_files

UNTRACKED_SECTIONS = ("tracking",)
"""Read by stages but without effect on their outputs."""


@pytest.fixture(scope="module")
def stages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, StageView]:
    project = new_project(
        tmp_path_factory.mktemp("deps") / "project",
        REPO_DVC_YAML,
        with_every_family(repo_params()),
    )
    return resolved_stages(project)


def stage_kind_and_family(stage: StageView, params: dict[str, Any]) -> tuple[str, str | None]:
    """``("train", "sdc_ae")`` for ``reconad train --variant sdc_restore ...``."""
    argv = shlex.split(stage.cmd)
    kind = argv[1]
    if "--variant" not in argv:
        return kind, None
    variant = argv[argv.index("--variant") + 1]
    return kind, params["variants"][variant]["method"]


def covered(path: str, deps: frozenset[str]) -> bool:
    """``path`` is a dep or lies in a folder that is one."""
    return any(path == dep or Path(dep) in Path(path).parents for dep in deps)


def test_every_stage_depends_on_every_module_it_runs(stages: dict[str, StageView]) -> None:
    params = with_every_family(repo_params())
    missing = []
    for name, stage in stages.items():
        kind, family = stage_kind_and_family(stage, params)
        missing += [
            f"{name}: {module} is not in deps"
            for module in sorted(stage_files(kind, family))
            if not covered(module, stage.deps)
        ]
    assert not missing, "\n".join(missing)


def test_no_stage_depends_on_code_it_does_not_run(stages: dict[str, StageView]) -> None:
    """A needless code dep re-runs a stage (a training) for nothing."""
    params = with_every_family(repo_params())
    extra = []
    for name, stage in stages.items():
        kind, family = stage_kind_and_family(stage, params)
        runs = stage_files(kind, family)
        code = {dep for dep in stage.deps if dep.startswith("src/")}
        extra += [f"{name}: {dep} is a dep but not run" for dep in sorted(code - runs)]
    assert not extra, "\n".join(extra)


def test_the_check_fails_when_a_dep_is_removed(stages: dict[str, StageView]) -> None:
    """The check above can fail: drop one module from one stage's deps."""
    params = with_every_family(repo_params())
    stage = stages["calibrate_sdc_ae@sdc_restore-brick"]
    kind, family = stage_kind_and_family(stage, params)
    trimmed = stage.deps - {"src/reconad/models/sdc_ae.py"}
    assert not all(covered(m, trimmed) for m in stage_files(kind, family))


class ParamsReads:
    """Which params fields a piece of code reads, as dotted paths (``sdc_ae.score.sigma_px``).

    Every Params and family config built while recording is indexed, so that a read of
    ``field`` on an object maps to the object's path. Reads made while validating
    (pydantic validators) are not counts: they check values, the stage does not use them.
    """

    def __init__(self) -> None:
        self.paths: dict[int, tuple[str, Any]] = {}
        self.reads: set[str] = set()
        self.paused = 0

    def index(self, obj: Any, path: str, owner: dict[str, str] | None = None) -> None:
        """Remember ``obj`` (a Section, kept alive here) and every section inside it."""
        if not isinstance(obj, Section):
            return
        self.paths[id(obj)] = (path, obj)
        for name in type(obj).model_fields:
            child = obj.__dict__[name]
            key = (owner or {}).get(name, f"{path}.{name}" if path else name)
            self.index(child, key)
            if isinstance(child, dict):
                for item, value in child.items():
                    self.index(value, f"{key}.{item}")
            if isinstance(child, list):
                for value in child:
                    self.index(value, key)

    def record(self, obj: Section, name: str) -> None:
        if self.paused or id(obj) not in self.paths:
            return
        value = obj.__dict__.get(name)
        if isinstance(value, Section) or (
            isinstance(value, dict) and all(isinstance(v, Section) for v in value.values())
        ):
            return
        base = self.paths[id(obj)][0]
        self.reads.add(f"{base}.{name}" if base else name)


@pytest.fixture(scope="module")
def reads_by_stage(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """The tiny pipeline of every family, run stage by stage, with its params reads."""
    workdir = tmp_path_factory.mktemp("reads")
    params = tiny_every_family_params()
    write_yaml(workdir / "params.yaml", params)
    category = params["dataset"]["categories"][0]
    commands = [["fetch"], ["prepare", "--category", category]]
    for family in sorted(params["run"], key=lambda name: name == "ensemble"):
        for variant in params["run"][family]:
            for kind in ("train", "calibrate", "evaluate"):
                commands.append([kind, "--variant", variant, "--category", category])
    commands.append(["report"])
    recorder = ParamsReads()
    found: dict[str, set[str]] = defaultdict(set)
    with pytest.MonkeyPatch.context() as patch, in_project(workdir, f"sqlite:///{workdir}/m.db"):
        install(patch, recorder)
        for argv in commands:
            recorder.reads = set()
            result = run_cli(argv)
            assert result.code == 0, f"{argv}: {result.stderr}"
            family = None
            if "--variant" in argv:
                family = params["variants"][argv[argv.index("--variant") + 1]]["method"]
            found[stage_name(argv, family)] |= recorder.reads
    return found


def install(patch: pytest.MonkeyPatch, recorder: ParamsReads) -> None:
    """Index every params object the code builds, and record field reads on them."""
    original_validate = config._validate
    original_family = config._validate_family

    def validate(raw: dict[str, Any], path: Path | None = None) -> config.Params:
        with paused(recorder):
            params = original_validate(raw, path)
        recorder.index(params, "")
        return params

    def validate_family(name: str, blocks: dict[str, Any]) -> Section:
        from reconad.models import FAMILIES

        with paused(recorder):
            family_config = original_family(name, blocks)
        own, *extra = FAMILIES[name].blocks
        recorder.index(family_config, own, owner={block: block for block in extra})
        return family_config

    def getattribute(self: Section, name: str) -> Any:
        value = object.__getattribute__(self, name)
        if name in type(self).model_fields:
            recorder.record(self, name)
        return value

    patch.setattr(config, "_validate", validate)
    patch.setattr(config, "_validate_family", validate_family)
    patch.setattr(Section, "__getattribute__", getattribute)


@contextlib.contextmanager
def paused(recorder: ParamsReads) -> Iterator[None]:
    recorder.paused += 1
    try:
        yield
    finally:
        recorder.paused -= 1


def stage_name(argv: list[str], family: str | None) -> str:
    return argv[0] if family is None else f"{argv[0]}_{family}"


def resolved_keys(stage: StageView) -> set[str]:
    return set(stage.params)


def listed(read: str, keys: set[str]) -> bool:
    """A read of ``a.b.c`` is covered by a listed ``a``, ``a.b`` or ``a.b.c``."""
    parts = read.split(".")
    return any(".".join(parts[:end]) in keys for end in range(1, len(parts) + 1))


def stage_views(stages: dict[str, StageView], name: str) -> Iterator[StageView]:
    """The resolved stages of one kind and family (``train_sdc_ae@...``), or a plain one."""
    yield from (view for key, view in stages.items() if key.split("@")[0] == name)


@pytest.mark.slow
def test_every_stage_lists_every_params_key_it_reads(
    stages: dict[str, StageView], reads_by_stage: dict[str, set[str]]
) -> None:
    raw = repo_params()
    unlisted = []
    for name, reads in sorted(reads_by_stage.items()):
        views = list(stage_views(stages, name))
        assert views, f"{name}: not a stage of dvc.yaml"
        for view in views:
            keys = resolved_keys(view)
            unlisted += [
                f"{name}: reads {read}, not in its params"
                for read in sorted(reads)
                if read.split(".")[0] not in UNTRACKED_SECTIONS and not listed(read, keys)
            ]
            unlisted += [
                f"{name}: reads {read}, which the profile sets, and "
                f"profiles.${{profile}}.{read} is not in its params"
                for read in sorted(reads)
                if filled_by_profile(read, raw)
                and not listed(f"profiles.{raw['profile']}.{read}", keys)
            ]
    assert not unlisted, "\n".join(sorted(set(unlisted)))


_MISSING = object()


def filled_by_profile(read: str, raw: dict[str, Any]) -> bool:
    """In the repository's params.yaml, ``read`` (or a section holding it) is null and a
    profile sets it: ``-S profile=...`` changes the value without changing the key."""
    profile_keys = {key for profile in raw["profiles"].values() for key in dotted_leaves(profile)}
    parts = read.split(".")
    for end in range(1, len(parts) + 1):
        key = ".".join(parts[:end])
        if key in profile_keys and value_at(raw, parts[:end]) is None:
            return True
    return False


def value_at(raw: dict[str, Any], parts: list[str]) -> Any:
    node: Any = raw
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node
