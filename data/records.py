"""The typed records where the stages meet.

- :class:`VideoRecord`: one manifest row. It owns the one rule that turns seconds into audio-token
  and frame indices, so a window (training, index, rerank, sync, eval, attention maps, queries)
  means the same tokens everywhere.
- :class:`BackboneSpec`: which backbones made the tokens and what the tokens look like. Extract
  writes it into cache.json; checkpoints and indexes copy it; :meth:`BackboneSpec.check_same`
  is the one comparison, raising the one error type :class:`BackboneMismatchError`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from enum import Enum
from typing import Any

import numpy as np

from avfeat.core.errors import BackboneMismatchError


class Status(str, Enum):
    """What became of a video, as the manifest records it: ``ok`` or a named failure."""

    OK = "ok"
    # A decode's failures.
    EMPTY_FILE = "empty_file"  # zero bytes
    UNREADABLE = "unreadable"  # not a media container we can open (truncated, text, a FIFO, ...)
    NO_AUDIO = "no_audio"  # no audio stream, or it decodes to nothing
    NO_VIDEO = "no_video"  # no video stream (audio-only file), or it decodes to nothing
    TOO_SHORT = "too_short"  # shorter than one frame interval, or than the audio model's window
    DECODE_ERROR = "decode_error"  # the streams open but the data is corrupt
    TIMEOUT = "timeout"  # decoding took longer than the per-video limit
    CRASHED = "crashed"  # the decoder process died (a codec crash)
    # Inputs that could not be read at all (listing and opening; see extract/sources.py).
    MISSING = "missing"  # a listed file, URL or tar member does not exist (HTTP 404, no such key)
    ACCESS_DENIED = "access_denied"  # the server refused it (HTTP 401/403, S3 AccessDenied)
    REMOTE_TIMEOUT = "remote_timeout"  # a request got no answer within AVFEAT_REMOTE_TIMEOUT seconds
    NO_MEDIA = "no_media"  # a WebDataset shard of a brace pattern or glob that holds no media member
    BAD_SAMPLE = "bad_sample"  # a WebDataset sample with an empty key, a key no id can hold, or a KEY.json that is not a JSON object
    TRUNCATED = "truncated"  # a WebDataset shard of a pattern or glob without its end-of-archive marker (samples lost)
    # The cache's own.
    NON_FINITE = "non_finite"  # the backbone gave NaN or inf tokens
    SUPERSEDED = "superseded"  # retired because its file changed (`extract --refresh`); readers never see it

    def __str__(self) -> str:  # the value in f-strings and messages, as the manifest holds it
        return self.value

    __format__ = str.__format__


# Half a token or frame is rounded up; the epsilon keeps times such as 0.97 s (stored as
# 0.96999...) from landing on the other side of a half than the decimal says.
_EPS = 1e-9


def nearest_index(seconds: float, rate: float) -> int:
    """The index of the step nearest to ``seconds`` on a grid of ``rate`` steps per second
    (halves round up): the one rounding rule for times and lengths."""
    return int(math.floor(seconds * rate + 0.5 + _EPS))


def nearest_indices(seconds: np.ndarray, rate: float) -> np.ndarray:
    """:func:`nearest_index` of each of many times (int64)."""
    return np.floor(np.asarray(seconds, dtype=np.float64) * rate + 0.5 + _EPS).astype(np.int64)


def token_count(seconds: float, rate: float) -> int:
    """Tokens (or frames) a span of ``seconds`` holds at ``rate`` per second; at least one."""
    return max(1, nearest_index(seconds, rate))


@dataclass(frozen=True)
class VideoRecord:
    """One manifest row: an input video, its status, and where its tokens lie in its shard."""

    video_id: str
    path: str
    size: int = 0
    mtime: float = 0.0
    status: str = Status.OK
    error: str = ""
    duration: float = 0.0
    shard: int = -1
    audio_offset: int = 0
    audio_length: int = 0
    audio_start: float = 0.0  # seconds: the first audio token's start
    audio_rate: float = 0.0  # audio tokens per second
    visual_offset: int = 0
    visual_length: int = 0
    fps: float = 0.0
    width: int = 0
    height: int = 0
    source_sample_rate: int = 0
    audio_level: float | None = None  # dBFS: RMS of the decoded sound (the audit's silence flag); None in caches of before
    shard_sha256: str | None = None  # the shard file's hash and size when it was committed
    shard_bytes: int | None = None
    segment_start: float | None = None  # seconds: a segment of the file (an input table's start/end); None: the whole file
    segment_end: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)  # an input table's other columns (label, split, ...), typed

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "VideoRecord":
        names = _FIELD_NAMES
        known = {k: v for k, v in row.items() if k in names}
        metadata = {k: v for k, v in row.items() if k not in names}
        return cls(**known, metadata=metadata)

    def to_row(self) -> dict[str, Any]:
        """The manifest row: the record's fields, then its metadata columns."""
        row = asdict(self)
        row.update(row.pop("metadata"))
        return row

    def with_(self, **changes) -> "VideoRecord":
        return replace(self, **changes)

    @property
    def ok(self) -> bool:
        return self.status == Status.OK

    @property
    def end_time(self) -> float:
        """Where the cached media ends on the file's timeline (a segment starts at its start)."""
        return (self.segment_start or 0.0) + self.duration

    # ---- the time rule -------------------------------------------------------------------

    def audio_index(self, seconds: float) -> int:
        """Index of the audio token that starts nearest to ``seconds`` (may lie outside the video)."""
        return nearest_index(seconds - self.audio_start, self.audio_rate)

    def audio_span(self, start: float | None = None, end: float | None = None) -> tuple[int, int]:
        """(first, stop) audio-token indices of the span [start, end) seconds, clipped to the
        video: ``first`` is the token nearest ``start`` and the span holds the token count of
        ``end - start`` seconds, so a span means the same tokens wherever it is cut."""
        begin = 0 if start is None else self.audio_index(start)
        if end is None:
            stop = self.audio_length
        elif start is None:
            stop = self.audio_index(end)
        else:
            stop = begin + nearest_index(end - start, self.audio_rate)
        first = min(max(0, begin), self.audio_length)
        return first, min(max(first, stop), self.audio_length)

    def audio_times(self) -> np.ndarray:
        """Start time in seconds of each audio token."""
        return self.audio_start + np.arange(self.audio_length) / self.audio_rate

    @staticmethod
    def frame_span(frame_times: np.ndarray, start: float | None = None, end: float | None = None) -> tuple[int, int]:
        """(first, stop) frame indices of the frames whose timestamp lies in [start, end)."""
        first = 0 if start is None else int(np.searchsorted(frame_times, start - _EPS, side="left"))
        stop = len(frame_times) if end is None else int(np.searchsorted(frame_times, end - _EPS, side="left"))
        return first, max(first, stop)


