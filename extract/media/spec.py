"""What a decode is asked for and what it returns: ``DecodeSpec`` (rates, frame geometry, frame
choice mode), ``DecodeTuning`` (CPU-saving switches that keep the output), ``DecodedMedia``, and
``MediaError`` with its manifest status."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from avfeat.data.configs import DECODE_MODES

class MediaError(Exception):
    """A file could not be decoded; ``status`` is its manifest status (``avfeat.data.records.Status``)."""

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

    ``mode`` chooses which frame serves each target time ``k / fps``:

    - ``"exact"`` (default): the frame on screen at that time (the last frame with pts <= t_k);
    - ``"keyframes"``: the last *keyframe* with pts <= t_k. Only keyframes are decoded (FFmpeg's
      ``skip_frame=NONKEY``), which is several times cheaper, but a frame can be up to one GOP
      (often 2-10 s) older than its target. ``frame_times`` still carry each frame's own
      timestamp, so time-based reads stay correct; a cache must record the mode it used.
    """

    sample_rate: int = 16000
    fps: float = 1.0
    shortest_edge: int | None = 256
    size: tuple[int, int] | None = None
    crop: tuple[int, int] | None = (224, 224)
    mode: str = "exact"


# DecodeSpec.mode values: DECODE_MODES (the cache's list, avfeat.data.configs) holds them.
EXACT = "exact"
KEYFRAMES = "keyframes"


@dataclass(frozen=True)
class DecodeTuning:
    """How ``decode`` spends CPU; none of these change its output (tests hold them to that).

    Attributes:
        skip_unused: in exact mode, let the video decoder skip a *non-reference* frame (FFmpeg
            ``skip_frame=NONREF``, set per packet) when its timestamp proves that no sampling
            target can fall on it: a later frame is already known and no target lies between
            the two. Nothing references such a frame, so every other frame decodes to the same
            pixels. The frames around each skip are checked as they come out; when a skipped
            one could have served a target (timestamps out of order, a packet that decoded to
            nothing) the file is decoded again without skipping. Only decoders that read
            ``skip_frame`` per packet are asked (``SKIP_CODECS``).
        scaler_threads: libswscale threads per conversion (0: one per core, FFmpeg's default).
            One is cheaper per core and gives the same pixels; workers already run in parallel.
        reuse_scaler: keep one libswscale context per file instead of one per sampled frame.
    """

    skip_unused: bool = True
    scaler_threads: int = 1
    reuse_scaler: bool = True


# The decode path before DecodeTuning existed (every frame decoded, one scaler per frame, scaler
# threads picked by FFmpeg): the reference for tests and benchmarks/decode.py.
REFERENCE_TUNING = DecodeTuning(skip_unused=False, scaler_threads=0, reuse_scaler=False)
# Decoders that check AVCodecContext.skip_frame for each packet as it is decoded (FFmpeg's own
# h264, hevc, mpeg-4 part 2, mpeg-1/2 and vp8); others (libdav1d reads it once at open) decode
# everything in exact mode.
SKIP_CODECS = frozenset({"h264", "hevc", "mpeg4", "mpeg1video", "mpeg2video", "vp8"})


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


def check_spec(spec: DecodeSpec) -> None:
    if spec.mode not in DECODE_MODES:
        raise ValueError(f"DecodeSpec.mode must be one of {', '.join(DECODE_MODES)}, got {spec.mode!r}")
    if not spec.fps > 0 or not math.isfinite(spec.fps):
        raise ValueError(f"DecodeSpec.fps must be a positive number, got {spec.fps!r}")
    if int(spec.sample_rate) <= 0:
        raise ValueError(f"DecodeSpec.sample_rate must be positive, got {spec.sample_rate!r}")
