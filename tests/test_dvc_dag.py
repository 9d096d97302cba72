"""The DVC pipeline of ``dvc.yaml`` + ``params.yaml``, as DVC itself resolves and runs it.

Structure: the repository's two files are copied into a scratch git + DVC project with
one variant of every method family switched on (an ensemble of ``sdc_restore`` and
``aesc_stain`` among them) and inspected through ``dvc stage list``, ``dvc dag --dot`` and
DVC's Python API.

Behaviour: in a second scratch project every ``cmd`` is replaced by a stub that writes
fresh content into the stage's outputs (as a real training writes new weights), keeping
deps, params and outs (``benchmarks/dvc_stub.py``, shared with ``make bench``). ``dvc
repro`` then shows which stages a params change re-runs, in seconds and without TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from benchmarks.dvc_stub import (
    UP_TO_DATE,
    Output,
    StageView,
    changed_stages,
    dvc,
    inside,
    new_project,
    ran_stages,
    resolved_stages,
    stage_family,
    stub_pipeline,
)

from pipeline_fixtures import (
    FAMILY_VARIANTS,
    REPO_DVC_YAML,
    commit_everything,
    repo_params,
    with_every_family,
    write_yaml,
)
from reconad.cli import build_parser
from reconad.models import FAMILIES, method_class

CATEGORIES: tuple[str, ...] = tuple(repo_params()["dataset"]["categories"])
MATRIX_KINDS = ("train", "calibrate", "evaluate")


def matrix_stages(kind: str, family: str, categories: tuple[str, ...] = CATEGORIES) -> set[str]:
    """``<kind>_<family>@<variant>-<category>`` for every category, as DVC names them."""
    return {f"{kind}_{family}@{FAMILY_VARIANTS[family]}-{c}" for c in categories}


def family_stages(family: str, categories: tuple[str, ...] = CATEGORIES) -> set[str]:
    return set().union(*(matrix_stages(kind, family, categories) for kind in MATRIX_KINDS))


def data_stages(categories: tuple[str, ...] = CATEGORIES) -> set[str]:
    """``fetch``, one ``prepare@<category>`` per category, and ``report``."""
    return {"fetch", "report"} | {f"prepare@{category}" for category in categories}


def pipeline_stages(categories: tuple[str, ...] = CATEGORIES) -> set[str]:
    families = (family_stages(family, categories) for family in FAMILY_VARIANTS)
    return data_stages(categories).union(*families)


def all_families_params(categories: tuple[str, ...] = CATEGORIES) -> dict[str, Any]:
    """The repository's params with one variant of every method family selected."""
    params = with_every_family(repo_params())
    params["dataset"]["categories"] = list(categories)
    return params


def test_every_registered_family_has_a_variant_here() -> None:
    assert set(FAMILY_VARIANTS) == set(FAMILIES)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return new_project(
        tmp_path_factory.mktemp("dag") / "project", REPO_DVC_YAML, all_families_params()
    )


@pytest.fixture(scope="module")
def stages(project: Path) -> dict[str, StageView]:
    return resolved_stages(project)


def test_stage_list_names_every_stage(project: Path) -> None:
    listed = dvc(project, "stage", "list", "--name-only").stdout.split()
    assert set(listed) == pipeline_stages()
    assert len(listed) == 2 + (1 + len(MATRIX_KINDS) * len(FAMILIES)) * len(CATEGORIES)


def test_repository_params_resolve(tmp_path: Path) -> None:
    """The committed params (empty aesc and patch_ae lists) give a valid DAG too."""
    bare = new_project(tmp_path / "bare", REPO_DVC_YAML, repo_params())
    listed = set(dvc(bare, "stage", "list", "--name-only").stdout.split())
    selected = {f for f, variants in repo_params()["run"].items() if variants}
    assert listed == data_stages().union(*map(family_stages, selected))


