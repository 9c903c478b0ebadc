"""The token cache: HDF5 shards of ragged token arrays plus a Parquet manifest.

Layout of a cache directory::

    cache.json                      the extraction config (a different config is refused)
    shards/shard-NNNNN.h5           audio/tokens (sum T_a, D_a), visual/tokens (sum F, 1+P, D_v),
                                    visual/times (sum F,), concatenated over the shard's videos
    manifest/part-NNNNN.parquet     one row per input video of that shard (ok or failed)

A shard and its manifest part are one commit: the HDF5 file is written as ``*.tmp``, closed,
verified and renamed, then the manifest part is written the same way. A shard without a
manifest part does not exist (it is deleted when a writer opens the cache). When the same
video is recorded twice (a failure retried later), the record in the highest part wins.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avfeat import __version__
from avfeat.errors import CacheError

CONFIG_FILE = "cache.json"
SHARD_DIR = "shards"
MANIFEST_DIR = "manifest"
OK = "ok"

_SHARD_RE = re.compile(r"shard-(\d{5,})\.h5$")
_PART_RE = re.compile(r"part-(\d{5,})\.parquet$")
_CHUNK_BYTES = 512 * 1024  # HDF5 chunk target: a few windows per read, well under the 1 MiB chunk cache


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.h5"


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def manifest_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("video_id", pa.string()),
            ("path", pa.string()),
            ("size", pa.int64()),
            ("mtime", pa.float64()),
            ("status", pa.string()),
            ("error", pa.string()),
            ("duration", pa.float64()),
            ("shard", pa.int32()),
            ("audio_offset", pa.int64()),
            ("audio_length", pa.int64()),
            ("audio_start", pa.float64()),
            ("audio_rate", pa.float64()),
            ("visual_offset", pa.int64()),
            ("visual_length", pa.int64()),
            ("fps", pa.float64()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("source_sample_rate", pa.int32()),
        ]
    )


def empty_row(video_id: str, path: str, size: int, mtime: float) -> dict[str, Any]:
    """A manifest row with every field present; writers fill in what they learn."""
    return {
        "video_id": video_id,
        "path": path,
        "size": size,
        "mtime": mtime,
        "status": OK,
        "error": "",
        "duration": 0.0,
        "shard": -1,
        "audio_offset": 0,
        "audio_length": 0,
        "audio_start": 0.0,
        "audio_rate": 0.0,
        "visual_offset": 0,
        "visual_length": 0,
        "fps": 0.0,
        "width": 0,
        "height": 0,
        "source_sample_rate": 0,
    }


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_durably(tmp: Path, final: Path) -> None:
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, final)
    _fsync_dir(final.parent)


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


def read_manifest(root: str | Path):
    """All committed manifest rows as a pyarrow Table, latest record per video."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    layout = CacheLayout(Path(root))
    parts = layout.parts()
    if not parts:
        return manifest_schema().empty_table()
    table = pa.concat_tables([pq.read_table(parts[i], schema=manifest_schema()) for i in sorted(parts)])
    # A retried video appears in several parts; keep its last record.
    ids = table.column("video_id").to_pylist()
    last = {video_id: row for row, video_id in enumerate(ids)}
    if len(last) == len(ids):
        return table
    return table.take(sorted(last.values()))


def _config_diff(stored: dict, wanted: dict) -> list[str]:
    keys = sorted(set(stored) | set(wanted))
    return [f"{k}: cache has {stored.get(k)!r}, asked for {wanted.get(k)!r}" for k in keys if stored.get(k) != wanted.get(k)]


def check_config(root: str | Path, config: dict, only_given_keys: bool = False) -> CacheLayout:
    """Refuse to write ``config`` into an existing cache made with another one.

    With ``only_given_keys`` just the keys in ``config`` are compared, so the CLI can check the
    user's settings before it spends time loading models.
    """
    layout = CacheLayout(Path(root))
    if layout.root.exists() and not layout.root.is_dir():
        raise CacheError(f"output {layout.root} exists and is not a directory")
    if layout.config_path.exists():
        stored = json.loads(layout.config_path.read_text())
        stored.pop("avfeat_version", None)
        if only_given_keys:
            stored = {k: v for k, v in stored.items() if k in config}
        diff = _config_diff(stored, config)
        if diff:
            raise CacheError(
                f"{layout.root} was extracted with a different config ({'; '.join(diff)}); "
                "use a new --out folder or the cache's own settings"
            )
    elif layout.root.exists() and any(layout.root.iterdir()):
        raise CacheError(f"output {layout.root} is a non-empty folder that is not an avfeat cache")
    return layout


