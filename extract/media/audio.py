"""Audio: decoded frames resampled by libswresample to mono float32 at the model rate, kept in
timeline order with gaps filled, and ``decode_audio`` for files whose picture is not wanted."""

from __future__ import annotations

import os
from fractions import Fraction

import av
import numpy as np

from avfeat.data.records import Status
from avfeat.extract.media.containers import one_line, open_checked, pick_stream, timeline_origin
from avfeat.extract.media.spec import MediaError

# HuBERT's convolutional front end needs at least one 400-sample window (25 ms at 16 kHz).
MIN_AUDIO_SAMPLES = 400
# Audio timestamp jumps larger than this (seconds) are filled with silence so later audio stays
# aligned with the video; smaller jitter and overlaps are concatenated as decoded.
AUDIO_GAP_FILL = 0.1


class AudioCollector:
    """Resamples decoded audio frames to mono float32 and keeps them in timeline order."""

    def __init__(self, rate: int, origin: Fraction):
        self.rate = rate
        self.origin = origin
        self.chunks: list[np.ndarray] = []
        self.samples = 0
        self.source_rate: int | None = None
        self._start: float | None = None  # absolute time of the first output sample
        self._resampler: av.AudioResampler | None = None
        self._key: tuple | None = None

    def add(self, frame) -> None:
        key = (frame.format.name, frame.layout.name, frame.sample_rate)
        if key != self._key:  # a mid-stream format change needs a fresh resampler
            self._flush()
            self._resampler = av.AudioResampler(format="flt", layout="mono", rate=self.rate)
            self._key = key
        if self.source_rate is None:
            self.source_rate = frame.sample_rate
        if self._start is None and frame.pts is None:
            self._start = float(self.origin)  # no timestamps at all: assume the audio starts at 0
        self._append(self._resampler.resample(frame))

    def finish(self) -> None:
        self._flush()

    def _flush(self) -> None:
        if self._resampler is not None:
            self._append(self._resampler.resample(None))

    def _append(self, frames) -> None:
        for out in frames:
            if out is None or out.samples == 0:  # a passthrough resampler "flushes" [None]
                continue
            if out.pts is not None and out.time_base is not None:
                t = float(out.pts * out.time_base)
                if self._start is None:
                    self._start = t
                else:
                    gap = t - (self._start + self.samples / self.rate)
                    if gap > AUDIO_GAP_FILL:
                        fill = int(round(gap * self.rate))
                        self.chunks.append(np.zeros(fill, dtype=np.float32))
                        self.samples += fill
            elif self._start is None:
                self._start = float(self.origin)
            data = out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
            self.chunks.append(data)
            self.samples += data.shape[0]

    def start_time(self) -> float:
        return (self._start if self._start is not None else float(self.origin)) - float(self.origin)

    def end_time(self) -> float:
        return self.start_time() + self.samples / self.rate

    def cut(self, start: float | None, end: float | None) -> tuple[np.ndarray, float]:
        """(samples, time of the first) of the audio inside [start, end) on the timeline."""
        data, first = self.result(), self.start_time()
        if start is not None and start > first:
            skip = int(round((start - first) * self.rate))
            data, first = data[skip:], first + skip / self.rate
        if end is not None:
            data = data[: max(0, int(round((end - first) * self.rate)))]
        return data, first

    def result(self) -> np.ndarray:
        if not self.chunks:
            return np.zeros(0, dtype=np.float32)
        return np.ascontiguousarray(np.concatenate(self.chunks), dtype=np.float32)


def decode_audio(path: str | os.PathLike, sample_rate: int) -> tuple[np.ndarray, float]:
    """Only the audio of a file (wav, flac, mp3, or a video's sound track): mono float32 at
    ``sample_rate`` and the time of its first sample, decoded exactly as ``decode`` does.

    Audio-only queries have no picture, which ``decode`` would reject as ``no_video``.

    Raises:
        MediaError: ``unreadable``, ``empty_file``, ``no_audio``, ``decode_error`` or ``too_short``.
    """
    path = os.fspath(path)
    with open_checked(path) as container:
        astream = pick_stream(container, "audio")
        if astream is None:
            raise MediaError(Status.NO_AUDIO, "no audio stream")
        if astream.codec_context is None:
            raise MediaError(Status.DECODE_ERROR, "no decoder for the audio codec")
        audio = AudioCollector(int(sample_rate), timeline_origin(container, astream, astream))
        try:
            for packet in container.demux(astream):
                for frame in packet.decode():
                    audio.add(frame)
            audio.finish()
        except (av.error.FFmpegError, OSError) as exc:
            raise MediaError(Status.DECODE_ERROR, f"corrupt audio data: {one_line(exc)}") from None
    data = audio.result()
    if len(data) < MIN_AUDIO_SAMPLES:
        raise MediaError(Status.TOO_SHORT, f"audio has {len(data)} samples, fewer than the {MIN_AUDIO_SAMPLES} the audio model needs")
    return data, audio.start_time()
