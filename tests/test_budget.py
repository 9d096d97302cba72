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

from pipeline_fixtures import TINY_VARIANT, in_project, normals_only, tiny_params
from reconad.budget import SPENT_FILE, BudgetedCosineDecay, Pace, TimeBudget
from reconad.config import params_from_dict
from reconad.train import compile_for_training, fit_phases, make_method

STEPS_PER_EPOCH = 3
EPOCHS = 4
PHASES = [{"crop": 32, "epochs": EPOCHS}, {"crop": 32, "epochs": EPOCHS}]


class TickingClock:
    """A clock that advances one second every time it is read, after a ``pause`` on the
    first read past the start (the seconds building and tracing take)."""

    def __init__(self, pause: float = 0.0) -> None:
        self.now = 0.0
        self.pause = pause
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        self.now += 1.0 + (self.pause if self.reads == 2 else 0.0)
        return self.now


class ManualClock:
    """A clock that reads what the test set."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
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


def test_a_damaged_pace_counts_from_zero_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / SPENT_FILE).write_text('{"seconds": 5, "pace": {"start_step": 3}}', "utf-8")
    with caplog.at_level(logging.WARNING, logger="reconad"):
        budget = TimeBudget(minutes(10), tmp_path, TickingClock())
    assert budget.spent_seconds() == pytest.approx(1.0)
    assert not bool(budget.pace.aimed)
    assert SPENT_FILE in caplog.text


def test_without_a_budget_the_schedule_is_keras_cosine_decay_to_the_bit() -> None:
    reference = keras.optimizers.schedules.CosineDecay(2e-3, 100)
    for pace in (None, Pace()):
        schedule = BudgetedCosineDecay(2e-3, 100, pace=pace)
        for step in (0, 1, 37, 99, 100, 250):
            assert float(schedule(step)) == float(reference(step))


def test_a_run_projected_to_fit_follows_the_steps_whatever_the_clock(tmp_path: Path) -> None:
    # Half the budget went on building and tracing: the steps left still fit the rest.
    budget = TimeBudget(minutes(100), tmp_path, ManualClock(start=50.0))
    budget.plan(step=10, seconds_per_step=0.5, total_steps=100)
    assert not bool(budget.pace.aimed)
    schedule = BudgetedCosineDecay(2e-3, 100, pace=budget.pace)
    reference = keras.optimizers.schedules.CosineDecay(2e-3, 100)
    assert all(float(schedule(step)) == float(reference(step)) for step in (1, 10, 60, 100))


def test_a_run_projected_to_overrun_ends_the_cosine_with_the_budget(tmp_path: Path) -> None:
    clock = ManualClock()
    budget = TimeBudget(minutes(100), tmp_path, clock)
    clock.now = 60.0  # 40 s left at 1 s per step: the last step is 60, not 100
    budget.plan(step=20, seconds_per_step=1.0, total_steps=100)
    assert bool(budget.pace.aimed)
    schedule = BudgetedCosineDecay(2e-3, 100, pace=budget.pace)
    reference = keras.optimizers.schedules.CosineDecay(2e-3, 100)
    assert float(schedule(20)) == pytest.approx(float(reference(20)), rel=1e-6)
    rates = [float(schedule(step)) for step in range(20, 61)]
    assert rates == sorted(rates, reverse=True)
    assert rates[-1] == pytest.approx(0.0, abs=1e-12)
    assert float(schedule(40)) == pytest.approx(float(reference(60)), rel=1e-5)


def test_a_later_projection_re_aims_from_where_the_rate_is(tmp_path: Path) -> None:
    clock = ManualClock()
    budget = TimeBudget(minutes(100), tmp_path, clock)
    schedule = BudgetedCosineDecay(2e-3, 100, pace=budget.pace)
    clock.now = 60.0
    budget.plan(step=20, seconds_per_step=1.0, total_steps=100)
    before = float(schedule(30))
    clock.now = 70.0  # faster steps now: 30 s left at 0.5 s per step
    budget.plan(step=30, seconds_per_step=0.5, total_steps=100)
    assert float(schedule(30)) == pytest.approx(before, rel=1e-6)
    assert float(schedule(90)) == pytest.approx(0.0, abs=1e-12)
    assert float(schedule(89)) > 0.0


def test_a_resumed_run_keeps_the_pace(tmp_path: Path) -> None:
    clock = ManualClock()
    first = TimeBudget(minutes(100), tmp_path, clock)
    clock.now = 60.0
    first.plan(step=20, seconds_per_step=1.0, total_steps=100)
    first.save()
    resumed = TimeBudget(minutes(100), tmp_path, ManualClock())
    assert resumed.pace.state() == first.pace.state()
    assert resumed.spent_seconds() == pytest.approx(60.0)


def test_the_schedule_saves_and_loads_as_a_plain_cosine() -> None:
    schedule = BudgetedCosineDecay(2e-3, 100, pace=Pace(10.0, 0.5, 20.0))
    loaded = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert isinstance(loaded, BudgetedCosineDecay)
    assert loaded.pace is None
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
    keras.utils.set_random_seed(params.seed)
    model = method.build()
    compile_for_training(model, method, params, budget)
    with in_project(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}"), mlflow.start_run():
        epochs, _ = fit_phases(model, method, data, params, tmp_path, budget)
    return epochs, model


def test_training_stops_inside_the_first_phase_at_a_rate_near_zero(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Every epoch reads the clock 6 times (3 batches, the projection, the save): 24 steps
    # take about 50 s, and the cap falls in the last epoch of phase 0.
    budget = TimeBudget(minutes(20), tmp_path, TickingClock())
    with caplog.at_level(logging.WARNING, logger="reconad"):
        epochs, model = _fit(tmp_path, budget)
    assert budget.reached
    assert epochs == EPOCHS, "the cap falls in the last epoch of phase 0"
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


def test_a_run_that_fits_the_cap_trains_as_without_it_to_the_bit(tmp_path: Path) -> None:
    # A slow start spends 60 % of the cap before the first step; the steps still fit.
    for run in ("capped", "free"):
        (tmp_path / run).mkdir()
    capped = TimeBudget(minutes(200), tmp_path / "capped", TickingClock(pause=120.0))
    _, with_cap = _fit(tmp_path / "capped", capped)
    _, without = _fit(tmp_path / "free", TimeBudget(None, tmp_path / "free"))
    assert not capped.reached and not bool(capped.pace.aimed)
    for a, b in zip(with_cap.get_weights(), without.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
