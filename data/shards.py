"""Writing a token cache: opening it (refusing another config), one shard and its manifest
part at a time (:class:`ShardWriter`), and forgetting shards whose bytes were damaged.

Tokens are stored as float16 (the default) or, with ``extract --storage int8``, as int8 with one
float32 scale per token vector beside them (``audio/scale`` (sum T_a,), ``visual/scale``
(sum F, 1+P)): symmetric per-token quantization, dequantized by every read of
``avfeat.data.cache.Cache``, so readers get float tokens either way. The scales live in the
shard with the tokens, never in code; the codecs (``data/codecs.py``) are the one place that
writes and reads token bytes.

A shard and its manifest part are one commit: the HDF5 file is written as ``*.tmp``, closed,
verified and renamed, then the manifest part is written the same way (see
``avfeat.data.layout``).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avfeat import __version__
from avfeat.core.errors import CacheError, disk_full
from avfeat.core.io import fsync_dir, replace_durably, temp_path, write_atomic
from avfeat.core.outputs import ID_KEY, holds_output, stamped
from avfeat.data.codecs import storage_codec
from avfeat.data.configs import CONFIG_DEFAULTS, CONFIG_VERSION, CacheConfig
from avfeat.data.layout import CACHE_OWN, CacheLayout, part_name, read_config, remove_uncommitted, shard_name
from avfeat.data.manifest import part_table
from avfeat.data.records import Status, VideoRecord

_CHUNK_BYTES = 512 * 1024  # HDF5 chunk target: a few windows per read, well under the 1 MiB chunk cache
_METADATA_ROOM = 256 * 1024  # a shard's HDF5 metadata (headers, attributes) is a few KiB


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def new_record(video_id: str, path: str, size: int = 0, mtime: float = 0.0, **fields) -> VideoRecord:
    """The record of an input before it is decoded (``fields``: its segment, metadata, or the
    status of an input that cannot be read); writers fill in what they learn. Built in one call:
    a million inputs of a resume, each record copied again, would cost seconds."""
    return VideoRecord(video_id=video_id, path=path, size=size, mtime=mtime, **fields)


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
        # A config without the later keys (a cache of before --storage) is float16, unpooled.
        stored = {**CONFIG_DEFAULTS, **read_config(layout)}
        stored.pop("avfeat_version", None)
        stored.pop("config_version", None)
        stored.pop(ID_KEY, None)  # which output this is, not how its tokens were made
        if only_given_keys:
            stored = {k: v for k, v in stored.items() if k in config}
        else:
            config = {**CONFIG_DEFAULTS, **config}
        diff = _config_diff(stored, config)
        if diff:
            raise CacheError(
                f"{layout.root} was extracted with a different config ({'; '.join(diff)}); "
                "use a new --out folder or the cache's own settings"
            )
    elif layout.root.exists() and holds_output(layout.root):  # lock files and a lone owner record do not count
        raise CacheError(f"output {layout.root} is a non-empty folder that is not an avfeat cache")
    return layout


def open_for_writing(root: str | Path, config: dict) -> CacheLayout:
    """Create the cache or reopen it for resuming; refuse a different config.

    Stray temp files and shards without a manifest part (an interrupted commit) are removed,
    so the cache afterwards holds exactly the committed shards. The caller holds the cache's
    writer lock (``avfeat.core.lock.writer_lock``), as ``Extractor.run`` does.

    Raises:
        CacheError: ``config`` is not one a reader could open (it lacks what describes the
            tokens), or differs from the existing cache's.
    """
    CacheConfig.from_dict(config, str(root))  # never write a cache.json that no reader takes
    layout = check_config(root, config)
    try:
        layout.root.mkdir(parents=True, exist_ok=True)
        # cache.json first: a folder it is missing from is refused as "not a cache", so a run
        # stopped here (a full disk) must leave nothing else behind.
        if not layout.config_path.exists():
            values = stamped(layout.root, "cache", CACHE_OWN, {**config, "avfeat_version": __version__, "config_version": CONFIG_VERSION})
            write_atomic(layout.config_path, json.dumps(values, indent=2, sort_keys=True) + "\n")
        layout.shard_dir.mkdir(exist_ok=True)
        layout.manifest_dir.mkdir(exist_ok=True)
    except OSError as error:
        if disk_full(error):
            raise
        raise CacheError(f"cannot create cache folder {layout.root}: {error.strerror}") from None
    remove_uncommitted(layout)
    return layout


def compute_dtype(layout: CacheLayout) -> str | None:
    """The dtype the cache's committed tokens were computed in (the first readable shard's
    ``compute_dtype`` attribute); None for an empty cache."""
    import h5py

    parts = layout.parts()
    for index, path in sorted(layout.shards().items()):
        if index in parts:
            try:
                with h5py.File(path, "r") as handle:
                    value = handle.attrs.get("compute_dtype")
            except OSError:
                continue  # a damaged shard is for `info --verify` to name
            return None if value is None else str(value)
    return None


def check_compute_dtype(layout: CacheLayout, dtype: str) -> None:
    """Refuse to add tokens computed in another dtype: bfloat16 and float32 tokens of one model
    differ by far more than float16 storage rounding, so a mixed cache compares unlike things."""
    stored = compute_dtype(layout)
    if stored is not None and stored != dtype:
        raise CacheError(f"{layout.root} holds tokens computed in {stored}, this run would compute {dtype}; pass --dtype {stored} or use a new --out")


class ShardWriter:
    """Appends videos' tokens to one shard and commits it with its manifest part.

    A context manager: leaving the ``with`` block commits the shard, an exception removes it::

        with ShardWriter(layout, index, audio_dim=..., visual_tokens_per_frame=..., visual_dim=..., attrs=...) as writer:
            writer.add(record, audio, visual, frame_times)

    Tokens are appended to the temp file as they arrive, so a shard of long videos never has
    to sit in memory.
    """

    def __init__(self, layout: CacheLayout, index: int, audio_dim: int, visual_tokens_per_frame: int, visual_dim: int,
                 attrs: dict[str, Any], dtype: str = "float16", storage: str = "float16"):
        import h5py

        self.codec = storage_codec(storage)
        self.layout, self.index, self.attrs, self.dtype, self.storage = layout, index, attrs, dtype, storage
        if "compute_dtype" in attrs:
            check_compute_dtype(layout, attrs["compute_dtype"])
        self.records: list[VideoRecord] = []
        self.final_path = layout.shard_dir / shard_name(index)
        self.tmp_path = temp_path(self.final_path)
        self._file = h5py.File(self.tmp_path, "w")
        self._reserve_fd: int | None = os.open(self.tmp_path, os.O_WRONLY)
        self._reserved = 0
        # Each modality's parts (the codec's datasets), chunked by the tokens' rows so a window
        # reads every part alike.
        self._parts = {modality: self._part_datasets(modality, row) for modality, row in
                       (("audio", (audio_dim,)), ("visual", (visual_tokens_per_frame, visual_dim)))}
        self._times = self._file.create_dataset("visual/times", shape=(0,), maxshape=(None,), dtype="float64", chunks=(4096,))

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is not None:
            self.abort()
            return
        try:
            self.commit()
        except BaseException:
            self.abort()  # a commit that fails (a full disk) leaves no temp and no part behind
            raise

    def _part_datasets(self, modality: str, token_row: tuple[int, ...]) -> dict:
        datasets, rows = {}, None
        for part in self.codec.parts:  # "tokens" first: its row size sets the chunk rows
            shape, dtype = part.row_shape(token_row), part.dtype or self.dtype
            rows = rows or max(1, _CHUNK_BYTES // (int(np.prod(shape)) * np.dtype(dtype).itemsize))
            datasets[part.name] = self._file.create_dataset(
                f"{modality}/{part.name}", shape=(0, *shape), maxshape=(None, *shape), dtype=dtype, chunks=(rows, *shape))
        return datasets

    def _datasets(self) -> list:
        return [] if self._parts is None else [*self._parts["audio"].values(), *self._parts["visual"].values(), self._times]

    def _reserve(self, dataset=None, rows: int = 0) -> None:
        """Allocate the disk blocks of the next write (``rows`` more rows of ``dataset``) before
        HDF5 makes it.

        HDF5 cannot recover from a full disk: its next close crashes the process (exit 139).
        So the shard's blocks are reserved ahead (``posix_fallocate``, past HDF5's own end of
        file), and a full disk surfaces here as a plain ``OSError`` (ENOSPC) that aborts the
        shard cleanly. ``commit`` trims the file back to HDF5's end.
        """
        if self._reserve_fd is None:
            return
        # Every chunk the datasets will span is stored whole, plus room for metadata.
        target = _METADATA_ROOM
        for each in self._datasets():
            chunk_rows = each.chunks[0]
            count = -(-(each.shape[0] + (rows if each is dataset else 0)) // chunk_rows)
            target += count * (chunk_rows * int(np.prod(each.shape[1:])) * each.dtype.itemsize + 1024)
        target = max(target, self._file.id.get_filesize() + 64 * 1024)
        if target <= self._reserved:
            return
        try:
            os.posix_fallocate(self._reserve_fd, 0, target)
        except OSError as error:
            if error.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):
                os.close(self._reserve_fd)  # a file system that cannot reserve: write unguarded
                self._reserve_fd = None
                return
            raise
        self._reserved = target

    def _append(self, dataset, values: np.ndarray) -> int:
        offset = dataset.shape[0]
        if len(values):
            self._reserve(dataset, len(values))
            dataset.resize(offset + len(values), axis=0)
            dataset[offset:] = values
        return offset

    def add(self, record: VideoRecord, audio: np.ndarray, visual: np.ndarray, frame_times: np.ndarray) -> None:
        """Record an ``ok`` video: its record is completed with offsets into this shard.

        Tokens that are not finite (a backbone that overflowed, in float16 storage too) are
        never written: the video is recorded as ``non_finite`` instead, and the job goes on.
        """
        stored = self.dtype if self.codec.floats else "float32"  # int8 is quantized from the float32 tokens
        with np.errstate(over="ignore"):  # an overflow is what the check below reports
            audio = audio.astype(stored, copy=False)
            visual = visual.astype(stored, copy=False)
        if not (np.isfinite(audio).all() and np.isfinite(visual).all()):
            where = "audio" if not np.isfinite(audio).all() else "visual"
            self.add_failure(record, Status.NON_FINITE, f"the {where} backbone gave non-finite tokens (NaN or inf, in {stored})")
            return
        offsets = {}
        for modality, tokens in (("audio", audio), ("visual", visual)):
            for name, values in self.codec.encode(tokens, self.dtype).items():
                offsets[modality] = self._append(self._parts[modality][name], values)
        audio_offset, visual_offset = offsets["audio"], offsets["visual"]
        self._append(self._times, np.asarray(frame_times, dtype=np.float64))
        self.records.append(record.with_(
            status=Status.OK, error="", shard=self.index, audio_offset=audio_offset, audio_length=len(audio),
            visual_offset=visual_offset, visual_length=len(visual),
        ))

    def add_failure(self, record: VideoRecord, status: str, message: str) -> None:
        self.records.append(record.with_(status=status, error=message, shard=self.index))

    def commit(self) -> None:
        """Close, verify and rename the shard, then write its manifest part the same way."""
        import h5py
        import pyarrow as pa
        import pyarrow.parquet as pq

        for key, value in self.attrs.items():
            self._file.attrs[key] = value if not isinstance(value, (dict, list)) else json.dumps(value)
        self._file.attrs["avfeat_version"] = __version__
        self._file.attrs["storage"] = self.storage  # also in attrs (from cache.json), and set here for writers given none
        self._reserve()
        self._parts = self._times = None
        self._file.flush()
        end = self._file.id.get_filesize()  # HDF5's end of file; beyond it lie reserved blocks
        self._file.close()
        self._release_reservation()
        os.truncate(self.tmp_path, end)
        audio_rows = sum(r.audio_length for r in self.records if r.ok)
        visual_rows = sum(r.visual_length for r in self.records if r.ok)
        with h5py.File(self.tmp_path, "r") as check:
            for part in self.codec.parts:
                if check[f"audio/{part.name}"].shape[0] != audio_rows or check[f"visual/{part.name}"].shape[0] != visual_rows:
                    raise CacheError(f"shard {self.tmp_path} failed verification ({part.name} row counts differ from the manifest)")
            if visual_rows != check["visual/times"].shape[0]:
                raise CacheError(f"shard {self.tmp_path} failed verification (frame times)")
        checksum = {"shard_sha256": file_sha256(self.tmp_path), "shard_bytes": self.tmp_path.stat().st_size}
        replace_durably(self.tmp_path, self.final_path)

        rows = [dict(r.to_row(), **checksum) for r in self.records]
        # Parquet's own page checksums guard the part; the shard's hash guards the shard.
        buffer = pa.BufferOutputStream()
        pq.write_table(part_table(rows), buffer, write_page_checksum=True)
        try:
            write_atomic(self.layout.manifest_dir / part_name(self.index), buffer.getvalue().to_pybytes())
        except BaseException:
            self.final_path.unlink(missing_ok=True)  # a shard without its part is not committed
            raise

    def _release_reservation(self) -> None:
        if self._reserve_fd is not None:
            os.close(self._reserve_fd)
            self._reserve_fd = None

    def abort(self) -> None:
        # Drop the dataset handles first: HDF5 must not flush them later into a file that is gone.
        self._parts = self._times = None
        if self._file.id.valid:
            self._file.close()
        self._release_reservation()
        self.tmp_path.unlink(missing_ok=True)


@dataclass
class ShardDamage:
    """A shard whose bytes are not the ones committed, and the videos it holds."""

    index: int
    path: Path
    part: Path
    problem: str
    video_ids: list[str]

    def line(self) -> str:
        return damage_line(self.path.name, self.problem, self.video_ids)


def damage_line(shard: str, problem: str, video_ids: list[str]) -> str:
    """The line that names a damaged shard (``ShardDamage.line``; `avfeat info` prints it)."""
    shown = ", ".join(video_ids[:5]) + (f" and {len(video_ids) - 5} more" if len(video_ids) > 5 else "")
    return f"damaged  {shard}: {problem}; videos {shown}"


def remove_damaged(layout: CacheLayout, damaged: list[ShardDamage]) -> None:
    """Forget damaged shards: their manifest part first (so their videos are no longer recorded
    and a resumed extract does them again), then the shard file. Only avfeat's own files go."""
    for damage in damaged:
        damage.part.unlink(missing_ok=True)
        fsync_dir(damage.part.parent)
        damage.path.unlink(missing_ok=True)
