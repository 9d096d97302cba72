"""A wall-clock cap on training, ``train.max_minutes`` (Lightning's ``max_time``).

A profile's step counts are chosen on one machine. On a CPU two or three times slower
the same steps overrun the profile's time budget (docs/quality.md measured 2.7x between
two machines of this project), so the ``cpu`` profile also caps the time itself: training
stops at the first batch that ends past the cap, runs that epoch's validation and keeps
its weights (or the best epoch's, where early stopping keeps them); later phases are
skipped.

A cosine learning rate follows the steps, exactly as Keras' ``CosineDecay``, until the
run is projected to overrun the cap. From then on the rest of the cosine is spread over
the steps the time left allows (:class:`Pace`), so a run cut by the cap still ends at a
rate near zero instead of halfway down the cosine. The projection is made at the end of
an epoch from that epoch's time per step (validation included), never from the first
epoch of a phase, which includes building and tracing. So the clock decides nothing in
a run that fits the cap: it trains as without the cap, to the bit, and repeats.

The time is summed over interrupted and resumed runs: it is saved beside the
checkpoints at the end of every epoch, with the pace, so a run killed at minute 20 of 25
resumes with 5 minutes left and the learning rate where it was.
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
"""Where the seconds already spent (and the pace) are kept, inside a run's checkpoint
folder."""
PACE_KEYS = ("start_step", "start_share", "end_step")
log = logging.getLogger("reconad")


class Pace:
    """How far along the cosine a step is, as a share of its ``decay_steps``.

    Unaimed, the share is ``step / decay_steps``: Keras' schedule. Once :meth:`aim` is
    called, the share left at that step is spread linearly over the steps up to the
    projected last one, so the share is continuous and never decreases. The state lives
    in variables, which the compiled training step reads.
    """

    def __init__(
        self, start_step: float = 0.0, start_share: float = 0.0, end_step: float | None = None
    ) -> None:
        self.aimed = tf.Variable(end_step is not None, trainable=False, name="pace_aimed")
        self.start_step = tf.Variable(start_step, trainable=False, dtype=tf.float32)
        self.start_share = tf.Variable(start_share, trainable=False, dtype=tf.float32)
        self.end_step = tf.Variable(end_step or 0.0, trainable=False, dtype=tf.float32)

    def steps_at(self, step: Any, decay_steps: Any) -> Any:
        """The step the cosine is evaluated at: ``step`` itself until aimed."""
        steps = keras.ops.cast(step, "float32")
        decay = keras.ops.cast(decay_steps, "float32")
        span = keras.ops.maximum(self.end_step - self.start_step, 1.0)
        share = self.start_share + (1.0 - self.start_share) * (steps - self.start_step) / span
        return keras.ops.where(self.aimed, share * decay, steps)

    def aim(self, step: int, end_step: float, decay_steps: int) -> None:
        """Reach the end of the cosine at ``end_step``, from where it is at ``step``."""
        share = float(self.steps_at(step, decay_steps)) / decay_steps
        self.start_step.assign(float(step))
        self.start_share.assign(min(share, 1.0))
        self.end_step.assign(float(end_step))
        self.aimed.assign(True)

    def state(self) -> dict[str, float]:
        """The keyword arguments that restore this pace (none while unaimed)."""
        if not bool(self.aimed):
            return {}
        return {key: float(getattr(self, key)) for key in PACE_KEYS}


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
        self._spent_before, pace = _record_in(self._record)
        self._started = clock()
        self.reached = False
        self.pace = Pace(**pace)
        """Where the learning-rate schedule is, as :class:`BudgetedCosineDecay` reads it."""

    def spent_seconds(self) -> float:
        return self._spent_before + self._clock() - self._started

    def exhausted(self) -> bool:
        """Read the clock once and say whether the cap is reached (true from the first
        call past it on, remembered in :attr:`reached`)."""
        if self.max_minutes is not None:
            self.reached = self.reached or self.spent_seconds() >= 60.0 * self.max_minutes
        return self.reached

    def plan(self, step: int, seconds_per_step: float, total_steps: int) -> None:
        """Aim the cosine at the last step the time left allows, once that comes before
        ``total_steps``; re-aim at every later call, as step times change with the crop."""
        if self.max_minutes is None or seconds_per_step <= 0.0:
            return
        left = max(60.0 * self.max_minutes - self.spent_seconds(), 0.0)
        last = step + left / seconds_per_step
        if last < total_steps or bool(self.pace.aimed):
            self.pace.aim(step, min(last, total_steps), total_steps)

    def save(self) -> None:
        """Record the time spent so far and the pace, for a resumed run to start from;
        without a cap there is nothing to resume (a cap set later changes the run key,
        so that run starts in a checkpoint folder of its own)."""
        if self.max_minutes is not None:
            record = {"seconds": round(self.spent_seconds(), 3), "pace": self.pace.state()}
            atomic_write_json(self._record, record)


class StopAtTimeBudget(keras.callbacks.Callback):
    """Ends ``fit`` after the batch that exhausts the budget; at every epoch end, saves
    the time spent and, from the second epoch of a phase on, projects from the time per
    step since the last epoch end whether the steps left fit the time left."""

    def __init__(self, budget: TimeBudget, total_steps: int) -> None:
        super().__init__()
        self.budget = budget
        self.total_steps = total_steps
        self._last_epoch_end: tuple[float, int] | None = None

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.budget.exhausted():
            self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))  # mirrored too
        seconds = self.budget.spent_seconds()
        if self._last_epoch_end is not None:
            last_seconds, last_step = self._last_epoch_end
            if step > last_step:
                per_step = (seconds - last_seconds) / (step - last_step)
                self.budget.plan(step, per_step, self.total_steps)
        self._last_epoch_end = (seconds, step)
        self.budget.save()


@keras.saving.register_keras_serializable(package="reconad")
class BudgetedCosineDecay(keras.optimizers.schedules.CosineDecay):
    """Keras' cosine decay at the step :class:`Pace` gives: the step itself, unless the
    time budget is projected to run out before ``decay_steps``.

    ``pace`` is not saved with the model: a reloaded schedule is a plain cosine.
    """

    def __init__(self, *args: Any, pace: Pace | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pace = pace

    def __call__(self, step: Any) -> Any:
        if self.pace is None:
            return super().__call__(step)
        return super().__call__(self.pace.steps_at(step, self.decay_steps))


def _record_in(record: Path) -> tuple[float, dict[str, float]]:
    """The seconds a previous attempt spent and its pace; 0 and an unaimed pace when there
    was none. A damaged record (a kill during the write) also counts as none, with a
    warning: the budget may then be overrun by at most the time lost, never cut short."""
    if not record.exists():
        return 0.0, {}
    try:
        saved = json.loads(record.read_text(encoding="utf-8"))
        pace = saved.get("pace") or {}
        restored = {key: float(pace[key]) for key in PACE_KEYS} if pace else {}
        return float(saved["seconds"]), restored
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        log.warning("%s: unreadable; the time budget counts from 0 again", record)
        return 0.0, {}