def open_for_writing(root: str | Path, config: dict) -> CacheLayout:
    """Create the cache or reopen it for resuming; refuse a different config.

    Stray temp files and shards without a manifest part (an interrupted commit) are removed,
    so the cache afterwards holds exactly the committed shards.
    """
    layout = check_config(root, config)
    try:
        layout.shard_dir.mkdir(parents=True, exist_ok=True)
        layout.manifest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CacheError(f"cannot create cache folder {layout.root}: {error.strerror}") from None
    if not layout.config_path.exists():
        tmp = layout.config_path.with_name(CONFIG_FILE + ".tmp")
        tmp.write_text(json.dumps({**config, "avfeat_version": __version__}, indent=2, sort_keys=True) + "\n")
        _replace_durably(tmp, layout.config_path)
    for folder in (layout.shard_dir, layout.manifest_dir, layout.root):
        for stray in folder.glob("*.tmp"):
            stray.unlink()
    parts = layout.parts()
    for index, shard in layout.shards().items():
        if index not in parts:
            shard.unlink()
    return layout


@dataclass
class ShardWriter:
    """Appends videos' tokens to one shard and commits it with its manifest part.

    Tokens are appended to the ``.tmp`` file as they arrive, so a shard of long videos never
    has to sit in memory.
    """

    layout: CacheLayout
    index: int
    audio_dim: int
    visual_tokens_per_frame: int
    visual_dim: int
    attrs: dict[str, Any]
    dtype: str = "float16"
    rows: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self):
        import h5py

        self.final_path = self.layout.shard_dir / shard_name(self.index)
        self.tmp_path = self.final_path.with_name(self.final_path.name + ".tmp")
        self._file = h5py.File(self.tmp_path, "w")
        self._audio = self._dataset("audio/tokens", (self.audio_dim,))
        self._visual = self._dataset("visual/tokens", (self.visual_tokens_per_frame, self.visual_dim))
        self._times = self._file.create_dataset("visual/times", shape=(0,), maxshape=(None,), dtype="float64", chunks=(4096,))

    def _dataset(self, name: str, row_shape: tuple[int, ...]):
        row_bytes = int(np.prod(row_shape)) * np.dtype(self.dtype).itemsize
        rows = max(1, _CHUNK_BYTES // row_bytes)
        return self._file.create_dataset(
            name, shape=(0, *row_shape), maxshape=(None, *row_shape), dtype=self.dtype, chunks=(rows, *row_shape)
        )

    @staticmethod
    def _append(dataset, values: np.ndarray) -> int:
        offset = dataset.shape[0]
        if len(values):
            dataset.resize(offset + len(values), axis=0)
            dataset[offset:] = values
        return offset

    def add(self, row: dict[str, Any], audio: np.ndarray, visual: np.ndarray, frame_times: np.ndarray) -> None:
        """Record an ``ok`` video: its row is completed with offsets into this shard."""
        row = dict(row, status=OK, error="", shard=self.index)
        row["audio_offset"] = self._append(self._audio, audio.astype(self.dtype, copy=False))
        row["audio_length"] = len(audio)
        row["visual_offset"] = self._append(self._visual, visual.astype(self.dtype, copy=False))
        self._append(self._times, np.asarray(frame_times, dtype=np.float64))
        row["visual_length"] = len(visual)
        self.rows.append(row)

    def add_failure(self, row: dict[str, Any], status: str, message: str) -> None:
        self.rows.append(dict(row, status=status, error=message, shard=self.index))

    def commit(self) -> None:
        """Close, verify and rename the shard, then write its manifest part the same way."""
        import h5py
        import pyarrow as pa
        import pyarrow.parquet as pq

        for key, value in self.attrs.items():
            self._file.attrs[key] = value if not isinstance(value, (dict, list)) else json.dumps(value)
        self._file.attrs["avfeat_version"] = __version__
        self._file.close()
        audio_rows = sum(r["audio_length"] for r in self.rows if r["status"] == OK)
        visual_rows = sum(r["visual_length"] for r in self.rows if r["status"] == OK)
        with h5py.File(self.tmp_path, "r") as check:
            if check["audio/tokens"].shape[0] != audio_rows or check["visual/tokens"].shape[0] != visual_rows:
                raise CacheError(f"shard {self.tmp_path} failed verification (row counts differ from the manifest)")
            if visual_rows != check["visual/times"].shape[0]:
                raise CacheError(f"shard {self.tmp_path} failed verification (frame times)")
        _replace_durably(self.tmp_path, self.final_path)

        part = self.layout.manifest_dir / part_name(self.index)
        tmp = part.with_name(part.name + ".tmp")
        pq.write_table(pa.Table.from_pylist(self.rows, schema=manifest_schema()), tmp)
        _replace_durably(tmp, part)

    def abort(self) -> None:
        if self._file.id.valid:
            self._file.close()
        self.tmp_path.unlink(missing_ok=True)


class Cache:
    """Read access to a token cache.

    HDF5 files are opened lazily per process (a handle is never shared across fork), and all
    reads are contiguous slices.
    """

    def __init__(self, path: str | Path):
        self.layout = CacheLayout(Path(path))
        if not self.layout.config_path.is_file():
            raise CacheError(f"{path} is not an avfeat cache (no {CONFIG_FILE}); run `avfeat extract` first")
        self.config = json.loads(self.layout.config_path.read_text())
        self.manifest = read_manifest(self.layout.root)
        self._rows = {row["video_id"]: row for row in self.manifest.to_pylist()}
        self._handles: dict[int, Any] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, video_id: str) -> bool:
        return video_id in self._rows

    def videos(self, status: str | None = None) -> list[dict[str, Any]]:
        """Manifest rows (dicts with ``video_id``, ``path``, ``status``, ...), optionally by status."""
        return [dict(r) for r in self._rows.values() if status is None or r["status"] == status]

    def row(self, video_id: str) -> dict[str, Any]:
        try:
            return self._rows[video_id]
        except KeyError:
            raise CacheError(f"video id {video_id!r} is not in the cache {self.layout.root}") from None

    def status_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self._rows.values():
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))

    def _file(self, shard: int):
        import h5py

        if self._pid != os.getpid():  # forked: the parent's handles must not be used here
            self._handles, self._pid = {}, os.getpid()
        handle = self._handles.get(shard)
        if handle is None:
            path = self.layout.shard_dir / shard_name(shard)
            try:
                handle = self._handles[shard] = h5py.File(path, "r")
            except OSError as error:
                raise CacheError(f"cannot read shard {path}: {error}") from None
        return handle

    def _ok_row(self, video_id: str) -> dict[str, Any]:
        row = self.row(video_id)
        if row["status"] != OK:
            raise CacheError(f"video {video_id!r} has no tokens (status {row['status']}: {row['error']})")
        return row

    def audio_times(self, video_id: str) -> np.ndarray:
        """Start time in seconds of each audio token."""
        row = self._ok_row(video_id)
        return row["audio_start"] + np.arange(row["audio_length"]) / row["audio_rate"]

    def frame_times(self, video_id: str) -> np.ndarray:
        row = self._ok_row(video_id)
        begin = row["visual_offset"]
        return self._file(row["shard"])["visual/times"][begin : begin + row["visual_length"]]

    def audio_tokens(self, video_id: str, start: float | None = None, end: float | None = None) -> np.ndarray:
        """(T, D_a) tokens whose start time lies in [start, end) (the whole video by default)."""
        row = self._ok_row(video_id)
        first, last = 0, row["audio_length"]
        if start is not None:
            first = int(np.clip(np.ceil((start - row["audio_start"]) * row["audio_rate"] - 1e-6), 0, last))
        if end is not None:
            last = int(np.clip(np.ceil((end - row["audio_start"]) * row["audio_rate"] - 1e-6), first, last))
        begin = row["audio_offset"]
        return self._file(row["shard"])["audio/tokens"][begin + first : begin + last]

    def visual_tokens(self, video_id: str, start: float | None = None, end: float | None = None) -> np.ndarray:
        """(F, 1 + P, D_v) tokens (CLS first) of the frames whose time lies in [start, end)."""
        row = self._ok_row(video_id)
        first, last = 0, row["visual_length"]
        if start is not None or end is not None:
            times = self.frame_times(video_id)
            if start is not None:
                first = int(np.searchsorted(times, start, side="left"))
            if end is not None:
                last = max(first, int(np.searchsorted(times, end, side="left")))
        begin = row["visual_offset"]
        return self._file(row["shard"])["visual/tokens"][begin + first : begin + last]

    def fingerprint(self) -> str:
        """A short hash of the config and of what the manifest records, to tie heads and
        indexes to the exact cache contents they were built from."""
        digest = hashlib.sha1(json.dumps({k: v for k, v in self.config.items() if k != "avfeat_version"}, sort_keys=True).encode())
        for vid in sorted(self._rows):
            row = self._rows[vid]
            digest.update(f"{vid}|{row['status']}|{row['shard']}|{row['audio_length']}|{row['visual_length']}\n".encode())
        return digest.hexdigest()[:16]

    def shard_attrs(self) -> dict[str, Any]:
        """Attributes of the first committed shard (model specs, dims, rates), or {}."""
        shards = self.layout.shards()
        if not shards:
            return {}
        return dict(self._file(min(shards)).attrs)

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles = {}

    def __enter__(self) -> "Cache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
