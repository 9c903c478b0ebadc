"""Locate's calibrated thresholds (``Searcher.locate_threshold``) kept in the index folder, so a
new process (a CLI run, each `avfeat serve` worker) reuses them rather than locating clips of
several videos again.

``locate-calibration.json`` holds the thresholds with a fingerprint of the index's meta.json
(which every write and ``--update`` replaces, with new file names): thresholds of another
version of the index are never read. It is written atomically; a folder that cannot be written
(read-only) keeps them in memory only.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from avfeat.core.io import write_atomic

CALIBRATION_FILE = "locate-calibration.json"


def fingerprint(meta: dict) -> str:
    """What names this version of an index: a hash of its meta.json's values."""
    return hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()


def _key(sides: tuple, length: float) -> str:
    return f"{'+'.join(sides)}@{length:g}"


def stored_thresholds(folder: Path, meta: dict) -> dict[tuple, float]:
    """The thresholds stored for this version of the index (``(sides, length)`` keys); none when
    the file is absent, unreadable or of another version."""
    try:
        values = json.loads((Path(folder) / CALIBRATION_FILE).read_text())
        if values.get("index") != fingerprint(meta):
            return {}
        found = {}
        for key, value in values["thresholds"].items():
            sides, _, length = key.partition("@")
            found[(tuple(sides.split("+")), float(length))] = float(value)
        return found
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}  # calibrated again: the file only saves time


def store_thresholds(folder: Path, meta: dict, thresholds: dict[tuple, float]) -> None:
    """Keep ``thresholds`` (with those another process stored meanwhile) beside the index."""
    merged = {**stored_thresholds(folder, meta), **thresholds}
    text = json.dumps({"index": fingerprint(meta), "thresholds": {_key(*key): value for key, value in sorted(merged.items())}}, indent=1)
    try:
        write_atomic(Path(folder) / CALIBRATION_FILE, text + "\n")
    except OSError:
        pass  # a read-only index: the thresholds stay in this process
