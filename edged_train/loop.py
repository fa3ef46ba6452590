"""The epoch loop both trainers share: warm-up + cosine LR, the wall-clock budget, the
per-epoch plan (recorded, replayable), and the selection metrics.

:class:`EmotionTrainer` is edged_fer's epoch (SGD + EMA, soft targets, class balance,
distillation); ``tools/train_efficientvit.py`` drives its own epoch through
:func:`run_epochs` with the same :class:`Schedule` and :class:`Budget`.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

Log = Callable[[str], None]


@dataclass
class Schedule:
    """Linear warm-up to ``peak``, then a cosine to ``floor`` over the planned ``epochs``
    (which the budget may change while training: the cosine follows the plan)."""

    peak: float
    warmup_epochs: int
    steps_per_epoch: int
    epochs: int
    floor: float = 0.0

    def lr_at(self, step: int) -> float:
        w = self.warmup_epochs * self.steps_per_epoch
        if step < w:
            return self.peak * (step + 1) / w
        total = max(1, self.epochs * self.steps_per_epoch - w)
        cos = 0.5 * (1 + math.cos(math.pi * min(1.0, (step - w) / total)))
        return self.floor + (self.peak - self.floor) * cos


@dataclass
class Budget:
    """Fit the cosine schedule into a wall-clock budget (a shared machine's speed varies).

    After warm-up the planned epochs follow the measured epoch time (training plus
    validation), down at any time, up (at most to ``max_epochs``) only in the first half
    so the schedule does not jump late; every change is recorded. The run stops once the
    budget is spent, warm-up included. ``margin_s`` is kept for the export after training.
    """

    minutes: float
    max_epochs: int
    warmup_epochs: int
    margin_s: float
    t_start: float
    changes: list[tuple[int, int, int]] = field(default_factory=list)

    def replan(
        self, epoch: int, epochs: int, epoch_times: list[float], val_s: float, log: Log
    ) -> int:
        if self.minutes <= 0 or epoch < max(2, self.warmup_epochs) or epoch >= epochs:
            return epochs
        recent = epoch_times[1:][-3:] if len(epoch_times) > 1 else epoch_times
        per = float(np.median(recent)) + val_s
        left = self.minutes * 60 - (time.time() - self.t_start) - self.margin_s
        fit = min(self.max_epochs, max(epoch, epoch + int(left // (per * 1.05))))
        if fit < epochs or (fit >= epochs + 2 and epoch < epochs * 0.5):
            log(f"time budget: {per:.0f}s/epoch -> epochs {epochs} changed to {fit}")
            self.changes.append((epoch, epochs, fit))
            return fit
        return epochs

    def exhausted(self) -> bool:
        return self.minutes > 0 and time.time() - self.t_start > self.minutes * 60


def read_replay(path: str | Path) -> dict[int, int]:
    """Per-epoch plan (``scheduled_epochs``) of an earlier run's metrics CSV."""
    with Path(path).open() as f:
        return {int(r["epoch"]): int(r["scheduled_epochs"]) for r in csv.DictReader(f)}


def run_epochs(
    schedule: Schedule,
    train_epoch: Callable[[int], Any],
    end_epoch: Callable[[int, Any, float], None],
    budget: Budget,
    log: Log,
    replay: dict[int, int] | None = None,
) -> list[float]:
    """Epochs until the plan (``schedule.epochs``, kept up to date) is done or the budget
    spent; returns each epoch's training time. ``end_epoch`` validates and checkpoints."""
    epoch_times: list[float] = []
    epoch = 0
    while epoch < schedule.epochs:
        epoch += 1
        t0 = time.time()
        stats = train_epoch(epoch)
        te = time.time() - t0
        epoch_times.append(te)
        end_epoch(epoch, stats, te)
        if replay:
            if epoch >= max(replay):  # the replayed run stopped here
                break
            schedule.epochs = replay[epoch + 1]
        else:
            val_s = time.time() - t0 - te
            schedule.epochs = budget.replan(epoch, schedule.epochs, epoch_times, val_s, log)
        if budget.exhausted():
            log("time budget exhausted, stopping (the best-by-validation checkpoint is used)")
            break
    return epoch_times


def selection_metric(pred: Any, y: Any, select_by: str, classes: int = 7) -> float:
    """Validation figure that picks checkpoints and test-time modes: accuracy, or the mean
    of the per-class recalls (rare classes count as much as common ones)."""
    if select_by == "mean_recall":
        recalls = [
            (pred[y == c] == c).float().mean().item() for c in range(classes) if (y == c).any()
        ]
        return float(np.mean(recalls))
    return float((pred == y).float().mean().item())


class MetricsCsv:
    """One row per epoch, flushed: a run's plan and progress survive a crash."""

    def __init__(self, path: Path, header: list[str]) -> None:
        self._f = path.open("w", newline="")
        self._w = csv.writer(self._f)
        self._w.writerow(header)

    def row(self, values: list[Any]) -> None:
        self._w.writerow(values)
        self._f.flush()

    def close(self) -> None:
        self._f.close()
