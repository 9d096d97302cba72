"""Issue 7, item 2: bad params are refused before any work starts.

Each case runs a real stage on a ``params.yaml`` with one mistake and checks the one-line
message names the key, and that nothing was fetched, prepared, trained or tracked.

Shared sections are checked by every stage when it loads the params. A family's block and
a variant's overrides are checked by the stages of that variant (``reconad train``), as are
the image and crop sizes a family accepts (fetch and prepare no longer check them): train
refuses them before any training, checkpoint or MLflow run.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from faults_support import CATEGORY, REPO, VARIANT, assert_one_error, run_cli, write_params

TRAIN = ["train", "--variant", VARIANT, "--category", CATEGORY]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def _nothing_done(workdir: Path) -> None:
    for produced in ("data", "models", "reports", ".reconad", "mlflow.db"):
        assert not (workdir / produced).exists(), produced


SHARED_MISTAKES: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
    ("unknown key", {"dataset.imagesize": 32}, ("dataset.imagesize: unknown key", "image_size")),
    ("unknown section", {"trian": {"epochs": 1}}, ("trian: unknown key (allowed:", "sdc_ae")),
    ("wrong type", {"score.batch_size": "eight"}, ("score.batch_size:", "'eight'")),
    ("moved key", {"train.batch_size": 8}, ("train.batch_size: unknown key", "distribute")),
    ("negative count", {"dataset.textures.train": -3}, ("dataset.textures.train:", "-3")),
    ("unknown dataset", {"dataset.name": "imagenet"}, ("dataset.name:", "'imagenet'")),
    ("unknown variant in run", {"run": {"sdc_ae": ["sdc_fast"]}}, ("unknown variant 'sdc_fast'",)),
    ("unknown profile", {"profile": "fast"}, ("profile: unknown profile 'fast'",)),
    ("image size not a multiple of 8", {"dataset.image_size": 36}, ("dataset.image_size:", "8")),
    (
        "area without default",
        {"calibrate.min_defect_area_px": {"brick": 16}},
        ("calibrate.min_defect_area_px:", "default"),
    ),
]
"""Mistakes in the shared sections: every stage refuses them when it loads the params."""

VARIANT_MISTAKES: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
    (
        "typo in a variant override",
        {"variants.sdc_restore.set": {"loss.lamda": 0.3}},
        ("variants.sdc_restore.set: unknown key 'loss.lamda'", "lambda"),
    ),
    (
        "override of a moved key",
        {"variants.sdc_restore.set": {"sdc_ae.width": 0.5}},
        ("variants.sdc_restore.set: unknown key 'sdc_ae.width'", "network"),
    ),
]
"""Mistakes in a variant's overrides: the stages of that variant (``--variant``) refuse
them when they load its params (fetch and prepare load no variant)."""


def _quick_profile_without(key: str) -> dict[str, Any]:
    """The repository's quick profile without the nested ``key`` (``a.b.c``)."""
    profile = yaml.safe_load((REPO / "params.yaml").read_text())["profiles"]["quick"]
    *branches, leaf = key.split(".")
    node = profile
    for branch in branches:
        node = node[branch]
    del node[leaf]
    return profile