def test_every_cmd_is_a_valid_reconad_call(stages: dict[str, StageView]) -> None:
    parser = build_parser()
    for name, stage in stages.items():
        argv = shlex.split(stage.cmd)
        assert argv[0] == "reconad", name
        args = parser.parse_args(argv[1:])
        kind = stage_family(name)
        assert args.stage == (kind[0] if kind else name.split("@")[0]), name
        if kind:
            assert f"{args.variant}-{args.category}" == name.split("@")[1], name
        elif "@" in name:
            assert args.category == [name.split("@")[1]], name


def test_only_sdc_training_lists_the_loss(stages: dict[str, StageView]) -> None:
    for family in FAMILIES:
        for name in matrix_stages("train", family):
            lists_loss = any(key.split(".")[0] == "loss" for key in stages[name].params)
            assert lists_loss == (family == "sdc_ae"), name


def test_every_stage_of_a_family_lists_its_variant_and_profile(
    stages: dict[str, StageView],
) -> None:
    profile = repo_params()["profile"]
    for family, variant in FAMILY_VARIANTS.items():
        own = {f"profiles.{profile}"} if family == "ensemble" else {f"profiles.{profile}.{family}"}
        for kind in MATRIX_KINDS:
            for name in matrix_stages(kind, family):
                listed = stages[name].params
                assert own <= listed, name
                assert {f"variants.{variant}", "variants"} & listed, name


def test_a_family_stage_lists_no_other_familys_profile_block(
    stages: dict[str, StageView],
) -> None:
    """Editing one family's lines of a profile re-runs that family's stages only."""
    profile = repo_params()["profile"]
    for family in FAMILIES:
        if family == "ensemble":
            continue
        for kind in MATRIX_KINDS:
            for name in matrix_stages(kind, family):
                sections = {
                    key.removeprefix(f"profiles.{profile}.")
                    for key in stages[name].params
                    if key.startswith("profiles.")
                }
                shared = {"dataset", "train"} if kind == "train" else {"dataset"}
                assert sections == {*shared, family}, name


def test_every_profile_has_the_blocks_the_stages_list() -> None:
    """DVC refuses a stage whose listed param is missing, under any profile."""
    for name, blocks in repo_params()["profiles"].items():
        families = {f for f in FAMILIES if f != "ensemble"}
        assert {"dataset", "train", *families} <= set(blocks), name


def test_training_lists_only_its_own_family_blocks(stages: dict[str, StageView]) -> None:
    """A family's training re-runs for its own settings, never another family's."""
    for family in FAMILIES:
        if family == "ensemble":
            continue
        others = {
            block for name, entry in FAMILIES.items() if name != family for block in entry.blocks
        }
        for name in matrix_stages("train", family):
            heads = {key.split(".")[0] for key in stages[name].params}
            assert set(FAMILIES[family].blocks) <= heads, name
            assert not heads & others, name


def test_every_listed_param_exists(stages: dict[str, StageView]) -> None:
    params = all_families_params()
    for name, stage in stages.items():
        for key in stage.params:
            node: Any = params
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"{name}: params.yaml has no {key}"
                node = node[part]


def test_evaluation_depends_on_model_and_threshold(stages: dict[str, StageView]) -> None:
    for family, variant in FAMILY_VARIANTS.items():
        root = method_class(family).models_root.as_posix()
        for category in CATEGORIES:
            model = f"{root}/{variant}/{category}"
            evaluate = stages[f"evaluate_{family}@{variant}-{category}"]
            assert {f"{model}/model", f"{model}/threshold.json"} <= evaluate.deps
            assert f"data/prepared/{category}" in evaluate.deps
            calibrate = stages[f"calibrate_{family}@{variant}-{category}"]
            assert set(calibrate.outs) == {f"{model}/threshold.json"}


def test_ensemble_depends_on_the_models_and_writes_outside_them(
    stages: dict[str, StageView],
) -> None:
    variant = FAMILY_VARIANTS["ensemble"]
    for category in CATEGORIES:
        ensemble = f"ensembles/{variant}/{category}"
        for kind in MATRIX_KINDS:
            stage = stages[f"{kind}_ensemble@{variant}-{category}"]
            assert {"models", f"data/prepared/{category}"} <= stage.deps
            assert "variants" in stage.params
            assert not any(out.startswith("models/") for out in stage.outs)
        assert set(stages[f"train_ensemble@{variant}-{category}"].outs) == {f"{ensemble}/model"}


