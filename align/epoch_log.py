"""Where each epoch's record goes besides the heads: metrics.jsonl, curves.png (redrawn at most
every ``CURVES_EVERY`` seconds, and after the last epoch), TensorBoard when it is installed, and
the console line."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from avfeat.align import checkpoint as ckpt
from avfeat.core.io import write_atomic

CURVES_EVERY = 30.0  # seconds: curves.png is redrawn at most this often, and after the last epoch


class EpochLog:
    """The epoch records of one checkpoint folder ``out``, in its files and in TensorBoard."""

    def __init__(self, out: Path):
        self.out = out
        self._plotted = -math.inf

    def save(self, history: list[dict]) -> None:
        """metrics.jsonl (every record), then the curves when they are due."""
        lines = "".join(json.dumps(record) + "\n" for record in history)
        write_atomic(self.out / ckpt.METRICS_FILE, lines)
        if time.monotonic() - self._plotted > CURVES_EVERY:
            self.plot(history)

    def plot(self, history: list[dict]) -> None:
        from avfeat.align.plots import plot_curves

        if history:
            plot_curves(history, self.out / ckpt.CURVES_FILE)
        self._plotted = time.monotonic()

    def tensorboard(self, record: dict) -> None:
        writer = self._tensorboard()
        if writer is not None:
            writer.add_scalar("loss/train", record["train_loss"], record["step"])
            if "val" in record:
                writer.add_scalar("loss/val", record["val_loss"], record["step"])
                for direction, values in record["val"].items():
                    for name, value in values.items():
                        writer.add_scalar(f"val_{direction}/{name}", value, record["step"])
            writer.flush()

    def _tensorboard(self):
        """A SummaryWriter when tensorboard is installed, else None (logging is optional)."""
        if not hasattr(self, "_writer"):
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.out / ckpt.TENSORBOARD_DIR))
            except ImportError:
                self._writer = None
        return self._writer


# Fewer validation videos: their loss is too noisy to choose an epoch by, the last one is kept. On
# the 80-video synthetic corpus (8 held out), the lowest validation loss picked epoch 4 of 10.
MIN_CHOOSING_VIDEOS = 20


def best_epoch(history: list[dict], by_validation: bool = True) -> int:
    """The epoch heads.safetensors keeps (a later epoch can overfit): the highest validation R@1
    (a2v and v2a averaged: what retrieval will see), then the lowest validation loss, then the
    later epoch; the last epoch when the run validates nothing or not ``by_validation``.

    The loss alone is a poor judge: on the align acceptance corpus (40 held-out videos) the
    lowest-loss epoch had a class R@1 of 0.875 where the last had ≥ 0.89."""
    scored = [r for r in history if by_validation and "val_loss" in r and math.isfinite(r["val_loss"])]
    if not scored:
        return history[-1]["epoch"]
    return max(scored, key=lambda r: (_val_r1(r), -r["val_loss"], r["epoch"]))["epoch"]


def _val_r1(record: dict) -> float:
    """The mean of a2v and v2a validation R@1 of an epoch's record (0 when it has none)."""
    values = [record["val"][direction]["R@1"] for direction in ("a2v", "v2a") if direction in record.get("val", {})]
    return sum(values) / len(values) if values else 0.0


def summary_line(record: dict) -> str:
    """One epoch as a line: losses and validation R@1/5/10 both ways."""
    line = f"epoch {record['epoch']:>3}  step {record['step']:>6}  train {record['train_loss']:.4f}"
    if "val" in record:
        a2v, v2a = record["val"]["a2v"], record["val"]["v2a"]
        line += f"  val {record['val_loss']:.4f}  a2v R@1/5/10 {a2v['R@1']:.2f}/{a2v['R@5']:.2f}/{a2v['R@10']:.2f}"
        line += f"  v2a {v2a['R@1']:.2f}/{v2a['R@5']:.2f}/{v2a['R@10']:.2f}"
    return line
