"""Queries: a video, an audio file, an image, or ``VIDEO_ID@START-END`` → tokens → vectors.

Files are embedded with the backbones named in the cache config (the same models, layers and
frame rate the index was built from), so a query's tokens are the ones ``extract`` would have
cached for it. A query longer than one window is cut into the index's windows
(``video_windows``) and its vector is the normalised mean of its window vectors: one search
per query, and a query matches what it shows on average. A query shorter than one window is
pooled whole (``avfeat.index.vectors.window_vectors``). ``--locate`` instead keeps every
window's vector (see ``avfeat.index.locate``). This module imports no torch: a cached span's
tokens are read without it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path

import numpy as np

from avfeat.align.windows import Timeline
from avfeat.core.values import parse_time
from avfeat.data.records import nearest_index
from avfeat.data.configs import TrainedOn
from avfeat.core.errors import CacheError, InputError, QueryError
from avfeat.index.hits import AUDIO, VISUAL

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg", ".oga", ".m4a", ".aac", ".opus", ".wma"}
# Fraction of a visual query's projected patches that salient pooling keeps (``salient_patches``).
SALIENT_FRACTION = 0.05
_ID_RE = re.compile(r"^(?P<video>.+)@(?P<start>[0-9:.]+)-(?P<end>[0-9:.]+)$")


@dataclass
class QueryTokens:
    """A query's backbone tokens on its own timeline (seconds); a side it lacks is None."""

    name: str
    kind: str  # "video", "audio", "image" or "id"
    audio: np.ndarray | None = None  # (T, D_a)
    audio_start: float = 0.0
    audio_rate: float = 50.0
    visual: np.ndarray | None = None  # (F, 1 + P, D_v)
    frame_times: np.ndarray | None = None  # (F,)
    audio_level: float | None = None  # dBFS of a video file's decoded sound (sync refuses silence)

    def sides(self) -> list[str]:
        return [side for side, tokens in ((AUDIO, self.audio), (VISUAL, self.visual)) if tokens is not None and len(tokens)]

    def default_side(self) -> str:
        """The side a plain search queries with: audio when there is any (video, audio file), else visual."""
        return AUDIO if self.audio is not None and len(self.audio) else VISUAL

    def timeline(self, fps: float) -> Timeline:
        """Window starts at the frames, or, for an audio-only query, where frames at ``fps`` would be."""
        length = 0 if self.audio is None else len(self.audio)
        times = self.frame_times
        if times is None:
            count = nearest_index(length / self.audio_rate, fps)
            times = self.audio_start + np.arange(count) / fps
        return Timeline(self.name, self.audio_start, self.audio_rate, length, np.asarray(times, dtype=np.float64))


def parse_id_query(text: str) -> tuple[str, float, float] | None:
    """``"VIDEO_ID@START-END"`` → (video id, start, end) seconds, or None if it is not one.
    Times are seconds, m:ss or h:mm:ss."""
    match = _ID_RE.match(text)
    if not match:
        return None
    try:
        start, end = parse_time(match["start"]), parse_time(match["end"])
    except InputError as error:
        raise QueryError(f"query {text!r}: {error}") from None
    if end <= start:
        raise QueryError(f"query {text!r}: END must be after START")
    return match["video"], start, end


def file_kind(path: str) -> str:
    suffix = Path(path).suffix.lower()
    return "image" if suffix in IMAGE_SUFFIXES else "audio" if suffix in AUDIO_SUFFIXES else "video"


