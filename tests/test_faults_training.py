"""Issue 7, item 4: hours of training survive Ctrl-C, SIGTERM, a crash and a NaN loss.

The resume test drives real ``reconad train`` processes: it interrupts them at epoch
boundaries with real signals and checks from their output that a re-run continues after
the last finished epoch of the right params, and that every phase runs all its epochs.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import tensorflow as tf

import reconad.models.sdc_ae
from faults_support import (
    CATEGORY,
    RECONAD,
    TRACEBACK,
    VARIANT,
    assert_one_error,
    leftovers,
    mlflow_uri,
    run_cli,
    subprocess_env,
    write_params,
)
from reconad.config import load_params
from reconad.data.layout import load_split
from reconad.train import run_key

TRAIN = ["train", "--variant", VARIANT, "--category", CATEGORY]
CHECKPOINTS = Path(".reconad/checkpoints") / VARIANT / CATEGORY
MODEL_FILE = Path("models") / VARIANT / CATEGORY / "model" / "model.keras"
INTERRUPTED = "reconad: interrupted; run the same command again to resume"
# Phase 0 has enough epochs to be interrupted three times; phase 1 shows that a phase
# after a resumed one still runs all of its epochs.
RESUMABLE: dict[str, Any] = {
    "sdc_ae__train__phases": [{"crop": 16, "epochs": 8}, {"crop": 32, "epochs": 2}],
    "sdc_ae__train__steps_per_epoch": 10,
    "sdc_ae__train__patience": 20,
}


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> Path:
    """A prepared tiny project as the working directory."""
    write_params(tmp_path, **RESUMABLE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri(tmp_path))
    assert run_cli(capsys, "fetch")[0] == 0 and run_cli(capsys, "prepare")[0] == 0
    return tmp_path


class Training:
    """A real ``reconad train`` process, its output in files (no pipe to fill up)."""

    def __init__(self, workdir: Path, name: str) -> None:
        self.workdir = workdir
        self.stdout_path = workdir / f"{name}.out"
        self.stderr_path = workdir / f"{name}.err"
        with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
            self.process = subprocess.Popen(
                [str(RECONAD), *TRAIN],
                cwd=workdir,
                env=subprocess_env(workdir),
                stdout=out,
                stderr=err,
                preexec_fn=_take_ctrl_c,
            )

    def wait_for_epoch(self, above: int, exclude: set[Path] = frozenset(), timeout: float = 300):
        """Block until a phase-0 checkpoint (not in ``exclude``) records more than
        ``above`` finished epochs; returns its run folder."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"training ended early:\n{self.stderr()}"
            for metadata in self.workdir.glob(f"{CHECKPOINTS}/*/phase0/training_metadata.json"):
                run = metadata.parents[1]
                if run not in exclude and (backed_up_epoch(run) or 0) > above:
                    return run
            time.sleep(0.05)
        raise AssertionError(f"no checkpoint after epoch {above + 1}:\n{self.stderr()}")

    def stop(self, signum: int) -> int:
        self.process.send_signal(signum)
        return self.process.wait(timeout=120)

    def finish(self) -> int:
        return self.process.wait(timeout=600)

    def stdout(self) -> str:
        return self.stdout_path.read_text()

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def epochs(self) -> list[str]:
        """Keras' ``Epoch i/n`` lines, in order."""
        return [line.strip() for line in self.stdout().splitlines() if line.startswith("Epoch ")]


