"""The token cache: HDF5 shards of ragged token arrays plus a Parquet manifest.

Layout of a cache directory::

    cache.json                      the extraction config (a different config is refused)
    shards/shard-NNNNN.h5           audio/tokens (sum T_a, D_a), visual/tokens (sum F, 1+P, D_v),
                                    visual/times (sum F,), concatenated over the shard's videos
    manifest/part-NNNNN.parquet     one row per input video of that shard (ok or failed)

Tokens are stored as float16 (the default) or, with ``extract --storage int8``, as int8 with one
float32 scale per token vector beside them (``audio/scale`` (sum T_a,), ``visual/scale``
(sum F, 1+P)): symmetric per-token quantization, dequantized by every read here, so readers get
float tokens either way. The scales live in the shard with the tokens, never in code; the
codecs (``data/codecs.py``) are the one place that writes and reads token bytes.

A shard and its manifest part are one commit: the HDF5 file is written as ``*.tmp``, closed,
verified and renamed, then the manifest part is written the same way. A shard without a
manifest part does not exist (it is deleted when a writer opens the cache). When the same
video is recorded twice (a failure retried later), the record in the highest part wins.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avfeat import __version__
from avfeat.core.io import fsync_dir, replace_durably, temp_path, temp_pid, write_atomic
from avfeat.core.lock import has_entries, pid_alive
from avfeat.core.values import did_you_mean, one_line
from avfeat.data.records import Status, VideoRecord
from avfeat.data.codecs import codec_of, storage_codec
from avfeat.data.configs import CONFIG_VERSION, CacheConfig
from avfeat.core.errors import CacheError, disk_full

CONFIG_FILE = "cache.json"
SHARD_DIR = "shards"
MANIFEST_DIR = "manifest"
CACHE_OWN = (CONFIG_FILE, SHARD_DIR, MANIFEST_DIR)  # what --overwrite may remove
CONFIG_MARKS = ("audio_model", "visual_model", "fps")  # keys every cache.json holds: how a folder is known for a cache

_SHARD_RE = re.compile(r"shard-(\d{5,})\.h5$")
_PART_RE = re.compile(r"part-(\d{5,})\.parquet$")
_CHUNK_BYTES = 512 * 1024  # HDF5 chunk target: a few windows per read, well under the 1 MiB chunk cache
_METADATA_ROOM = 256 * 1024  # a shard's HDF5 metadata (headers, attributes) is a few KiB


# cache.json keys added after caches already existed, and what a cache without them holds.
CONFIG_DEFAULTS = {"storage": "float16", "pool_patches": 1, "decode_mode": "exact"}
DECODE_MODES = ("exact", "keyframes")  # which frame serves each 1/fps step (extract/media.py): the CLI's and the decoder's list
POOL_FACTORS = (1, 2)  # DINOv2 patches averaged in blocks of this side (1: none): the CLI's and the encoder's list


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
            ("audio_level", pa.float64()),  # dBFS, RMS of the decoded sound
            ("segment_start", pa.float64()),  # an input table's start and end (null: the whole file)
            ("segment_end", pa.float64()),
            ("shard_sha256", pa.string()),  # of the whole shard file, checked by `avfeat info --verify`
            ("shard_bytes", pa.int64()),  # its size, checked whenever a reader opens it
        ]
    )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def new_record(video_id: str, path: str, size: int, mtime: float) -> VideoRecord:
    """The record of an input before it is decoded; writers fill in what they learn."""
    return VideoRecord(video_id=video_id, path=path, size=size, mtime=mtime)


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


def _conform(table):
    """A manifest part in the current schema (columns a part from an older avfeat lacks are
    null), followed by its metadata columns as they were written."""
    import pyarrow as pa

    schema = manifest_schema()
    for field in schema:
        if field.name not in table.column_names:
            table = table.append_column(field.name, pa.nulls(table.num_rows, field.type))
    metadata = [table.schema.field(name) for name in table.column_names if name not in schema.names]
    return table.select(schema.names + [f.name for f in metadata]).cast(pa.schema([*schema, *metadata]))


def part_table(rows: list[dict[str, Any]]):
    """A manifest part: the records' fields in the manifest schema, then their metadata columns
    (types as the input table gave them; a column some rows lack is null there)."""
    import pyarrow as pa

    table = pa.Table.from_pylist(rows, schema=manifest_schema())
    names = dict.fromkeys(key for row in rows for key in row if key not in table.column_names)
    for name in names:
        table = table.append_column(name, pa.array([row.get(name) for row in rows]))
    return table


def read_manifest(root: str | Path):
    """All committed manifest rows as a pyarrow Table, latest record per video."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    layout = CacheLayout(Path(root))
    parts = layout.parts()
    if not parts:
        return manifest_schema().empty_table()
    tables = []
    for index in sorted(parts):
        try:
            tables.append(_conform(pq.read_table(parts[index], page_checksum_verification=True)))
        except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
            raise CacheError(
                f"manifest part {parts[index]} is damaged ({one_line(error)}); restore it, or remove it and "
                f"{layout.shard_dir / shard_name(index)} and run `avfeat extract --resume` to extract those videos again"
            ) from None
    try:  # runs with different input tables add different metadata columns: nulls elsewhere
        table = pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise CacheError(f"the manifest parts of {layout.root} hold one metadata column with two types ({one_line(error)})") from None
    # A retried video appears in several parts; keep its last record, unless that retires it.
    ids, statuses = table.column("video_id").to_pylist(), table.column("status").to_pylist()
    last = {video_id: row for row, video_id in enumerate(ids)}
    keep = sorted(row for row in last.values() if statuses[row] != Status.SUPERSEDED)
    return table if len(keep) == len(ids) else table.take(keep)


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
    elif layout.root.exists() and has_entries(layout.root):  # a writer's lock files do not count
        raise CacheError(f"output {layout.root} is a non-empty folder that is not an avfeat cache")
    return layout