def test_report_depends_on_every_evaluation(project: Path, stages: dict[str, StageView]) -> None:
    assert "reports/eval" in stages["report"].deps
    dot = dvc(project, "dag", "--dot").stdout
    edges = set(re.findall(r'"([^"]+)" -> "([^"]+)"', dot))
    upstream_of_report = {source for source, target in edges if target == "report"}
    evaluations = set().union(*(matrix_stages("evaluate", f) for f in FAMILY_VARIANTS))
    assert upstream_of_report == evaluations
    assert {("fetch", f"prepare@{category}") for category in CATEGORIES} <= edges


def test_no_stage_depends_on_a_folder_inside_another_stages_output(
    stages: dict[str, StageView],
) -> None:
    """DVC 3.67 cannot restore such a stage from its run cache under a pulled dvc.lock
    (the test at the end of this module)."""
    inner = [
        (name, dep, out)
        for name, stage in stages.items()
        for dep in stage.deps
        for earlier in stages.values()
        for out in earlier.outs
        if inside(dep, out)
    ]
    assert inner == []


def test_report_metrics_and_plots_stay_in_the_workspace(stages: dict[str, StageView]) -> None:
    outs = stages["report"].outs
    assert outs["reports/metrics.json"] == Output(cache=False, metric=True, plot=False)
    for curve in ("roc", "pro"):
        assert outs[f"reports/plots/{curve}"] == Output(cache=False, metric=False, plot=True)
    assert outs["reports/report.html"].cache and outs["reports/report.md"].cache


REPRO_CATEGORIES = CATEGORIES[:2]  # two are enough to see per-category stages; faster


@dataclass(frozen=True)
class ReproHistory:
    project: Path
    params: dict[str, Any]
    first: set[str]
    again: subprocess.CompletedProcess
    status_after_lambda: dict[str, Any]
    rerun_after_lambda: set[str]


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> ReproHistory:
    """Stubbed pipeline: full repro, repro again, then ``loss.lambda`` changed: status, repro."""
    params = all_families_params(REPRO_CATEGORIES)
    project = new_project(tmp_path_factory.mktemp("repro") / "project", REPO_DVC_YAML, params)
    stub_pipeline(project, resolved_stages(project))
    first = ran_stages(dvc(project, "repro"))
    start = time.perf_counter()
    again = dvc(project, "repro")
    seconds = time.perf_counter() - start
    print(f"\n`dvc repro` with nothing to do: {seconds:.1f} s for {len(first)} stages")
    params["loss"]["lambda"] = params["loss"]["lambda"] / 2
    write_yaml(project / "params.yaml", params)
    status = changed_stages(project)
    rerun = ran_stages(dvc(project, "repro"))
    return ReproHistory(project, params, first, again, status, rerun)


def test_first_repro_runs_every_stage(history: ReproHistory) -> None:
    assert history.first == pipeline_stages(REPRO_CATEGORIES)


def test_repro_again_has_nothing_to_do(history: ReproHistory) -> None:
    assert UP_TO_DATE in history.again.stdout
    assert ran_stages(history.again) == set()


def test_lambda_change_marks_only_sdc_training(history: ReproHistory) -> None:
    assert set(history.status_after_lambda) == matrix_stages("train", "sdc_ae", REPRO_CATEGORIES)
    for entries in history.status_after_lambda.values():
        assert entries == [{"changed deps": {"params.yaml": {"loss": "modified"}}}]


def test_lambda_change_reruns_the_sdc_branch_and_the_report(history: ReproHistory) -> None:
    """The ensemble depends on every model, so it is part of the SDC branch."""
    sdc_branch = family_stages("sdc_ae", REPRO_CATEGORIES) | family_stages(
        "ensemble", REPRO_CATEGORIES
    )
    assert history.rerun_after_lambda == sdc_branch | {"report"}