_FIELD_NAMES = {f.name for f in fields(VideoRecord)} - {"metadata"}
RESERVED_COLUMNS = frozenset(_FIELD_NAMES | {"id", "start", "end"})  # metadata columns may not take these names


# The cache.json keys that describe the tokens. Heads and indexes must share every one of the
# MATCH keys with a cache to apply to its tokens.
_MATCH = ("audio_model", "visual_model", "audio_layer", "visual_layer", "audio_dim", "visual_dim")


@dataclass(frozen=True)
class BackboneSpec:
    """The backbones and the tensors they produce: models, layers, dims, rates, frame geometry,
    storage. Written by extract into cache.json, copied into checkpoints and indexes."""

    audio_model: str
    visual_model: str
    audio_layer: int = -1
    visual_layer: int = -1
    fps: float = 1.0
    storage_dtype: str = "float16"  # the float dtype readers get
    storage: str = "float16"  # on disk: float16, or int8 with per-token float32 scales (dequantized on read)
    pool_patches: int = 1  # 2: the patch grid was pooled 2x2 at extract time (visual_grid is the pooled one)
    decode_mode: str = "exact"  # keyframes: each 1/fps step took the last keyframe at or before it (frame times are the true ones)
    sample_rate: int = 16000
    audio_token_rate: float = 50.0
    audio_dim: int = 0
    visual_dim: int = 0
    visual_tokens: int = 0  # per frame: CLS + patches
    visual_grid: tuple[int, int] = (0, 0)
    frame_geometry: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "BackboneSpec":
        """From cache.json, a checkpoint's "cache" section or an index's meta.json (other keys
        are ignored; keys an older file lacks keep their defaults)."""
        names = {f.name for f in fields(cls)}
        known = {k: v for k, v in values.items() if k in names and v is not None}
        if "visual_grid" in known:
            known["visual_grid"] = tuple(known["visual_grid"])
        try:
            return cls(**known)
        except TypeError as error:
            raise BackboneMismatchError(f"incomplete backbone description: {error}") from None

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["visual_grid"] = list(self.visual_grid)
        return values

    def check_same(self, other: "BackboneSpec", mine: str, theirs: str) -> None:
        """Refuse tokens from other backbones than these: one error, naming every difference.

        Raises:
            BackboneMismatchError: ``mine`` (e.g. "heads X") and ``theirs`` ("cache Y") differ.
        """
        diff = [f"{k}: {mine.split()[0]} {getattr(self, k)!r}, {theirs.split()[0]} {getattr(other, k)!r}"
                for k in _MATCH if getattr(self, k) != getattr(other, k)]
        # Tokens per frame (CLS + patches, pooled or not): files of older avfeat may lack it (0).
        if self.visual_tokens and other.visual_tokens and self.visual_tokens != other.visual_tokens:
            diff.append(f"visual_tokens: {mine.split()[0]} {self.visual_tokens!r}, {theirs.split()[0]} {other.visual_tokens!r} (--pool-patches)")
        if diff:
            raise BackboneMismatchError(f"{mine} and {theirs} come from different backbones ({'; '.join(diff)})")
