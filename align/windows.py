"""Windows over cached videos: a span of audio tokens and the frames of the same span.

A window starts at a sampled frame: it holds ``frames`` consecutive frames from that frame on
and the ``audio_tokens`` audio tokens from the frame's timestamp on. Every window of a geometry
has the same shape, so windows batch without padding. Training, indexing and search all cut
windows here, so a window means the same thing at every stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WindowGeometry:
    seconds: float
    audio_rate: float  # audio tokens per second (50 for HuBERT)
    fps: float  # frames per second sampled at extraction

    @property
    def audio_tokens(self) -> int:
        return max(1, int(round(self.seconds * self.audio_rate)))

    @property
    def frames(self) -> int:
        return max(1, int(round(self.seconds * self.fps)))

    @classmethod
    def for_cache(cls, cache, seconds: float) -> "WindowGeometry":
        return cls(seconds=float(seconds), audio_rate=float(cache.config["audio_token_rate"]), fps=float(cache.config["fps"]))


@dataclass(frozen=True)
class Window:
    video_id: str
    frame: int  # index of the first frame within the video
    audio: int  # index of the first audio token within the video
    start: float  # seconds: the first frame's timestamp
    end: float  # seconds: start + window length


def audio_index(time: float, audio_start: float, audio_rate: float) -> int:
    """Index of the audio token that starts at ``time`` (rounded to the nearest token)."""
    return int(round((time - audio_start) * audio_rate))


def video_windows(row: dict, frame_times: np.ndarray, geometry: WindowGeometry, hop: float | None = None) -> list[Window]:
    """Every full window of one cached video, starting every ``hop`` seconds (default: every frame)."""
    step = 1 if hop is None else max(1, int(round(hop * geometry.fps)))
    windows = []
    last_frame = len(frame_times) - geometry.frames
    for frame in range(0, last_frame + 1, step):
        start = float(frame_times[frame])
        first = audio_index(start, row["audio_start"], row["audio_rate"])
        if first < 0 or first + geometry.audio_tokens > row["audio_length"]:
            continue
        windows.append(Window(row["video_id"], frame, first, start, start + geometry.seconds))
    return windows


def cache_windows(cache, geometry: WindowGeometry, hop: float | None = None, video_ids=None) -> list[Window]:
    """Windows of every ``ok`` video of a cache (or of ``video_ids``), in manifest order."""
    rows = cache.videos(status="ok") if video_ids is None else [cache.row(v) for v in video_ids]
    windows: list[Window] = []
    for row in rows:
        windows.extend(video_windows(row, cache.frame_times(row["video_id"]), geometry, hop))
    return windows
