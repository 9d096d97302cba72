"""Shared set-up of the fault tests (tests/test_faults_*.py): a tiny project, the CLI run
in-process or as a real process, and one small trained model reused by several tests.

Every fault is driven through ``reconad <stage>`` exactly as a user (or ``dvc repro``)
runs it, in a temporary working directory with its own ``params.yaml``.
"""

from __future__ import annotations

import atexit
import copy
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

from pipeline_fixtures import in_project
from reconad.cli import main

REPO = Path(__file__).resolve().parents[1]
RECONAD = Path(sys.executable).with_name("reconad")
VARIANT = "sdc_restore"
CATEGORY = "brick"
ERROR_PREFIX = "reconad: error:"
TRACEBACK = "Traceback (most recent call last)"

TINY: dict[str, Any] = {
    "dataset.image_size": 32,
    "dataset.categories": [CATEGORY],
    "dataset.textures": {"train": 8, "val": 4, "test_good": 4, "test_defect": 5},
    "run": {"sdc_ae": [VARIANT], "aesc": [], "patch_ae": [], "ensemble": []},
    "sdc_ae.network.width": 0.125,
    "sdc_ae.network.dilations": [1, 2],
    "sdc_ae.network.sdc_blocks": 1,
    "sdc_ae.train.phases": [{"crop": 32, "epochs": 2}],
    "sdc_ae.train.batch_size": 4,
    "sdc_ae.train.steps_per_epoch": 3,
    "score.batch_size": 8,
    "evaluate.examples": 1,
}
"""Overrides that shrink the repository's ``params.yaml`` to a seconds-long run."""