def cached_query(cache, text: str) -> QueryTokens | None:
    """The cached tokens of ``VIDEO_ID@START-END``, or None when ``text`` is not of that form."""
    parsed = parse_id_query(text)
    if parsed is None:
        return None
    video, start, end = parsed
    try:
        record = cache.ok_record(cache.resolve(video))  # an id, or its file's path, name or stem
    except CacheError as error:
        raise QueryError(str(error)) from None
    if end > record.end_time + 1e-6:
        raise QueryError(f"query {text!r} ends after the video ({record.end_time:.2f} s)")
    first, stop = record.audio_span(start, end)
    times = cache.frame_times(record)
    frames = slice(*record.frame_span(times, start, end))
    if first == stop and frames.start == frames.stop:
        raise QueryError(f"query {text!r} selects no cached tokens (the video lasts {record.end_time:.2f} s)")
    # On the query's own timeline (0 = START), like a clip cut from the video at START.
    return QueryTokens(
        name=text, kind="id", audio=cache.read_audio(record, first, stop),
        audio_start=record.audio_start + first / record.audio_rate - start, audio_rate=record.audio_rate,
        visual=cache.read_frames(record, frames.start, frames.stop), frame_times=times[frames] - start,
    )


def query_dtype(cache_dtype: str | None, device: str) -> str:
    """Compute a query's tokens as the cache's were (the heads learnt those), where the device
    can: int8 kernels are CPU kernels, so a GPU query of an int8 cache uses the GPU's own choice.
    Heads older than the record (no ``compute_dtype``) get ``auto``."""
    if not cache_dtype or (cache_dtype == "int8" and not str(device).startswith("cpu")):
        return "auto"
    return cache_dtype


class Backbones:
    """The cache's backbones, loaded on first use, to embed query files."""

    def __init__(self, trained_on: TrainedOn, device: str = "cpu"):
        self.trained_on = trained_on
        self.device = device

    @cached_property
    def encoder(self):
        from avfeat.extract.encoder import Encoder, ExtractConfig

        c = self.trained_on
        config = ExtractConfig(**{f.name: getattr(c, f.name) for f in fields(ExtractConfig)})
        encoder = Encoder(config, device=self.device, dtype=query_dtype(c.compute_dtype, self.device))
        # A checkpoint of before --pool-patches does not say: its patch grid tells.
        cached, native = c.visual_grid, encoder.visual.grid
        if not c.pool_patches_recorded and all(cached) and native and tuple(cached) != tuple(native):
            encoder.set_pool(native[0] // int(cached[0]))
        return encoder

    def encode(self, path: str | Path) -> QueryTokens:
        """Tokens of a video, audio or image file. Raises QueryError when it cannot be read."""
        from avfeat.extract.media import MediaError

        path = str(path)
        if not Path(path).is_file():
            raise QueryError(f"query file {path} does not exist")
        kind = file_kind(path)
        encoder = self.encoder
        try:
            if kind == "image":
                return QueryTokens(path, kind, visual=encoder.encode_image(path), frame_times=np.zeros(1))
            if kind == "audio":
                audio, start = encoder.encode_audio_file(path)
                return QueryTokens(path, kind, audio=audio, audio_start=start, audio_rate=encoder.audio.token_rate)
            media, audio, visual = encoder.encode_file(path)
        except MediaError as error:
            raise QueryError(f"cannot use query {path}: {error.message} ({error.status})") from None
        from avfeat.extract.tasks import audio_level

        return QueryTokens(path, kind, audio, media.audio_start, encoder.audio.token_rate, visual, media.frame_times,
                           audio_level(media.audio) if media.audio is not None else None)


def unit_vector(values, dim: int) -> np.ndarray:
    """A query given as numbers (a list, or an array of ``dim``) as the (1, dim) float32 unit
    vector search takes. Scaled by its largest magnitude before its norm is taken, so that no
    finite vector overflows the norm (1e308s) or underflows it (5e-324s) to zero or infinity.

    Raises:
        QueryError: not ``dim`` finite numbers, or all zero (no direction to search).
    """
    try:
        vector = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        vector = np.array([np.nan])
    if vector.shape != (dim,) or not np.isfinite(vector).all() or not np.abs(vector).max() > 0:
        raise QueryError(f"vector must be {dim} finite numbers, not all zero (got {vector.size})")
    vector = vector / np.abs(vector).max()
    return (vector / np.linalg.norm(vector)).astype(np.float32)[None]
