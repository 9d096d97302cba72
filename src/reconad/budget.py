"""A wall-clock cap on training, ``train.max_minutes`` (Lightning's ``max_time``).

A profile's step counts are chosen on one machine. On a CPU two or three times slower
the same steps overrun the profile's time budget (docs/quality.md measured 2.7x between
two machines of this project), so the ``cpu`` profile also caps the time itself: training
stops at the first batch that ends past the cap, runs that epoch's validation and keeps
its weights (or the best epoch's, where early stopping keeps them); later phases are
skipped. On a machine fast enough the cap is never reached and the run is the same as
without it.

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

    def spent_seconds(self) -> float:
        return self._spent_before + self._clock() - self._started

    def exhausted(self) -> bool:
        """True from the first call past the cap on; remembered in :attr:`reached`."""
        if self.max_minutes is not None and self.spent_seconds() >= 60.0 * self.max_minutes:
            self.reached = True
        return self.reached

    def save(self) -> None:
        """Record the time spent so far, for a resumed run to start from."""
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
