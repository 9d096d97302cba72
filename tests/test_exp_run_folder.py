"""A user's own images through ``dvc exp run``, exactly as issue #16 checks them.

A grey MVTec-layout folder whose sources are not square and differ in size goes through
the real DAG with only ``-S`` settings (``dataset.name=folder``, ``dataset.root``,
``dataset.categories``, ``profile=cpu``), every stage a real ``reconad`` subprocess. The
params are shrunk so that the run takes a few minutes: a value set in ``params.yaml``
wins over the profile, so ``profile=cpu`` chooses nothing here but its name.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import cv2
import pytest
from benchmarks.dvc_stub import dvc, new_project

from faults_support import make_raw_category
from pipeline_fixtures import (
    REPO_DVC_YAML,
    REPO_ROOT,
    commit_everything,
    tiny_every_family_params,
    venv_executable,
)

pytestmark = pytest.mark.slow

CATEGORY = "widget"
SOURCE_SIZES = [(48, 80), (40, 64)]
"""(height, width) of the sources, alternating: neither square nor all alike."""
COUNTS = {"train": 24, "good": 6, "defects": {"crack": 8}}
EXP_RUN_TIMEOUT_S = 1800
VARIANTS = {"aesc": "aesc_stain", "patch_ae": "patch_ae"}


def _tiny_params_for_a_folder() -> dict:
    """AESc and Patch AE, tiny, with the dataset left to ``-S`` as a user would set it.

    Two families keep the run short (CI runs the slow tests): AESc as the issue's own
    command, Patch AE because its backbone needs grey images turned into three channels.
    """
    params = tiny_every_family_params()
    params["run"] = {family: [] for family in params["run"]}
    params["run"].update(aesc=[VARIANTS["aesc"]], patch_ae=[VARIANTS["patch_ae"]])
    return params


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``dvc exp run`` on a grey non-square folder in a fresh git + DVC project."""
    base = tmp_path_factory.mktemp("exp-run-folder")
    images = base / "images"
    make_raw_category(images, CATEGORY, **COUNTS, sizes=SOURCE_SIZES)
    project = new_project(base / "project", REPO_DVC_YAML, _tiny_params_for_a_folder())
    shutil.copytree(
        REPO_ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__")
    )
    commit_everything(project)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATH", f"{venv_executable('dvc').parent}{os.pathsep}{os.environ['PATH']}")
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
        settings = {
            "dataset.name": "folder",
            "dataset.root": images,
            "dataset.categories": f"[{CATEGORY}]",
            "profile": "cpu",
        }
        options = [part for key, value in settings.items() for part in ("-S", f"{key}={value}")]
        dvc(project, "exp", "run", *options, timeout=EXP_RUN_TIMEOUT_S)
    return project


@pytest.mark.parametrize("variant", sorted(VARIANTS.values()))
def test_every_variant_is_evaluated_on_the_folder(experiment: Path, variant: str) -> None:
    metrics = json.loads((experiment / "reports" / "metrics.json").read_text())
    figures = metrics[variant][CATEGORY]
    for name in ("image_auroc", "pixel_auroc", "aupro"):
        assert math.isfinite(figures[name]) and 0.0 <= figures[name] <= 1.0, name


def test_the_folder_was_prepared_grey_at_the_params_size(experiment: Path) -> None:
    prepared = experiment / "data" / "prepared" / CATEGORY
    image = cv2.imread(str(next((prepared / "train").rglob("*.png"))), cv2.IMREAD_UNCHANGED)
    assert image.shape == (32, 32)


def test_the_experiment_is_recorded(experiment: Path) -> None:
    assert dvc(experiment, "exp", "list", "--name-only").stdout.split()
