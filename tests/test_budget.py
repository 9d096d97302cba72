"""``train.max_minutes``: training stops at the first batch past the cap, later phases are
skipped, a cosine learning rate reaches zero with the budget, and the time spent carries
over to a resumed run."""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
import tensorflow as tf

from pipeline_fixtures import TINY_VARIANT, in_project, normals_only, tiny_params
from reconad.budget import SPENT_FILE, BudgetedCosineDecay, TimeBudget
from reconad.config import params_from_dict
from reconad.train import compile_for_training, fit_phases, make_method

STEPS_PER_EPOCH = 3
EPOCHS = 4
PHASES = [{"crop": 32, "epochs": EPOCHS}, {"crop": 32, "epochs": EPOCHS}]


class TickingClock:
    """A clock that advances one second every time it is read."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def minutes(seconds: float) -> float:
    return seconds / 60.0


def test_no_cap_is_never_exhausted(tmp_path: Path) -> None:
    budget = TimeBudget(None, tmp_path, TickingClock())
    assert not any(budget.exhausted() for _ in range(100))
    assert not budget.reached
    budget.save()
    assert not (tmp_path / SPENT_FILE).exists(), "no cap: no time to carry over"


def test_the_budget_is_exhausted_from_the_cap_on(tmp_path: Path) -> None:
    budget = TimeBudget(minutes(5), tmp_path, TickingClock())
    seen = [budget.exhausted() for _ in range(8)]
    assert seen == [False, False, False, False, True, True, True, True]
    assert budget.reached


def test_a_resumed_run_starts_with_the_time_already_spent(tmp_path: Path) -> None:
    first = TimeBudget(minutes(10), tmp_path, TickingClock())
    for _ in range(5):
        first.exhausted()
    first.save()  # the clock reads 7 here: 6 s spent
    resumed = TimeBudget(minutes(10), tmp_path, TickingClock())
    assert resumed.spent_seconds() == pytest.approx(7.0)  # 6 before, 1 since the start
    assert [resumed.exhausted() for _ in range(4)] == [False, False, True, True]


def test_a_damaged_record_counts_from_zero_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / SPENT_FILE).write_text("{", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="reconad"):
        budget = TimeBudget(minutes(10), tmp_path, TickingClock())
    assert budget.spent_seconds() == pytest.approx(1.0)
    assert SPENT_FILE in caplog.text


def test_without_a_budget_the_schedule_is_keras_cosine_decay_to_the_bit() -> None:
    reference = keras.optimizers.schedules.CosineDecay(2e-3, 100)
    for progress in (None, tf.Variable(0.0)):
        schedule = BudgetedCosineDecay(2e-3, 100, progress=progress)
        for step in (0, 1, 37, 99, 100, 250):
            assert float(schedule(step)) == float(reference(step))


def test_the_rate_follows_the_time_when_the_time_runs_out_first() -> None:
    progress = tf.Variable(0.5)
    schedule = BudgetedCosineDecay(2e-3, 100, progress=progress)
    assert float(schedule(10)) == pytest.approx(1e-3)  # half the time: half the peak rate
    assert float(schedule(80)) == pytest.approx(float(schedule.__class__(2e-3, 100)(80)))
    progress.assign(1.0)
    assert float(schedule(10)) == pytest.approx(0.0, abs=1e-12)


def test_the_schedule_saves_and_loads_as_a_plain_cosine() -> None:
    schedule = BudgetedCosineDecay(2e-3, 100, progress=tf.Variable(0.5))
    loaded = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert isinstance(loaded, BudgetedCosineDecay)
    assert loaded.progress is None
    assert float(loaded(10)) == float(keras.optimizers.schedules.CosineDecay(2e-3, 100)(10))


def _fit(tmp_path: Path, budget: TimeBudget) -> tuple[int, keras.Model]:
    raw = tiny_params()
    raw["sdc_ae"]["train"].update(
        phases=PHASES, steps_per_epoch=STEPS_PER_EPOCH, lr_schedule="cosine"
    )
    params = params_from_dict(raw, variant=TINY_VARIANT)
    method = make_method(params, TINY_VARIANT, 1)
    images = np.random.default_rng(0).random((10, 32, 32, 1), dtype=np.float32)
    data = normals_only(images[:6], val=images[6:], category="gravel")
    model = method.build()
    compile_for_training(model, method, params, budget)
    with in_project(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}"), mlflow.start_run():
        epochs, _ = fit_phases(model, method, data, params, tmp_path, budget)
    return epochs, model


def test_training_stops_inside_the_first_phase_and_skips_the_second(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The clock is read once when the budget starts and once per batch: 4 batches.
    budget = TimeBudget(minutes(4.5), tmp_path, TickingClock())
    with caplog.at_level(logging.WARNING, logger="reconad"):
        epochs, model = _fit(tmp_path, budget)
    assert budget.reached
    assert epochs == 2, "the cap falls in the second epoch of phase 0"
    assert float(model.optimizer.learning_rate) == pytest.approx(0.0, abs=1e-12)
    assert (tmp_path / "phase0.weights.h5").exists()
    assert not (tmp_path / "phase1.weights.h5").exists()
    assert "train.max_minutes" in caplog.text and "phase 0 of 2" in caplog.text
    assert (tmp_path / SPENT_FILE).exists()


def test_a_budget_not_reached_runs_every_epoch(tmp_path: Path) -> None:
    budget = TimeBudget(minutes(1000), tmp_path, TickingClock())
    epochs, model = _fit(tmp_path, budget)
    assert epochs == 2 * EPOCHS
    assert not budget.reached
    assert int(model.optimizer.iterations) == 2 * EPOCHS * STEPS_PER_EPOCH
