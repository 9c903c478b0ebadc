"""Media decoding with PyAV: mono audio at the model rate and frames sampled by timestamp.

Times are seconds on the container's common timeline: 0 is the container's start, so audio
and frame times of one file can be compared directly even when the streams start apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Named failure statuses a decode can end with (recorded in the manifest).
EMPTY_FILE = "empty_file"  # zero bytes
UNREADABLE = "unreadable"  # not a media container we can open (truncated, text, ...)
NO_AUDIO = "no_audio"  # no audio stream, or it decodes to nothing
NO_VIDEO = "no_video"  # no video stream (audio-only file), or it decodes to nothing
TOO_SHORT = "too_short"  # shorter than one frame interval, or than the audio model's window
DECODE_ERROR = "decode_error"  # the streams open but the data is corrupt
TIMEOUT = "timeout"  # decoding took longer than the per-video limit
CRASHED = "crashed"  # the decoder process died (a codec crash)


class MediaError(Exception):
    """A file could not be decoded; ``status`` is one of the named statuses above."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status
        self.message = message

    def __reduce__(self):  # picklable across worker processes
        return (MediaError, (self.status, self.message))


@dataclass(frozen=True)
class DecodeSpec:
    """What the backbones need from a file.

    Frames are scaled by libswscale straight to the model's input geometry: either so that the
    shorter side is ``shortest_edge`` pixels (aspect kept) or to exactly ``size`` (h, w); then
    centre-cropped to ``crop`` (h, w) when given.
    """

    sample_rate: int = 16000
    fps: float = 1.0
    shortest_edge: int | None = 256
    size: tuple[int, int] | None = None
    crop: tuple[int, int] | None = (224, 224)


@dataclass
class DecodedMedia:
    audio: np.ndarray  # (N,) float32 mono at DecodeSpec.sample_rate
    audio_start: float  # time of audio[0], seconds on the container timeline
    frames: np.ndarray  # (F, H, W, 3) uint8 RGB at the model's input geometry
    frame_times: np.ndarray  # (F,) float64 seconds, strictly increasing, from stream timestamps
    duration: float  # seconds covered by the decoded streams
    width: int  # source frame width
    height: int  # source frame height
    source_sample_rate: int  # the audio stream's own rate
