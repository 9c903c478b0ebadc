"""Writing media files: RGB frames and mono audio to H.264/AAC (or any codec PyAV knows).

Real files written through PyAV, so the synthetic corpus, tests and benchmarks exercise the same
decoding path as users' videos.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def write_media(
    path: str | Path,
    frames: np.ndarray | None,
    fps: float,
    audio: np.ndarray | None,
    sample_rate: int,
    *,
    audio_start: float = 0.0,
    video_codec: str = "libx264",
    audio_codec: str = "aac",
) -> None:
    """Write RGB frames and/or mono audio to a media file.

    Args:
        path: output file; the container is chosen from its extension.
        frames: (F, H, W, 3) uint8 RGB, or None for an audio-only file. H and W must be even.
        fps: frame rate of ``frames``.
        audio: (N,) float32 in [-1, 1] mono, or None for a video-only file.
        sample_rate: rate of ``audio`` in Hz.
        audio_start: seconds by which the audio stream starts after the video stream.
    """
    if frames is None and audio is None:
        raise ValueError("nothing to write")
    with av.open(str(path), mode="w") as container:
        vstream = astream = None
        if frames is not None:
            rate = Fraction(fps).limit_denominator(1001)
            vstream = container.add_stream(video_codec, rate=rate)
            vstream.height, vstream.width = frames.shape[1:3]
            vstream.pix_fmt = "yuv420p"
            vstream.options = {"preset": "veryfast", "crf": "20", "g": str(max(1, int(round(fps))))}
        if audio is not None:
            astream = container.add_stream(audio_codec, rate=sample_rate)
            astream.layout = "mono"
        if frames is not None:
            for index, image in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
                frame.pts = index
                frame.time_base = Fraction(1) / rate
                container.mux(vstream.encode(frame))
            container.mux(vstream.encode())
        if audio is not None:
            samples = np.asarray(audio, dtype=np.float32).reshape(1, -1)
            block = 1024
            first = int(round(audio_start * sample_rate))
            for begin in range(0, samples.shape[1], block):
                frame = av.AudioFrame.from_ndarray(samples[:, begin : begin + block], format="flt", layout="mono")
                frame.sample_rate = sample_rate
                frame.pts = first + begin
                frame.time_base = Fraction(1, sample_rate)
                container.mux(astream.encode(frame))
            container.mux(astream.encode())