def write_params(directory: Path, **overrides: Any) -> Path:
    """``directory/params.yaml``: the repository's params, shrunk by :data:`TINY`, then
    ``overrides`` (dotted keys, ``__`` for ``.``: ``sdc_ae__train__learning_rate=1e-2``)."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    wanted = {**TINY, **{key.replace("__", "."): value for key, value in overrides.items()}}
    for dotted, value in wanted.items():
        node = raw
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = copy.deepcopy(value)
    Path(directory).mkdir(parents=True, exist_ok=True)
    path = Path(directory) / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``reconad argv`` in this process; (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error(code: int, err: str, *fragments: str) -> str:
    """A failed stage: exit 1, exactly one ``reconad: error:`` line holding every
    fragment, and no traceback. Returns the line."""
    assert code == 1, err
    lines = [line for line in err.splitlines() if line.startswith(ERROR_PREFIX)]
    assert len(lines) == 1, err
    assert TRACEBACK not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    """Hidden temporary files or folders that an interrupted write would leave."""
    if not folder.exists():
        return []
    return sorted(
        str(path.relative_to(folder))
        for path in folder.rglob(".*")
        if path.name.endswith((".tmp", ".old")) or ".partial." in path.name
    )


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes, to show that a failure changed nothing."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def write_png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, encoded = cv2.imencode(path.suffix, pixels)
    assert ok
    path.write_bytes(encoded.tobytes())
    return path


def texture(seed: int, size: int | tuple[int, int] = 32, channels: int = 1) -> np.ndarray:
    """A uint8 image of smooth noise, grey or BGR; ``size`` is a side or (height, width)."""
    height, width = _shape(size)
    rng = np.random.default_rng(seed)
    noise = rng.random((height // 4, width // 4, channels)).astype(np.float32)
    image = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    pixels = np.clip(image * 255, 0, 255).astype(np.uint8)
    return pixels.reshape(height, width) if channels == 1 else pixels.reshape(height, width, 3)


def disk_mask(size: int | tuple[int, int] = 32) -> np.ndarray:
    height, width = _shape(size)
    mask = np.zeros((height, width), np.uint8)
    cv2.circle(mask, (width // 2, height // 2), min(height, width) // 5, 255, -1)
    return mask


def _shape(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else size


GOOD_SEEDS, DEFECT_SEEDS = 1000, 2000
"""First texture seeds of good and defective test images: no test image repeats a training
image for up to 1000 training images."""


def make_raw_category(
    root: Path,
    category: str = "widget",
    train: int = 4,
    good: int = 2,
    defects: Mapping[str, int] | None = None,
    sizes: Sequence[int | tuple[int, int]] = (32,),
    channels: int = 1,
) -> Path:
    """A valid MVTec-layout category: ``train`` normal training images, ``good`` normal test
    images and, per defect kind, that many defective test images with disk masks (two cracks
    by default); grey or BGR by ``channels``. The i-th image of each kind has the size
    ``sizes[i % len(sizes)]``, a side or (height, width), so sources may differ."""
    folder = root / category
    for index in range(train):
        size = sizes[index % len(sizes)]
        write_png(folder / "train" / "good" / f"{index:03d}.png", texture(index, size, channels))
    for index in range(good):
        size, seed = sizes[index % len(sizes)], GOOD_SEEDS + index
        write_png(folder / "test" / "good" / f"{index:03d}.png", texture(seed, size, channels))
    seed = DEFECT_SEEDS
    for kind, count in (defects if defects is not None else {"crack": 2}).items():
        for index in range(count):
            size, name = sizes[index % len(sizes)], f"{index:03d}"
            write_png(folder / "test" / kind / f"{name}.png", texture(seed, size, channels))
            write_png(folder / "ground_truth" / kind / f"{name}_mask.png", disk_mask(size))
            seed += 1
    return folder


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on at the moment of asking."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def subprocess_env(workdir: Path) -> dict[str, str]:
    """Environment of a real ``reconad`` process: quiet, its own MLflow store."""
    env = dict(os.environ)
    env.update(
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONUNBUFFERED="1",
        MLFLOW_TRACKING_URI=mlflow_uri(workdir),
    )
    return env


def mlflow_uri(workdir: Path) -> str:
    """A SQLite MLflow store in ``workdir``, copied from a session template so that each
    test does not pay for creating the tables (several seconds)."""
    database = Path(workdir) / "mlflow.db"
    if not database.exists():
        shutil.copyfile(_template_database(), database)
    return f"sqlite:///{database}"


def run_process(
    argv: list[str], workdir: Path, timeout: float = 300, prefix: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``reconad argv`` as a real process in ``workdir`` (``prefix`` e.g. ``unshare -U``)."""
    return subprocess.run(
        [*(prefix or []), str(RECONAD), *argv],
        cwd=workdir,
        env=subprocess_env(workdir),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def unprivileged_prefix() -> list[str]:
    """How to run a process that honours file permissions: as is for a normal user; for
    root (which ignores permission bits) inside a new user namespace, where it has no
    capabilities over the files. Skips the test when neither is possible."""
    if os.geteuid() != 0:
        return []
    probe = subprocess.run(["unshare", "-U", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip("running as root and `unshare -U` is not available")
    return ["unshare", "-U"]


_CACHE: dict[str, Path] = {}


def _template_database() -> Path:
    """An empty MLflow SQLite store with its tables, created once per test session."""
    if "mlflow" not in _CACHE:
        import mlflow

        folder = Path(tempfile.mkdtemp(prefix="reconad-mlflow-template-"))
        atexit.register(shutil.rmtree, folder, True)
        database = folder / "mlflow.db"
        mlflow.MlflowClient(tracking_uri=f"sqlite:///{database}").search_experiments()
        _CACHE["mlflow"] = database
    return _CACHE["mlflow"]


def trained_project(factory: pytest.TempPathFactory) -> Path:
    """A tiny project trained, calibrated and evaluated once per session (read-only).

    Tests copy it with :func:`copy_project` before changing anything.
    """
    if "project" not in _CACHE:
        workdir = factory.mktemp("trained")
        write_params(workdir)
        with in_project(workdir, mlflow_uri(workdir)):
            for argv in (
                ["fetch"],
                ["prepare"],
                ["train", "--variant", VARIANT, "--category", CATEGORY],
                ["calibrate", "--variant", VARIANT, "--category", CATEGORY],
                ["evaluate", "--variant", VARIANT, "--category", CATEGORY],
            ):
                assert main(argv) == 0, argv
        _CACHE["project"] = workdir
    return _CACHE["project"]


def copy_project(source: Path, target: Path) -> Path:
    """A private copy of a project (params, data, models, reports, MLflow store)."""
    shutil.copytree(source, target, dirs_exist_ok=True, symlinks=True)
    return target
