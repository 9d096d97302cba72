"""Issue 7, item 5: outputs are written atomically, and a read-only or full output folder
is one clear line that leaves the previous outputs untouched.

In-process cases make the operating system calls fail (root ignores permission bits);
the ``slow`` cases use real faults: a folder without write permission for a process that
honours permissions, and a real full file system (a tiny tmpfs in a private mount
namespace).
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from pathlib import Path

import pytest

import reconad.evaluate
from faults_support import (
    CATEGORY,
    VARIANT,
    assert_one_error,
    copy_project,
    leftovers,
    run_cli,
    run_process,
    snapshot,
    trained_project,
    unprivileged_prefix,
)

MODEL_DIR = Path("models") / VARIANT / CATEGORY
EVAL_DIR = Path("reports/eval") / VARIANT / CATEGORY
THRESHOLD = MODEL_DIR / "threshold.json"
STAGE_ARGS = ["--variant", VARIANT, "--category", CATEGORY]
INTERRUPTED = "reconad: interrupted; run the same command again to resume"


@pytest.fixture
def project(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A private copy of the session's trained project, as the working directory."""
    workdir = copy_project(trained_project(tmp_path_factory), tmp_path / "project")
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workdir / 'mlflow.db'}")
    return workdir


def _fail_under(monkeypatch: pytest.MonkeyPatch, name: str, folder: Path, code: int) -> None:
    """Make ``os.<name>(path, ...)`` fail with ``code`` for paths under ``folder``."""
    real = getattr(os, name)
    root = str(Path(folder).resolve())

    def failing(path: object, *args: object, **kwargs: object) -> object:
        if isinstance(path, str | os.PathLike) and str(Path(path).resolve()).startswith(root):
            raise OSError(code, os.strerror(code), str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, name, failing)


def test_full_disk_while_calibrating_keeps_the_old_threshold(
    project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = THRESHOLD.read_bytes()

    def no_space(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", no_space)
    code, _, err = run_cli(capsys, "calibrate", *STAGE_ARGS)
    assert_one_error(code, err, f"no space left on device writing {THRESHOLD}: free space")
    assert THRESHOLD.read_bytes() == before
    assert leftovers(project / "models") == []


def test_read_only_reports_folder_keeps_the_old_evaluation(
    project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = snapshot(EVAL_DIR)
    _fail_under(monkeypatch, "mkdir", project / "reports", errno.EROFS)
    _fail_under(monkeypatch, "open", project / "reports", errno.EROFS)
    code, _, err = run_cli(capsys, "evaluate", *STAGE_ARGS)
    assert_one_error(code, err, f"{EVAL_DIR} is on a read-only file system: choose a writable")
    assert snapshot(EVAL_DIR) == before
    assert leftovers(project / "reports") == []


def test_train_refuses_a_read_only_models_folder_before_training(
    project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = snapshot(MODEL_DIR)
    _fail_under(monkeypatch, "open", project / "models", errno.EROFS)
    code, _, err = run_cli(capsys, "train", *STAGE_ARGS)
    assert_one_error(code, err, f"{MODEL_DIR} is on a read-only file system")
    assert snapshot(MODEL_DIR) == before
    checkpoints = project / ".reconad/checkpoints" / VARIANT / CATEGORY
    assert not checkpoints.exists() or not any(checkpoints.iterdir()), "training started"


@pytest.mark.parametrize(
    ("stage", "outputs"),
    [
        (["calibrate", *STAGE_ARGS], MODEL_DIR),
        (["evaluate", *STAGE_ARGS], EVAL_DIR),
        (["report"], Path("reports")),
    ],
    ids=["calibrate", "evaluate", "report"],
)
def test_an_interrupt_at_the_final_rename_leaves_the_old_outputs_whole(
    project: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    stage: list[str],
    outputs: Path,
) -> None:
    assert run_cli(capsys, *stage)[0] == 0
    before = snapshot(outputs)

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    monkeypatch.setattr(os, "rename", interrupted)
    code, _, err = run_cli(capsys, *stage)
    assert code == 130
    assert err.strip().splitlines()[-1] == INTERRUPTED
    assert snapshot(outputs) == before
    assert leftovers(project / "models") == [] and leftovers(project / "reports") == []


def test_an_interrupt_that_breaks_a_library_clean_up_is_still_an_interrupt(
    project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen for real: Ctrl-C during an MLflow write made SQLite report "database is locked"
    from the clean-up, which used to replace the interrupt with an error."""
    before = snapshot(EVAL_DIR)

    def interrupted_then_locked(*args: object) -> None:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise RuntimeError("database is locked") from exc

    monkeypatch.setattr(reconad.evaluate, "score_images", interrupted_then_locked)
    code, _, err = run_cli(capsys, "evaluate", *STAGE_ARGS)
    assert code == 130
    assert err.strip().splitlines()[-1] == INTERRUPTED
    assert snapshot(EVAL_DIR) == before


def test_outputs_get_the_usual_permissions_not_those_of_temporary_files(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    previous = os.umask(0o022)
    try:
        assert run_cli(capsys, "calibrate", *STAGE_ARGS)[0] == 0
        assert run_cli(capsys, "evaluate", *STAGE_ARGS)[0] == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE(THRESHOLD.stat().st_mode) == 0o644
    assert stat.S_IMODE(EVAL_DIR.stat().st_mode) == 0o755
    assert stat.S_IMODE((EVAL_DIR / "metrics.json").stat().st_mode) == 0o644


@pytest.mark.slow
def test_a_real_write_protected_model_folder_keeps_the_old_threshold(project: Path) -> None:
    before = THRESHOLD.read_bytes()
    (project / MODEL_DIR).chmod(0o555)
    try:
        result = run_process(["calibrate", *STAGE_ARGS], project, prefix=unprivileged_prefix())
    finally:
        (project / MODEL_DIR).chmod(0o755)
    assert_one_error(
        result.returncode, result.stderr, f"{THRESHOLD}: permission denied: make the folder"
    )
    assert THRESHOLD.read_bytes() == before
    assert leftovers(project / "models") == []


def _private_tmpfs_prefix(folder: str, size: str) -> list[str]:
    """Run the command with a ``size`` tmpfs on ``folder`` that only it sees."""
    script = f'mount -t tmpfs -o size={size} tmpfs {folder} && exec "$0" "$@"'
    for unshare in (["unshare", "-m"], ["unshare", "-Urm"]):
        probe = subprocess.run(
            [*unshare, "sh", "-c", "mount -t tmpfs tmpfs /mnt"], capture_output=True, check=False
        )
        if probe.returncode == 0:
            return [*unshare, "sh", "-c", script]
    pytest.skip("cannot mount a private tmpfs here (needs root or user namespaces)")


@pytest.mark.slow
def test_a_real_full_disk_after_training_keeps_the_trained_weights(project: Path) -> None:
    before = snapshot(project / MODEL_DIR)
    full = run_process(
        ["train", *STAGE_ARGS], project, prefix=_private_tmpfs_prefix("models", "64k")
    )
    assert_one_error(
        full.returncode, full.stderr, f"no space left on device writing {MODEL_DIR / 'model'}"
    )
    assert snapshot(project / MODEL_DIR) == before

    rerun = run_process(["train", *STAGE_ARGS], project)
    assert rerun.returncode == 0, rerun.stderr
    assert "phase 0 (crop 32) already trained: resumed from" in rerun.stderr
    assert "Epoch 1/" not in rerun.stdout, "the finished phase was trained again"
    assert (project / MODEL_DIR / "model" / "model.keras").exists()
    assert leftovers(project / "models") == []