def stages_of(kinds: tuple[str, ...], families: tuple[str, ...]) -> set[str]:
    return {
        name
        for kind in kinds
        for family in families
        for name in matrix_stages(kind, family, REPRO_CATEGORIES)
    }


EVERY_KIND = ("train", "calibrate", "evaluate")
SCORING = ("calibrate", "evaluate")
PARAM_CHANGES: list[tuple[str, Any, set[str]]] = [
    (
        "sdc_ae.score.sigma_px",
        3.0,  # training too: its synthetic monitor scores maps with the family's settings
        stages_of(EVERY_KIND, ("sdc_ae", "ensemble")),
    ),
    ("aesc.corruption.model", "drops", stages_of(("train",), ("aesc",))),
    ("patch_ae.corruption.jitter", 0.2, stages_of(("train",), ("patch_ae",))),
    ("patch_ae.bank.coreset_max", 123, stages_of(("train",), ("patch_ae",))),
    ("calibrate.target_fpr", 0.1, stages_of(("calibrate",), tuple(FAMILY_VARIANTS)) | {"report"}),
    ("evaluate.max_fpr", 0.2, stages_of(("evaluate",), tuple(FAMILY_VARIANTS))),
    ("ensemble.image_score", "top_q_mean", stages_of(EVERY_KIND, ("ensemble",))),
    ("tracking.experiment", "elsewhere", set()),
    (
        "profiles.quick.aesc.train.steps_per_epoch",
        7,  # the ensemble reads every family's profile block
        stages_of(EVERY_KIND, ("aesc", "ensemble")),
    ),
    ("profiles.quick.dataset.image_size", 64, pipeline_stages(REPRO_CATEGORIES)),
]


@pytest.mark.parametrize(
    ("key", "value", "expected"), PARAM_CHANGES, ids=[change[0] for change in PARAM_CHANGES]
)
def test_params_change_marks_only_the_stages_that_read_it(
    history: ReproHistory, key: str, value: Any, expected: set[str]
) -> None:
    changed = json.loads(json.dumps(history.params))
    *parents, last = key.split(".")
    node = changed
    for part in parents:
        node = node[part]
    assert node[last] != value
    node[last] = value
    write_yaml(history.project / "params.yaml", changed)
    try:
        assert set(changed_stages(history.project)) == expected
    finally:
        write_yaml(history.project / "params.yaml", history.params)


def lock_from_elsewhere(lock: Path) -> None:
    """Give every hash in ``lock`` a value this project's cache has never seen, as in a
    ``dvc.lock`` committed on another machine (the repository ships one from ``make run``)."""

    def elsewhere(match: re.Match[str]) -> str:
        return hashlib.md5(f"elsewhere {match[0]}".encode()).hexdigest()

    lock.write_text(re.sub(r"(?<=md5: )[0-9a-f]{32}", elsewhere, lock.read_text()))


def test_exp_run_restores_from_the_run_cache_under_a_lock_from_elsewhere(tmp_path: Path) -> None:
    """A user pulls a new commit whose ``dvc.lock`` came from another machine, then runs
    ``dvc exp run`` with settings this clone has run before: every stage comes back from
    the run cache. With ``data/prepared`` as one stage output, the training stages (which
    depend on a category folder inside it) stopped DVC 3.67 with "failed to load
    directory ('data', 'prepared')"."""
    params = all_families_params(REPRO_CATEGORIES[:1])
    project = new_project(tmp_path / "project", REPO_DVC_YAML, params)
    stub_pipeline(project, resolved_stages(project))
    dvc(project, "repro")
    lock_from_elsewhere(project / "dvc.lock")
    commit_everything(project)
    again = dvc(project, "exp", "run")
    assert ran_stages(again) == set()
    assert again.stdout.count("is cached - skipping run") == len(resolved_stages(project))
