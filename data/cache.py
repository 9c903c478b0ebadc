"""Reading a token cache (:class:`Cache`): its records, and tokens by index, by time or by
window, float whatever the storage. The files are laid out as ``avfeat.data.layout`` says and
written by ``avfeat.data.shards``.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from avfeat.core.errors import CacheError
from avfeat.core.values import did_you_mean
from avfeat.data.codecs import codec_of
from avfeat.data.configs import CacheConfig
from avfeat.data.layout import CONFIG_FILE, CacheLayout, read_config, shard_name
from avfeat.data.manifest import ManifestRecords, read_manifest
from avfeat.data.records import VideoRecord
from avfeat.data.shards import ShardDamage, file_sha256


MAX_NAME = 4096  # characters: a video id, path or file name is never longer (PATH_MAX)


class UnknownVideoName(CacheError):
    """A name that stands for no video, or for several (``ambiguous``); ``candidates``: the
    videos it names, or the closest ids."""

    def __init__(self, message: str, candidates: list[str] = (), ambiguous: bool = False):
        super().__init__(message)
        self.candidates, self.ambiguous = list(candidates), ambiguous


def resolve_video_name(name: str, paths: Mapping[str, str], listing: str) -> str:
    """The video id that ``name`` stands for: the id itself, or the one video whose file is
    that path, file name or stem (ids are ``stem-<hash>``, which nobody types). Several
    videos of one file (segments) or of one stem are ambiguous: the error lists them.

    Raises:
        UnknownVideoName: no video or several; the message ends with the closest ids, or
            ``listing`` (where to list them).
    """
    if name in paths:
        return name
    if len(name) > MAX_NAME:  # no id or path is that long; nor is it worth comparing or echoing
        raise UnknownVideoName(f"no video has a name of {len(name)} characters; {listing}")
    wanted = name.rstrip("/")
    ways = (  # the path as recorded, the same file named another way, its file name, its stem
        (wanted, str), (_absolute(wanted), _absolute), (wanted, _file_name), (wanted, lambda p: Path(_file_name(p)).stem))
    for target, key in ways:
        found = sorted(video for video, path in paths.items() if path and key(path) == target)
        if len(found) == 1:
            return found[0]
        if found:
            shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
            raise UnknownVideoName(f"{name!r} names {len(found)} videos ({shown}); give one video id", found, ambiguous=True)
    stems = {Path(_file_name(path)).stem: video for video, path in paths.items() if path}
    close = [stems.get(match, match) for match in difflib.get_close_matches(name, [*paths, *stems], n=3, cutoff=0.5)]
    close = list(dict.fromkeys(close))
    hint = f"; did you mean {', '.join(close)}?" if close else f"; {listing}"
    raise UnknownVideoName(f"no video {name!r}{hint}", close)


def _file_name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _absolute(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)


class TokenView:
    """One video's tokens of one modality, read on demand: ``view[a:b]`` reads rows [a, b)
    (one contiguous slice of the shard), so a long video can be walked a chunk at a time
    instead of held whole. Any other index reads the whole track first."""

    def __init__(self, read, length: int):
        self._read, self._length = read, int(length)

    def __len__(self) -> int:
        return self._length

    @property
    def shape(self) -> tuple[int, ...]:
        return (self._length, *self._read(0, 0).shape[1:])

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, key):
        rest = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        if not (isinstance(key, slice) and key.step in (None, 1)):
            return self._read(0, self._length)[(key, *rest)]
        first, stop, _ = key.indices(self._length)
        rows = self._read(first, max(first, stop))
        return rows[(slice(None), *rest)] if rest else rows

    def __array__(self, dtype=None, copy=None):
        rows = self._read(0, self._length)
        return rows if dtype is None else rows.astype(dtype)


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
        self._records = ManifestRecords(self.manifest)
        # What each shard was when committed (from its manifest part; None for older caches).
        self._sizes = dict(zip(self._records.column("shard"), self._records.column("shard_bytes")))
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
        return [r for r in self._records.all() if status is None or r.status == status]

    def record(self, video_id: str) -> VideoRecord:
        """The video's record; an unknown id is a :class:`CacheError` naming the closest ids."""
        try:
            return self._records[video_id]
        except KeyError:
            hint = did_you_mean(video_id, self._records, "`avfeat info CACHE --videos` lists the ids")
            raise CacheError(f"video id {video_id!r} is not in the cache {self.layout.root}{hint}") from None

    def resolve(self, name: str) -> str:
        """The id of the video ``name`` stands for: an id, or the path, file name or stem of
        one video's file (see :func:`resolve_video_name`)."""
        paths = dict(zip(self._records.ids, self._records.column("path")))
        return resolve_video_name(name, paths, "`avfeat info CACHE --videos` lists the ids")

    def ok_record(self, video_id: str) -> VideoRecord:
        """The record of a video that has tokens; a failed one is a :class:`CacheError`."""
        record = self.record(video_id)
        if not record.ok:
            raise CacheError(f"video {video_id!r} has no tokens (status {record.status}: {record.error})")
        return record

    def status_counts(self) -> dict[str, int]:
        counts = {entry["values"]: entry["counts"] for entry in self.manifest.column("status").value_counts().to_pylist()}
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

    def audio_view(self, video: str | VideoRecord) -> "TokenView":
        """The video's audio tokens as a :class:`TokenView` (read a slice at a time)."""
        record = self._resolve(video)
        return TokenView(lambda first, stop: self.read_audio(record, first, stop), record.audio_length)

    def frame_view(self, video: str | VideoRecord) -> "TokenView":
        """The video's visual tokens as a :class:`TokenView` (read a slice of frames at a time)."""
        record = self._resolve(video)
        return TokenView(lambda first, stop: self.read_frames(record, first, stop), record.visual_length)

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
        rows = self._rows_by_shard()
        sha256, size = self._records.column("shard_sha256"), self._records.column("shard_bytes")
        for index, part in sorted(self.layout.parts().items()):
            if index not in rows:
                continue  # every video of this part was recorded again later
            path = self.layout.shard_dir / shard_name(index)
            first = rows[index][0]
            expected = sha256[first]
            if not path.is_file():
                problem = "missing"
            elif expected is None:
                continue  # committed by an avfeat that recorded no checksums
            elif path.stat().st_size != size[first]:
                problem = f"{path.stat().st_size} bytes, {size[first]} recorded"
            elif hashes and file_sha256(path) != expected:
                problem = "its SHA-256 differs from the recorded one"
            else:
                continue
            damaged.append(ShardDamage(index, path, part, problem, [self._records.ids[row] for row in rows[index]]))
        return damaged

    def _rows_by_shard(self) -> dict[int, np.ndarray]:
        """Each shard's rows, in manifest order."""
        shards = self.manifest.column("shard").to_numpy(zero_copy_only=False)
        order = np.argsort(shards, kind="stable")
        found, starts = np.unique(shards[order], return_index=True)
        return {int(index): rows for index, rows in zip(found, np.split(order, starts[1:]))}

    def fingerprint(self) -> str:
        """A short hash of the config and of what the manifest records, to tie heads and
        indexes to the exact cache contents they were built from."""
        digest = hashlib.sha1(json.dumps({k: v for k, v in self._config_json.items() if k != "avfeat_version"}, sort_keys=True).encode())
        columns = zip(self._records.ids, *(self._records.column(name) for name in ("status", "shard", "audio_length", "visual_length")))
        for vid, status, shard, audio, frames in sorted(columns):
            digest.update(f"{vid}|{status}|{shard}|{audio}|{frames}\n".encode())
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
