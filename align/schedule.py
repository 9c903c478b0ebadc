"""The schedule: what a run does with the batch size, passes and epochs left unset, and the
learning rate at each step.

Fixed defaults (B = 64, one pass per epoch, 10 epochs) gave 10 optimizer steps on 80 videos of
4 s: held-out class R@1 0.25. Derived from the collection, the schedule there is 200 steps of
B = 32 (tests/align/test_defaults.py).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from avfeat.align.config import TrainConfig

log = logging.getLogger(__name__)


def steps_per_pass(n_videos: int, batch_size: int) -> int:
    return max(1, n_videos // batch_size)


AUTO_BATCH = 64  # the automatic batch size is at most this ...
BATCHES_PER_PASS = 8  # ... and leaves at least this many batches in a pass over the training videos ...
MIN_AUTO_BATCH = 32  # ... but is never below this (or every training video): 31 videos once gave B = 2, one negative per positive
AUTO_EPOCHS = 10
MIN_STEPS = 200  # an automatic schedule takes at least this many optimizer steps
SHORT_RUN_STEPS = 100  # a run with fewer steps is flagged as too short to learn


@dataclass(frozen=True)
class Schedule:
    """A run's batch size and optimizer steps, and how the steps divide into epochs."""

    batch_size: int
    passes_per_epoch: int
    epochs: int
    total_steps: int
    steps_per_pass: int

    @property
    def steps_per_epoch(self) -> int:
        return self.steps_per_pass * self.passes_per_epoch


def auto_batch_size(n_videos: int, world_size: int = 1) -> int:
    """The largest power of two up to ``AUTO_BATCH`` that leaves ``BATCHES_PER_PASS`` batches in
    a pass over ``n_videos``, but at least ``min(MIN_AUTO_BATCH, n_videos)`` (then a multiple of
    ``world_size``, which shares each batch).

    A large collection thus gets several steps per pass, and a small one still gets enough
    negatives per positive (72 videos: B = 32, 2 steps per pass; the schedule adds passes).
    """
    batch = 2
    while batch * 2 <= min(AUTO_BATCH, n_videos // BATCHES_PER_PASS):
        batch *= 2
    batch = max(batch, min(MIN_AUTO_BATCH, n_videos))
    return max(world_size, batch - batch % world_size)


def plan_schedule(n_videos: int, n_windows: int, batch_size: int, passes_per_epoch: int | None = None,
                  epochs: int | None = None, steps: int | None = None) -> Schedule:
    """Fill in the parts of the schedule left unset (None) for ``n_videos`` training videos that
    hold ``n_windows`` windows end to end (``WindowTable.disjoint_count``), in batches of
    ``batch_size``.

    - passes per epoch: enough passes (one window per video each) that an epoch draws as many
      windows as the training videos hold; when the epochs are automatic too, at least enough
      that ``AUTO_EPOCHS`` epochs take ``MIN_STEPS`` steps.
    - epochs: ``AUTO_EPOCHS``, or more if that would be fewer than ``MIN_STEPS`` steps (given
      passes); with ``steps``, as many as ``steps`` needs (the last one may be partial).

    Values that are given are kept as they are.
    """
    per_pass = steps_per_pass(n_videos, batch_size)
    if passes_per_epoch is None:
        passes_per_epoch = max(1, math.ceil(n_windows / (per_pass * batch_size)))
        if epochs is None and steps is None:
            passes_per_epoch = max(passes_per_epoch, math.ceil(MIN_STEPS / (AUTO_EPOCHS * per_pass)))
    per_epoch = per_pass * passes_per_epoch
    if steps is not None:
        total, epochs = steps, math.ceil(steps / per_epoch)
    else:
        if epochs is None:
            epochs = max(AUTO_EPOCHS, math.ceil(MIN_STEPS / per_epoch))
        total = epochs * per_epoch
    log.info("schedule: %d epochs of %d passes (%d steps each), %d steps of %d windows, for %d training videos",
             epochs, passes_per_epoch, per_epoch, total, batch_size, n_videos)
    return Schedule(batch_size, passes_per_epoch, epochs, total, per_pass)


def short_run_warning(schedule: Schedule, n_windows: int) -> str | None:
    """One line when the schedule is too short to learn: fewer than ``SHORT_RUN_STEPS`` steps,
    or fewer windows drawn in the whole run than the training videos hold; else None."""
    drawn = schedule.total_steps * schedule.batch_size
    if schedule.total_steps >= SHORT_RUN_STEPS and drawn >= n_windows:
        return None
    why = f"fewer than {SHORT_RUN_STEPS}" if schedule.total_steps < SHORT_RUN_STEPS else f"drawing {drawn} windows of the {n_windows} the training videos hold"
    return (f"this run is too short to learn: {schedule.total_steps} optimizer steps of {schedule.batch_size} windows ({why}); "
            "leave --epochs, --steps and --passes-per-epoch unset for a schedule sized to the collection, or raise them")


def lr_at(step: int, total: int, config: TrainConfig) -> float:
    """Linear warm-up then cosine decay to zero; ``step`` counts from 0."""
    warm = int(config.warmup * total)
    if step < warm:
        return config.lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return config.lr * 0.5 * (1 + math.cos(math.pi * progress))