FAMILY_MISTAKES: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
    ("wrong type", {"sdc_ae.train.batch_size": "eight"}, ("sdc_ae.train.batch_size:", "'eight'")),
    ("out of range", {"loss.lambda": 1.5}, ("loss.lambda:", "less than or equal to 1", "1.5")),
    ("unknown key", {"sdc_ae.network.widht": 0.5}, ("sdc_ae.network.widht: unknown key", "width")),
    ("loss in the family block", {"sdc_ae.loss": {"lambda": 0.5}}, ("sdc_ae.loss:", "top-level")),
    (
        "null the profile does not fill",
        {"profiles.quick": _quick_profile_without("sdc_ae.train.learning_rate")},
        ("sdc_ae.train.learning_rate: null", "set it"),
    ),
]
"""Mistakes in a family's block: validated by the family's schema when a stage of that
family runs (``reconad train``), before any training or tracking."""


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [case[1:] for case in SHARED_MISTAKES],
    ids=[case[0] for case in SHARED_MISTAKES],
)
@pytest.mark.parametrize("stage", [["fetch"], ["prepare"], TRAIN])
def test_bad_params_stop_the_stage_before_any_work(
    workdir: Path,
    capsys: pytest.CaptureFixture[str],
    stage: list[str],
    overrides: dict[str, Any],
    fragments: tuple[str, ...],
) -> None:
    write_params(workdir, **{key.replace(".", "__"): value for key, value in overrides.items()})
    code, _, err = run_cli(capsys, *stage)
    assert_one_error(code, err, "params.yaml", *fragments)
    _nothing_done(workdir)


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [case[1:] for case in VARIANT_MISTAKES],
    ids=[case[0] for case in VARIANT_MISTAKES],
)
def test_bad_variant_overrides_stop_train_before_any_work(
    workdir: Path,
    capsys: pytest.CaptureFixture[str],
    overrides: dict[str, Any],
    fragments: tuple[str, ...],
) -> None:
    write_params(workdir, **{key.replace(".", "__"): value for key, value in overrides.items()})
    code, _, err = run_cli(capsys, *TRAIN)
    assert_one_error(code, err, "params.yaml", *fragments)
    _nothing_done(workdir)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny project fetched and prepared once (read-only: tests copy it)."""
    folder = tmp_path_factory.mktemp("prepared")
    write_params(folder)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        from reconad.cli import main

        assert main(["fetch"]) == 0 and main(["prepare"]) == 0
    return folder


def _copy_prepared(prepared: Path, workdir: Path) -> None:
    shutil.copytree(prepared / "data", workdir / "data", symlinks=True)


def _nothing_trained(workdir: Path) -> None:
    for produced in ("models", "reports", ".reconad", "mlflow.db"):
        assert not (workdir / produced).exists(), produced


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [case[1:] for case in FAMILY_MISTAKES],
    ids=[case[0] for case in FAMILY_MISTAKES],
)
def test_bad_family_params_stop_train_before_any_training(
    workdir: Path,
    prepared: Path,
    capsys: pytest.CaptureFixture[str],
    overrides: dict[str, Any],
    fragments: tuple[str, ...],
) -> None:
    _copy_prepared(prepared, workdir)
    write_params(workdir, **{key.replace(".", "__"): value for key, value in overrides.items()})
    code, _, err = run_cli(capsys, *TRAIN)
    assert_one_error(code, err, *fragments)
    _nothing_trained(workdir)


def test_unknown_variant_on_the_command_line_lists_the_defined_ones(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_params(workdir)
    code, _, err = run_cli(capsys, "train", "--variant", "sdc_fast", "--category", CATEGORY)
    assert_one_error(code, err, "unknown variant 'sdc_fast'", "sdc_restore", "aesc_stain")
    _nothing_done(workdir)


def test_aesc_image_size_is_left_to_train_and_refused_there_before_training(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """fetch and prepare do not check the run variants' image sizes any more; train
    refuses an AESc variant at 32 px in one line naming the key, before any training."""
    run = {"sdc_ae": [VARIANT], "aesc": ["aesc_stain"], "patch_ae": [], "ensemble": []}
    write_params(workdir, run=run)
    assert run_cli(capsys, "fetch")[0] == 0 and run_cli(capsys, "prepare")[0] == 0
    code, _, err = run_cli(capsys, "train", "--variant", "aesc_stain", "--category", CATEGORY)
    assert_one_error(
        code, err, "aesc.input.size (or dataset.image_size): AESc needs a multiple of 64 (got 32)"
    )
    _nothing_trained(workdir)


def test_a_crop_larger_than_the_images_is_refused_before_training(
    workdir: Path, prepared: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _copy_prepared(prepared, workdir)
    write_params(workdir, sdc_ae__train__phases=[{"crop": 64, "epochs": 1}])
    code, _, err = run_cli(capsys, *TRAIN)
    assert_one_error(code, err, "sdc_ae.train.phases[0].crop: 64 exceeds the image size 32")
    _nothing_trained(workdir)


@pytest.mark.parametrize("params_first", [True, False], ids=["before stage", "after stage"])
def test_the_params_option_is_used_wherever_it_is_given(
    workdir: Path, capsys: pytest.CaptureFixture[str], params_first: bool
) -> None:
    write_params(workdir)
    bad = write_params(workdir / "other", dataset__image_size=36)
    option = ["--params", str(bad)]
    code, _, err = run_cli(capsys, *([*option, "fetch"] if params_first else ["fetch", *option]))
    assert_one_error(code, err, f"{bad}: dataset.image_size:")
    _nothing_done(workdir)


@pytest.mark.parametrize("params_first", [True, False], ids=["before stage", "after stage"])
def test_the_params_option_is_used_for_family_blocks_too(
    workdir: Path, prepared: Path, capsys: pytest.CaptureFixture[str], params_first: bool
) -> None:
    _copy_prepared(prepared, workdir)
    write_params(workdir)
    bad = write_params(workdir / "other", loss__lambda=1.5)
    option = ["--params", str(bad)]
    code, _, err = run_cli(capsys, *([*option, *TRAIN] if params_first else [*TRAIN, *option]))
    assert_one_error(code, err, "loss.lambda:", "1.5")
    _nothing_trained(workdir)
