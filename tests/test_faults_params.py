"""Issue 7, item 2: bad params are refused before any work starts.

Each case runs a real stage on a ``params.yaml`` with one mistake and checks the one-line
message names the key, and that nothing was fetched, prepared, trained or tracked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from faults_support import CATEGORY, VARIANT, assert_one_error, run_cli, write_params

TRAIN = ["train", "--variant", VARIANT, "--category", CATEGORY]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def _nothing_done(workdir: Path) -> None:
    for produced in ("data", "models", "reports", ".reconad", "mlflow.db"):
        assert not (workdir / produced).exists(), produced


BAD_PARAMS: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
    ("unknown key", {"dataset.imagesize": 32}, ("dataset.imagesize: unknown key", "image_size")),
    ("unknown section", {"trian": {"epochs": 1}}, ("trian: unknown key (allowed:",)),
    ("wrong type", {"train.batch_size": "eight"}, ("train.batch_size:", "'eight'")),
    ("out of range", {"loss.lambda": 1.5}, ("loss.lambda:", "less than or equal to 1", "1.5")),
    ("negative count", {"dataset.textures.train": -3}, ("dataset.textures.train:", "-3")),
    ("unknown dataset", {"dataset.name": "imagenet"}, ("dataset.name:", "'imagenet'")),
    ("unknown variant in run", {"run": {"sdc_ae": ["sdc_fast"]}}, ("unknown variant 'sdc_fast'",)),
    (
        "typo in a variant override",
        {"variants.sdc_restore.set": {"loss.lamda": 0.3}},
        ("variants.sdc_restore.set: unknown key 'loss.lamda'", "lambda"),
    ),
    ("unknown profile", {"profile": "fast"}, ("profile: unknown profile 'fast'",)),
    ("image size not a multiple of 8", {"dataset.image_size": 36}, ("dataset.image_size:", "8")),
]


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [case[1:] for case in BAD_PARAMS],
    ids=[case[0] for case in BAD_PARAMS],
)
@pytest.mark.parametrize("stage", [["fetch"], TRAIN])
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


def test_unknown_variant_on_the_command_line_lists_the_defined_ones(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_params(workdir)
    code, _, err = run_cli(capsys, "train", "--variant", "sdc_fast", "--category", CATEGORY)
    assert_one_error(code, err, "unknown variant 'sdc_fast'", "sdc_restore", "aesc_stain")
    _nothing_done(workdir)


def test_aesc_image_size_is_refused_at_fetch_before_any_data_is_built(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_params(workdir, run={"sdc_ae": [VARIANT], "aesc": ["aesc_stain"], "patch_ae": []})
    code, _, err = run_cli(capsys, "fetch")
    assert_one_error(
        code, err, "run.aesc: aesc_stain: dataset.image_size: AESc needs a multiple of 64 (got 32)"
    )
    _nothing_done(workdir)


def test_aesc_image_size_is_refused_by_train_before_training(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_params(workdir)
    assert run_cli(capsys, "fetch")[0] == 0 and run_cli(capsys, "prepare")[0] == 0
    code, _, err = run_cli(capsys, "train", "--variant", "aesc_stain", "--category", CATEGORY)
    assert_one_error(code, err, "dataset.image_size: AESc needs a multiple of 64 (got 32)")
    assert not (workdir / "mlflow.db").exists()
    assert not (workdir / ".reconad").exists()
    assert not (workdir / "models").exists()


def test_a_crop_larger_than_the_images_is_refused_before_training(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_params(workdir)
    assert run_cli(capsys, "fetch")[0] == 0 and run_cli(capsys, "prepare")[0] == 0
    write_params(workdir, sdc_ae__schedule=[{"crop": 64, "epochs": 1}])
    code, _, err = run_cli(capsys, *TRAIN)
    assert_one_error(code, err, "sdc_ae.schedule[0].crop: 64 exceeds dataset.image_size 32")
    assert not (workdir / "mlflow.db").exists()
    assert not (workdir / "models").exists()


@pytest.mark.parametrize("params_first", [True, False], ids=["before stage", "after stage"])
def test_the_params_option_is_used_wherever_it_is_given(
    workdir: Path, capsys: pytest.CaptureFixture[str], params_first: bool
) -> None:
    write_params(workdir)
    bad = write_params(workdir / "other", loss__lambda=1.5)
    option = ["--params", str(bad)]
    code, _, err = run_cli(capsys, *([*option, "fetch"] if params_first else ["fetch", *option]))
    assert_one_error(code, err, f"{bad}: loss.lambda:")
    _nothing_done(workdir)