def open_for_writing(root: str | Path, config: dict) -> CacheLayout:
    """Create the cache or reopen it for resuming; refuse a different config.

    Stray temp files and shards without a manifest part (an interrupted commit) are removed,
    so the cache afterwards holds exactly the committed shards. The caller holds the cache's
    writer lock (``avfeat.core.lock.writer_lock``), as ``Extractor.run`` does.
    """
    layout = check_config(root, config)
    try:
        layout.root.mkdir(parents=True, exist_ok=True)
        # cache.json first: a folder it is missing from is refused as "not a cache", so a run
        # stopped here (a full disk) must leave nothing else behind.
        if not layout.config_path.exists():
            write_atomic(layout.config_path, json.dumps({**config, "avfeat_version": __version__, "config_version": CONFIG_VERSION}, indent=2, sort_keys=True) + "\n")
        layout.shard_dir.mkdir(exist_ok=True)
        layout.manifest_dir.mkdir(exist_ok=True)
    except OSError as error:
        if disk_full(error):
            raise
        raise CacheError(f"cannot create cache folder {layout.root}: {error.strerror}") from None
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


class Cache:
    """Read access to a token cache: records, and tokens by time or by index.

    HDF5 files are opened lazily per process (a handle is never shared across fork), and all
    reads are contiguous slices.
    """

    def __init__(self, path: str | Path):
        self.layout = CacheLayout(Path(path))
        if not self.layout.config_path.is_file():
            raise CacheError(f"{path} is not an avfeat cache (no {CONFIG_FILE}); run `avfeat extract` first")
        self._config_json = read_config(self.layout)  # as written: the fingerprint hashes it
        self.config = CacheConfig.from_dict(self._config_json, str(path))
        self.manifest = read_manifest(self.layout.root)
        self._records = {row["video_id"]: VideoRecord.from_row(row) for row in self.manifest.to_pylist()}
        # What each shard was when committed (from its manifest part; None for older caches).
        self._sizes = {r.shard: r.shard_bytes for r in self._records.values()}
        self._handles: dict[int, Any] = {}
        self._pid = os.getpid()

    @property
    def spec(self) -> CacheConfig:
        """The cache's :class:`~avfeat.data.records.BackboneSpec` (its config is one)."""
        return self.config

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, video_id: str) -> bool:
        return video_id in self._records

    def records(self, status: str | None = None) -> list[VideoRecord]:
        """Every video's record in manifest order, optionally only those of one status."""
        return [r for r in self._records.values() if status is None or r.status == status]

    def record(self, video_id: str) -> VideoRecord:
        """The video's record; an unknown id is a :class:`CacheError` naming the closest ids."""
        try:
            return self._records[video_id]
        except KeyError:
            hint = did_you_mean(video_id, self._records, "`avfeat info CACHE --videos` lists the ids")
            raise CacheError(f"video id {video_id!r} is not in the cache {self.layout.root}{hint}") from None

    def ok_record(self, video_id: str) -> VideoRecord:
        """The record of a video that has tokens; a failed one is a :class:`CacheError`."""
        record = self.record(video_id)
        if not record.ok:
            raise CacheError(f"video {video_id!r} has no tokens (status {record.status}: {record.error})")
        return record

    def status_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for record in self._records.values():
            counts[record.status] = counts.get(record.status, 0) + 1
        return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))

    def _shard(self, shard: int):
        import h5py

        if self._pid != os.getpid():  # forked: the parent's handles must not be used here
            self._handles, self._pid = {}, os.getpid()
        handle = self._handles.get(shard)
        if handle is None:
            path = self.layout.shard_dir / shard_name(shard)
            expected = self._sizes.get(shard)
            if expected is not None and path.is_file() and path.stat().st_size != expected:
                raise CacheError(f"shard {path} is {path.stat().st_size} bytes, the manifest recorded {expected} (truncated or replaced); "
                                 "`avfeat info CACHE --verify` lists the damage, `avfeat extract INPUT --out CACHE --resume --repair` re-extracts it")
            try:
                handle = self._handles[shard] = h5py.File(path, "r")
            except OSError as error:
                raise CacheError(f"cannot read shard {path}: {error}") from None
        return handle

    def _resolve(self, video: str | VideoRecord) -> VideoRecord:
        return video if isinstance(video, VideoRecord) else self.ok_record(video)

    # ---- reads by index ----------------------------------------------------------------------

    @property
    def token_dtype(self) -> np.dtype:
        """The float dtype reads return (cache.json's storage_dtype: float16 unless set), for
        float16 and int8 storage alike."""
        return np.dtype(self.config.storage_dtype)

    def _tokens(self, shard: int, modality: str, begin: int, stop: int) -> np.ndarray:
        """Rows [begin, stop) of a shard's ``modality`` tokens, decoded by the codec the shard
        was written with (its tokens' dtype says which, not the config)."""
        handle = self._shard(shard)
        codec = codec_of(handle[f"{modality}/tokens"].dtype)
        parts = {part.name: codec.dataset(handle, modality, part.name, handle.filename)[begin:stop] for part in codec.parts}
        return codec.decode(parts, self.token_dtype)

    def read_audio(self, video: str | VideoRecord, first: int = 0, stop: int | None = None) -> np.ndarray:
        """(stop - first, D_a) audio tokens by index within the video (float; int8 storage is dequantized)."""
        record = self._resolve(video)
        stop = record.audio_length if stop is None else stop
        begin = record.audio_offset
        return self._tokens(record.shard, "audio", begin + first, begin + stop)

    def read_frames(self, video: str | VideoRecord, first: int = 0, stop: int | None = None) -> np.ndarray:
        """(stop - first, 1 + P, D_v) visual tokens (CLS first) by frame index within the video
        (float; int8 storage is dequantized)."""
        record = self._resolve(video)
        stop = record.visual_length if stop is None else stop
        begin = record.visual_offset
        return self._tokens(record.shard, "visual", begin + first, begin + stop)

    def read_windows(self, windows, geometry) -> tuple[np.ndarray, np.ndarray]:
        """A batch of windows (``avfeat.align.windows.Window``) → audio (B, T, D_a) and visual
        (B, F, 1 + P, D_v), two contiguous slices per window."""
        audio, visual = [], []
        for window in windows:
            record = self.ok_record(window.video_id)
            audio.append(self.read_audio(record, window.audio, window.audio + geometry.audio_tokens))
            visual.append(self.read_frames(record, window.frame, window.frame + geometry.frames))
        return np.stack(audio), np.stack(visual)

    # ---- reads by time -----------------------------------------------------------------------

    def audio_times(self, video_id: str) -> np.ndarray:
        """Start time in seconds of each audio token."""
        return self.ok_record(video_id).audio_times()

    def frame_times(self, video: str | VideoRecord) -> np.ndarray:
        """Each cached frame's timestamp in seconds."""
        record = self._resolve(video)
        begin = record.visual_offset
        return self._shard(record.shard)["visual/times"][begin : begin + record.visual_length]

    def audio_tokens(self, video_id: str, start: float | None = None, end: float | None = None) -> np.ndarray:
        """(T, D_a) tokens of the span [start, end) seconds by the record's time rule (the
        whole video by default)."""
        record = self.ok_record(video_id)
        return self.read_audio(record, *record.audio_span(start, end))

    def visual_tokens(self, video_id: str, start: float | None = None, end: float | None = None) -> np.ndarray:
        """(F, 1 + P, D_v) tokens (CLS first) of the frames whose time lies in [start, end)."""
        record = self.ok_record(video_id)
        if start is None and end is None:
            return self.read_frames(record)
        return self.read_frames(record, *record.frame_span(self.frame_times(record), start, end))

    def verify(self, hashes: bool = True) -> list[ShardDamage]:
        """Every committed shard checked against the size and SHA-256 its manifest part recorded:
        the damaged ones, with the videos they hold (empty when all are whole). ``hashes=False``
        checks only that each shard is there with its size (no reading: what `info` does)."""
        damaged = []
        for index, part in sorted(self.layout.parts().items()):
            records = [r for r in self._records.values() if r.shard == index]
            if not records:
                continue  # every video of this part was recorded again later
            path = self.layout.shard_dir / shard_name(index)
            expected = records[0].shard_sha256
            if not path.is_file():
                problem = "missing"
            elif expected is None:
                continue  # committed by an avfeat that recorded no checksums
            elif path.stat().st_size != records[0].shard_bytes:
                problem = f"{path.stat().st_size} bytes, {records[0].shard_bytes} recorded"
            elif hashes and file_sha256(path) != expected:
                problem = "its SHA-256 differs from the recorded one"
            else:
                continue
            damaged.append(ShardDamage(index, path, part, problem, [r.video_id for r in records]))
        return damaged

    def fingerprint(self) -> str:
        """A short hash of the config and of what the manifest records, to tie heads and
        indexes to the exact cache contents they were built from."""
        digest = hashlib.sha1(json.dumps({k: v for k, v in self._config_json.items() if k != "avfeat_version"}, sort_keys=True).encode())
        for vid in sorted(self._records):
            r = self._records[vid]
            digest.update(f"{vid}|{r.status}|{r.shard}|{r.audio_length}|{r.visual_length}\n".encode())
        return digest.hexdigest()[:16]

    def shard_attrs(self) -> dict[str, Any]:
        """Attributes of the first committed shard (model specs, dims, rates), or {}."""
        shards = self.layout.shards()
        if not shards:
            return {}
        return dict(self._shard(min(shards)).attrs)

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles = {}

    def __enter__(self) -> "Cache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
