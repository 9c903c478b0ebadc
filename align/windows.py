"""Windows over cached videos: a span of audio tokens and the frames of the same span.

A window starts at a sampled frame: it holds ``frames`` consecutive frames from that frame on
and the ``audio_tokens`` audio tokens from the frame's timestamp on. Every window of a geometry
has the same shape, so windows batch without padding. Training, indexing and search all cut
windows here, so a window means the same thing at every stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avfeat.data.records import VideoRecord, token_count


@dataclass(frozen=True)
class WindowGeometry:
    seconds: float
    audio_rate: float  # audio tokens per second (50 for HuBERT)
    fps: float  # frames per second sampled at extraction

    @property
    def audio_tokens(self) -> int:
        return token_count(self.seconds, self.audio_rate)

    @property
    def frames(self) -> int:
        return token_count(self.seconds, self.fps)

    @classmethod
    def for_cache(cls, cache, seconds: float) -> "WindowGeometry":
        return cls(seconds=float(seconds), audio_rate=float(cache.config.audio_token_rate), fps=float(cache.config.fps))


@dataclass(frozen=True)
class Window:
    video_id: str
    frame: int  # index of the first frame within the video
    audio: int  # index of the first audio token within the video
    start: float  # seconds: the first frame's timestamp
    end: float  # seconds: start + window length


def video_windows(record: VideoRecord, frame_times: np.ndarray, geometry: WindowGeometry, hop: float | None = None) -> list[Window]:
    """Every full window of one cached video, starting every ``hop`` seconds (default: every
    frame); the audio side starts at the token the record's time rule gives the frame's time."""
    step = 1 if hop is None else token_count(hop, geometry.fps)
    windows = []
    last_frame = len(frame_times) - geometry.frames
    for frame in range(0, last_frame + 1, step):
        start = float(frame_times[frame])
        first = record.audio_index(start)
        if first < 0 or first + geometry.audio_tokens > record.audio_length:
            continue
        windows.append(Window(record.video_id, frame, first, start, start + geometry.seconds))
    return windows


def cache_windows(cache, geometry: WindowGeometry, hop: float | None = None, video_ids=None) -> list[Window]:
    """Windows of every ``ok`` video of a cache (or of ``video_ids``), in manifest order."""
    records = cache.records(status="ok") if video_ids is None else [cache.record(v) for v in video_ids]
    windows: list[Window] = []
    for record in records:
        windows.extend(video_windows(record, cache.frame_times(record), geometry, hop))
    return windows


@dataclass
class Timeline:
    """Where a video's (or a query's) tokens sit in time; the fields ``video_windows`` reads."""

    video_id: str
    audio_start: float
    audio_rate: float
    audio_length: int
    frame_times: np.ndarray

    def record(self) -> VideoRecord:
        return VideoRecord(self.video_id, path="", audio_start=self.audio_start, audio_rate=self.audio_rate, audio_length=self.audio_length)

    def windows(self, geometry: WindowGeometry, hop: float | None) -> list[Window]:
        return video_windows(self.record(), self.frame_times, geometry, hop)
