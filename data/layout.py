"""Where a token cache's files lie, and what a writer finds there on opening it.

Layout of a cache directory::

    cache.json                      the extraction config (a different config is refused)
    shards/shard-NNNNN.h5           audio/tokens (sum T_a, D_a), visual/tokens (sum F, 1+P, D_v),
                                    visual/times (sum F,), concatenated over the shard's videos
    manifest/part-NNNNN.parquet     one row per input video of that shard (ok or failed)

A shard and its manifest part are one commit (``avfeat.data.shards``): the HDF5 file is
written as ``*.tmp``, closed, verified and renamed, then the manifest part is written the same
way. A shard without a manifest part does not exist (:func:`remove_uncommitted` deletes it
when a writer opens the cache). The manifest is read by ``avfeat.data.manifest``, the tokens
by ``avfeat.data.cache.Cache``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avfeat.core.errors import CacheError
from avfeat.core.io import temp_pid
from avfeat.core.lock import pid_alive
from avfeat.core.values import one_line

CONFIG_FILE = "cache.json"
SHARD_DIR = "shards"
MANIFEST_DIR = "manifest"
CACHE_OWN = (CONFIG_FILE, SHARD_DIR, MANIFEST_DIR)  # what --overwrite may remove
CONFIG_MARKS = ("audio_model", "visual_model", "fps")  # keys every cache.json holds: how a folder is known for a cache

_SHARD_RE = re.compile(r"shard-(\d{5,})\.h5$")
_PART_RE = re.compile(r"part-(\d{5,})\.parquet$")


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.h5"


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def _indices(folder: Path, pattern: re.Pattern) -> dict[int, Path]:
    found = {}
    if folder.is_dir():
        for entry in folder.iterdir():
            match = pattern.fullmatch(entry.name)
            if match:
                found[int(match.group(1))] = entry
    return found


@dataclass
class CacheLayout:
    """Paths of a cache directory."""

    root: Path

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def shard_dir(self) -> Path:
        return self.root / SHARD_DIR

    @property
    def manifest_dir(self) -> Path:
        return self.root / MANIFEST_DIR

    def shards(self) -> dict[int, Path]:
        return _indices(self.shard_dir, _SHARD_RE)

    def parts(self) -> dict[int, Path]:
        return _indices(self.manifest_dir, _PART_RE)


def read_config(layout: "CacheLayout") -> dict[str, Any]:
    """cache.json as a dict; a damaged one is one :class:`CacheError` line naming the file."""
    try:
        config = json.loads(layout.config_path.read_text())
    except (OSError, ValueError) as error:
        raise CacheError(f"cannot read {layout.config_path} ({one_line(error)}); restore it from a copy, or re-extract into a new --out") from None
    if not isinstance(config, dict):
        raise CacheError(f"{layout.config_path} is not an avfeat cache config (not a JSON object); restore it from a copy")
    return config


def remove_uncommitted(layout: CacheLayout) -> None:
    """Remove stray temp files and shards without a manifest part (an interrupted commit), so
    the cache afterwards holds exactly the committed shards. The caller holds the cache's
    writer lock."""
    # Only temps of this process or of dead ones go (a temp name carries its writer's pid, see
    # temp_path; one without a pid is from an older avfeat). Under the writer lock no other
    # writer should be running, but a temp that a live process still has open may be one of a
    # writer the lock could not stop (an older avfeat, or a filesystem without working locks):
    # deleting it would lose that writer's shard under it, or turn a refused run into damage.
    for folder in (layout.shard_dir, layout.manifest_dir, layout.root):
        for stray in folder.glob("*.tmp"):
            pid = temp_pid(stray)
            if pid is None or pid == os.getpid() or not pid_alive(pid):
                stray.unlink(missing_ok=True)
    parts = layout.parts()
    for index, shard in layout.shards().items():
        if index not in parts:
            shard.unlink()
