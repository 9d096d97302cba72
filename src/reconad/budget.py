"""A wall-clock cap on training, ``train.max_minutes`` (Lightning's ``max_time``).

A profile's step counts are chosen on one machine. On a CPU two or three times slower
the same steps overrun the profile's time budget (docs/quality.md measured 2.7x between
two machines of this project), so the ``cpu`` profile also caps the time itself: training
stops at the first batch that ends past the cap, runs that epoch's validation and keeps
its weights (or the best epoch's, where early stopping keeps them); later phases are
skipped. A cosine learning rate decays over whichever runs out first, the steps or the
time (:class:`BudgetedCosineDecay`), so a run cut by the cap still ends at a rate near
zero instead of halfway down the cosine. On a machine fast enough the cap is never
reached and the run is the same as without it, to the bit.

The time is summed over interrupted and resumed runs: it is saved beside the
checkpoints at the end of every epoch, so a run killed at minute 20 of 25 resumes with
5 minutes left.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from reconad.io import atomic_write_json

SPENT_FILE = "time_spent.json"
"""Where the seconds already spent are kept, inside a run's checkpoint folder."""
log = logging.getLogger("reconad")


class TimeBudget:
    """Seconds spent on training against ``max_minutes`` (None: no cap)."""

    def __init__(
        self,
        max_minutes: float | None,
        checkpoints: Path,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_minutes = max_minutes
        self._record = checkpoints / SPENT_FILE
        self._clock = clock
        self._spent_before = _spent_in(self._record)
        self._started = clock()
        self.reached = False
        self.progress = tf.Variable(
            self._share(self._spent_before), trainable=False, dtype=tf.float32, name="time_spent"
        )
        """Share of the budget spent, in [0, 1] (0 without a cap), as the learning-rate
        schedule reads it inside the compiled training step."""

    def spent_seconds(self) -> float:
        return self._spent_before + self._clock() - self._started

    def exhausted(self) -> bool:
        """Read the clock once: update :attr:`progress` and say whether the cap is
        reached (true from the first call past it on, remembered in :attr:`reached`)."""
        share = self._share(self.spent_seconds())
        self.progress.assign(share)
        self.reached = self.reached or share >= 1.0
        return self.reached

    def _share(self, seconds: float) -> float:
        if self.max_minutes is None:
            return 0.0
        return min(seconds / (60.0 * self.max_minutes), 1.0)

    def save(self) -> None:
        """Record the time spent so far, for a resumed run to start from; without a cap
        there is nothing to resume (a cap set later changes the run key, so that run
        starts in a checkpoint folder of its own)."""
        if self.max_minutes is not None:
            atomic_write_json(self._record, {"seconds": round(self.spent_seconds(), 3)})


class StopAtTimeBudget(keras.callbacks.Callback):
    """Ends ``fit`` after the batch that exhausts the budget; saves the time spent at
    every epoch end."""

    def __init__(self, budget: TimeBudget) -> None:
        super().__init__()
        self.budget = budget

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.budget.exhausted():
            self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.budget.save()


@keras.saving.register_keras_serializable(package="reconad")
class BudgetedCosineDecay(keras.optimizers.schedules.CosineDecay):
    """Keras' cosine decay, at the step or at the share of the time budget spent times
    ``decay_steps``, whichever is further along.

    Where the steps end first (a fast machine) the rate is Keras' ``CosineDecay`` exactly;
    where the budget ends first the rate reaches zero with it. ``progress`` is not saved
    with the model: a reloaded schedule is a plain cosine.
    """

    def __init__(self, *args: Any, progress: tf.Variable | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.progress = progress

    def __call__(self, step: Any) -> Any:
        if self.progress is None:
            return super().__call__(step)
        steps = keras.ops.cast(step, "float32")
        by_time = self.progress * keras.ops.cast(self.decay_steps, "float32")
        return super().__call__(keras.ops.maximum(steps, by_time))


def _spent_in(record: Path) -> float:
    """Seconds a previous attempt spent; 0 when there was none. A damaged record (a kill
    during the write) also counts as 0, with a warning: the budget may then be overrun
    by at most the time lost, never cut short."""
    if not record.exists():
        return 0.0
    try:
        return float(json.loads(record.read_text(encoding="utf-8"))["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("%s: unreadable; the time budget counts from 0 again", record)
        return 0.0