def _take_ctrl_c() -> None:
    """Let the child see SIGINT as a terminal's Ctrl-C.

    A shell running CI in the background starts it with SIGINT ignored, and Python then
    keeps ignoring it (as ``nohup`` users expect); the test needs a real Ctrl-C.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def backed_up_epoch(run: Path) -> int | None:
    """Finished epochs of phase 0 recorded by BackupAndRestore (None while being written)."""
    try:
        return int(json.loads((run / "phase0/training_metadata.json").read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return None


def _interrupted_cleanly(training: Training, code: int) -> None:
    assert code == 130, training.stderr()
    lines = [line for line in training.stderr().splitlines() if line.startswith("reconad:")]
    assert lines == [INTERRUPTED]
    assert TRACEBACK not in training.stderr()
    assert not MODEL_FILE.exists()
    assert leftovers(training.workdir / "models") == []


@pytest.mark.slow
def test_interrupted_training_resumes_after_its_last_epoch_and_only_with_the_same_params(
    workdir: Path,
) -> None:
    # 1. Ctrl-C once the first epoch is backed up: exit 130, one line, no model.
    first = Training(workdir, "1-sigint")
    run_a = first.wait_for_epoch(above=0)
    _interrupted_cleanly(first, first.stop(signal.SIGINT))
    done_a = backed_up_epoch(run_a)
    assert done_a is not None and 1 <= done_a < 8
    weights_a = (run_a / "phase0/latest.weights.h5").read_bytes()

    # 2. Other params: a fresh start in its own checkpoint folder; SIGTERM unwinds cleanly.
    write_params(workdir, **RESUMABLE, sdc_ae__train__learning_rate=2e-3)
    other = Training(workdir, "2-other-params-sigterm")
    run_b = other.wait_for_epoch(above=0, exclude={run_a})
    _interrupted_cleanly(other, other.stop(signal.SIGTERM))
    assert other.epochs()[0] == "Epoch 1/8"
    assert "resumed after epoch" not in other.stderr()
    assert run_b != run_a and backed_up_epoch(run_b) is not None
    assert backed_up_epoch(run_a) == done_a
    assert (run_a / "phase0/latest.weights.h5").read_bytes() == weights_a

    # 3. The original params again: resumes after epoch done_a; then a hard crash.
    write_params(workdir, **RESUMABLE)
    third = Training(workdir, "3-resume-then-sigkill")
    third.wait_for_epoch(above=done_a, exclude={run_b})
    assert third.stop(signal.SIGKILL) == -signal.SIGKILL
    assert f"phase 0: resumed after epoch {done_a} from the checkpoint" in third.stderr()
    assert third.epochs()[0] == f"Epoch {done_a + 1}/8"
    crashed_at = backed_up_epoch(run_a)
    assert crashed_at is not None and done_a < crashed_at < 8

    # 4. After the crash: resumes after the last backed-up epoch and completes both phases.
    last = Training(workdir, "4-complete")
    assert last.finish() == 0, last.stderr()
    assert f"phase 0: resumed after epoch {crashed_at} from the checkpoint" in last.stderr()
    expected = [f"Epoch {epoch}/8" for epoch in range(crashed_at + 1, 9)]
    assert last.epochs() == [*expected, "Epoch 1/2", "Epoch 2/2"]
    assert f"trained {VARIANT}/{CATEGORY}: 10 epochs" in last.stderr()
    assert MODEL_FILE.exists()
    assert not run_a.exists(), "a finished run keeps no checkpoint"
    assert run_b.exists(), "the other params' checkpoint is left alone"


@pytest.mark.slow
def test_a_nan_loss_stops_training_naming_phase_epoch_and_step(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    write_params(
        workdir,
        sdc_ae__train__phases=[{"crop": 32, "epochs": 3}],
        sdc_ae__train__steps_per_epoch=3,
        sdc_ae__train__batch_size=4,
    )
    real_loss = reconad.models.sdc_ae.SdcAe.loss

    def loss_going_nan(method: reconad.models.sdc_ae.SdcAe):
        """The real loss until 3 training steps and 1 validation batch have run, then NaN."""
        loss = real_loss(method)
        calls = tf.Variable(0, trainable=False)

        def wrapped(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
            calls.assign_add(1)
            value = loss(y_true, y_pred)
            return tf.where(calls > 4, value * float("nan"), value)

        return wrapped

    monkeypatch.setattr(reconad.models.sdc_ae.SdcAe, "loss", loss_going_nan)
    code, _, err = run_cli(capsys, *TRAIN)
    assert_one_error(
        code,
        err,
        "loss became nan at phase 0, epoch 2, step 1; lower ",
        "learning_rate or check the input images",
    )
    assert not MODEL_FILE.exists()
    runs = list(workdir.glob(f"{CHECKPOINTS}/*"))
    assert len(runs) == 1 and backed_up_epoch(runs[0]) == 1, "the last good epoch is kept"
    assert not os.listdir(workdir / "models" / VARIANT / CATEGORY)


@pytest.mark.slow
def test_a_checkpoint_left_empty_by_a_power_loss_is_set_aside_and_the_phase_starts_over(
    workdir: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    write_params(
        workdir, sdc_ae__train__phases=[{"crop": 32, "epochs": 2}], sdc_ae__train__steps_per_epoch=3
    )
    params = load_params(workdir / "params.yaml", variant=VARIANT)
    data = load_split(workdir / "data" / "prepared" / CATEGORY)
    backup = CHECKPOINTS / run_key(params, VARIANT, data) / "phase0"
    backup.mkdir(parents=True)
    for name in ("latest.weights.h5", "training_metadata.json"):
        (backup / name).write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="reconad"):
        code, out, err = run_cli(capsys, *TRAIN)
    assert code == 0, err
    assert any(
        f"{backup / 'training_metadata.json'} is damaged" in m and "the phase starts over" in m
        for m in caplog.messages
    ), caplog.messages
    assert next(line for line in out.splitlines() if line.startswith("Epoch ")) == "Epoch 1/2"
    assert MODEL_FILE.exists()
