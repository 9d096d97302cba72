"""Helpers for tests that drive the pipeline as a user does: params files, the CLI, the venv.

Not a test module: ``test_pipeline.py`` and ``test_dvc_dag.py`` import it (pytest puts the
tests folder on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from reconad.data.layout import CategoryData

REPO_ROOT = Path(__file__).resolve().parents[1]
REPO_PARAMS = REPO_ROOT / "params.yaml"
REPO_DVC_YAML = REPO_ROOT / "dvc.yaml"
TINY_CATEGORY = "gravel"
TINY_VARIANT = "sdc_restore"
TINY_EPOCHS = 2


def repo_params() -> dict[str, Any]:
    """The repository's ``params.yaml`` as a plain mapping."""
    return yaml.safe_load(REPO_PARAMS.read_text(encoding="utf-8"))


def tiny_params() -> dict[str, Any]:
    """The repository's params shrunk to a run of a few seconds on one CPU core.

    One textures category at 32 px (12 train / 6 val / 16 test images), a 1/8-width
    SDC-AE with one dilated block trained for two epochs of three steps, one variant.
    Profile-controlled values are set explicitly, so the run does not depend on the profile.
    """
    params = repo_params()
    params["dataset"].update(
        name="textures",
        categories=[TINY_CATEGORY],
        image_size=32,
        textures={"train": 12, "val": 6, "test_good": 6, "test_defect": 10},
    )
    params["run"] = {"sdc_ae": [TINY_VARIANT], "aesc": [], "patch_ae": [], "ensemble": []}
    params["sdc_ae"]["network"].update(width=0.125, dilations=[1, 2], sdc_blocks=1)
    params["sdc_ae"]["train"].update(
        phases=[{"crop": 32, "epochs": TINY_EPOCHS}],
        steps_per_epoch=3,
        batch_size=4,
        learning_rate=1e-3,
        lr_schedule="constant",
    )
    params["evaluate"]["examples"] = 1
    return params


FAMILY_VARIANTS = {
    "sdc_ae": "sdc_restore",
    "aesc": "aesc_stain",
    "patch_ae": "patch_ae",
    "patchcore": "patchcore",
    "ensemble": "mixed_ensemble",
}
"""One variant of every method family; the ensemble mixes two families."""
ENSEMBLE_MEMBERS = ["sdc_restore", "aesc_stain"]


def with_every_family(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with one variant of every method family in ``run``."""
    params["run"] = {family: [variant] for family, variant in FAMILY_VARIANTS.items()}
    params["variants"][FAMILY_VARIANTS["ensemble"]] = {
        "method": "ensemble",
        "members": ENSEMBLE_MEMBERS,
    }
    return params


def tiny_every_family_params() -> dict[str, Any]:
    """:func:`tiny_params` with one tiny variant of every method family."""
    params = with_every_family(tiny_params())
    tiny_fit = {"steps_per_epoch": 2, "batch_size": 4, "learning_rate": 1e-3}
    params["aesc"]["network"].update(
        width=0.25, filters=[16, 32, 64, 128], dropout=[0.0, 0.0, 0.1, 0.2]
    )
    params["aesc"]["train"].update(phases=[{"crop": 0, "epochs": 1}], **tiny_fit)
    params["patch_ae"]["network"].update(backbone="vgg16", weights="random", compressed_channels=8)
    params["patch_ae"]["train"].update(phases=[{"crop": 0, "epochs": 1}], **tiny_fit)
    params["patch_ae"]["bank"]["coreset_fraction"] = 0.5
    params["patchcore"]["network"].update(backbone="vgg16", weights="random")
    params["patchcore"]["bank"]["coreset_fraction"] = 0.5
    return params


def write_yaml(path: Path, content: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(content, sort_keys=False), encoding="utf-8")
    return path


def commit_everything(project: Path) -> None:
    """Commit every file of ``project``: ``dvc exp run`` bases the experiment on a commit."""
    identity = ["-c", "user.name=reconad tests", "-c", "user.email=tests@reconad.invalid"]
    for args in (["add", "-A"], [*identity, "commit", "-q", "-m", "project"]):
        subprocess.run(["git", *args], cwd=project, check=True, timeout=120)


def venv_executable(name: str) -> Path:
    """A console script of the interpreter running the tests (``.venv/bin/<name>``)."""
    return Path(sys.executable).parent / name


@dataclass(frozen=True)
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_cli(argv: Sequence[str]) -> CliResult:
    """``reconad <argv>`` in this process, with what it printed.

    In-process so that TensorFlow is imported once for the whole pipeline; the exit code
    is what the ``reconad`` console script would exit with.
    """
    from reconad.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return CliResult(code, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def in_project(workdir: Path, tracking_uri: str) -> Iterator[None]:
    """In-process ``reconad`` calls as a user makes them inside ``workdir``, tracking into
    ``tracking_uri``.

    The working directory and ``MLFLOW_TRACKING_URI`` are restored afterwards, and so is
    MLflow's process-wide tracking URI, so that later tests do not write into this store.
    """
    import mlflow

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        patch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(None)


def normals_only(
    train: np.ndarray, val: np.ndarray | None = None, category: str = "grid"
) -> CategoryData:
    """A prepared category of normal images only (training, and validation if given) with
    an empty test split: what training and the families' ``after_training`` read."""
    empty = np.zeros((0, *train.shape[1:]), np.float32)
    return CategoryData(
        category=category,
        color="grey" if train.shape[-1] == 1 else "rgb",
        image_size=train.shape[1],
        train=train,
        val=empty if val is None else val,
        test=empty,
        test_labels=np.zeros((0,), np.int64),
        test_masks=np.zeros((0, *train.shape[1:3]), bool),
        test_names=[],
        test_defects=[],
        train_names=[],
        val_names=[],
    )
