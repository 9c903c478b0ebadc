"""The audit tables a training run uses (``avfeat audit``): ``--exclude`` leaves out the videos
whose sound likely does not belong to their pictures (before the split), ``--weight-by`` weights
each remaining video's positive pair by that probability.

config.json records each table's path and sha256 (``AuditTables.records``, passed to
``TrainConfig.to_dict``); a resume refuses a table that changed since.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import torch

from avfeat.align.config import AUDIT_OPTIONS, TrainConfig
from avfeat.align.data import WindowTable
from avfeat.core.errors import CheckpointError, InputError


def recorded_tables(training: dict) -> dict[str, dict]:
    """The audit tables' records in a checkpoint's "training" (config.json), by option."""
    return {key: training[key] for key in AUDIT_OPTIONS if isinstance(training.get(key), dict)}


class AuditTables:
    """Reads the run's audit tables for exclusion and weighting, and keeps their records.

    ``recorded``: on resume, the records in the checkpoint's config.json (see
    :func:`recorded_tables`), against which each table's sha256 is checked.
    """

    def __init__(self, config: TrainConfig, cache, out: Path, log: Callable[[str], None], recorded: dict | None = None):
        self.config, self.cache, self.out, self.log = config, cache, out, log
        self.recorded = recorded or {}
        self.records: dict[str, dict] = {}  # config.json records of the audit tables this run uses

    def table(self, key: str):
        """The audit table of option ``key`` (see ``AUDIT_OPTIONS``), checked against the cache
        and, on resume, against the sha256 recorded when the run started: other p_match values
        would change which videos train, or how much each one counts."""
        from avfeat.data.audit_table import read_audit

        path = Path(getattr(self.config, key)).resolve()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None  # a missing file: read_audit says so
        recorded = self.recorded.get(key, {}).get("sha256")
        if digest is not None and recorded is not None and recorded != digest:  # checked first: the likelier cause of any mismatch
            raise CheckpointError(f"{AUDIT_OPTIONS[key]} table {path} changed since {self.out} was trained on it (sha256 {recorded[:12]}, now {digest[:12]}): "
                                  "restore it to resume, or start again with --overwrite")
        table = read_audit(path, self.cache)
        self.records[key] = {"path": str(path), "sha256": digest}
        return table

    def p_match(self, key: str, video_ids: list[str]) -> dict[str, float]:
        """Each of ``video_ids``' p_match from the option's table (``read_audit`` has checked
        that each is a probability)."""
        p_match = self.table(key).p_match()
        return {v: p_match[v] for v in video_ids}

    def exclude(self, ok_ids: list[str]) -> list[str]:
        """The videos whose p_match reaches --min-correspondence; the others leave training and
        validation alike, before the split, so validation measures the kept corpus."""
        p_match = self.p_match("exclude", ok_ids)
        excluded = sorted(v for v in ok_ids if p_match[v] < self.config.min_correspondence)
        self.records["exclude"]["excluded"] = excluded
        return [v for v in ok_ids if p_match[v] >= self.config.min_correspondence]

    def report_exclusion(self, videos: int, training: int) -> None:
        """Refuse a run that exclusion left with fewer than 2 training videos, else say how many
        videos it left out."""
        excluded, threshold = len(self.records["exclude"]["excluded"]), self.config.min_correspondence
        if training < 2:
            raise InputError(f"--exclude left {training} training video(s): {excluded} of {videos} have p_match below --min-correspondence "
                             f"{threshold:g}; need at least 2 (lower --min-correspondence)")
        self.log(f"excluded {excluded} of {videos} videos: p_match below --min-correspondence {threshold:g} in {self.records['exclude']['path']}")

    def video_weights(self, table: WindowTable, train_videos: list[int]) -> torch.Tensor:
        """(V,) weight of each video of the window table: its p_match over the training videos'
        mean, so the weights average 1 and the loss scale (and the learning rate that suits it)
        stays that of an unweighted run. Validation videos keep 1 (validation is unweighted)."""
        ids = [table.video_ids[k] for k in train_videos]
        p_match = self.p_match("weight_by", ids)
        mean = sum(p_match.values()) / len(ids)
        if mean == 0:
            raise InputError(f"--weight-by table {self.records['weight_by']['path']} gives every training video p_match 0: nothing would be learned")
        weights = torch.ones(len(table.video_ids))
        for k, vid in zip(train_videos, ids):
            weights[k] = p_match[vid] / mean
        self.log(f"weighting each training video's positive pair by its p_match in {self.records['weight_by']['path']} (mean {mean:.3f})")
        return weights
