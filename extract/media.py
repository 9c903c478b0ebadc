"""Media decoding with PyAV: mono audio at the model rate and frames sampled by timestamp.

Times are seconds on the container's common timeline: 0 is the container's start, so audio
and frame times of one file can be compared directly even when the streams start apart.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import os
import stat
from dataclasses import dataclass, replace
from fractions import Fraction

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from avfeat.data.cache import DECODE_MODES
from avfeat.data.records import Status


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


# DecodeSpec.mode values: DECODE_MODES (the cache's list, avfeat.data.cache) holds them.
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
            ``skip_frame`` per packet are asked (``_SKIP_CODECS``).
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
_SKIP_CODECS = frozenset({"h264", "hevc", "mpeg4", "mpeg1video", "mpeg2video", "vp8"})


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


# HuBERT's convolutional front end needs at least one 400-sample window (25 ms at 16 kHz).
MIN_AUDIO_SAMPLES = 400
# Audio timestamp jumps larger than this (seconds) are filled with silence so later audio stays
# aligned with the video; smaller jitter and overlaps are concatenated as decoded.
AUDIO_GAP_FILL = 0.1
# Video decoder threads per process when ``decode(threads=None)``; decoding usually runs in
# several worker processes at once, so the default is one thread each.
THREADS_ENV = "AVFEAT_DECODE_THREADS"
# Tolerance (seconds) when comparing frame timestamps with sampling targets.
_EPS = 1e-6
# Safety margin (seconds) of the skip rule: a frame this close to a target is always decoded.
_SKIP_MARGIN = 1e-4


def resize_geometry(height: int, width: int, spec: DecodeSpec) -> tuple[int, int]:
    """The (h, w) a source frame is scaled to before the centre crop.

    ``spec.size`` wins when given; otherwise ``shortest_edge`` scales the shorter side to that
    many pixels with the longer side truncated exactly as transformers'
    ``get_resize_output_image_size(..., default_to_square=False)`` does, so the frames match the
    DINOv2 / BiT processor's geometry. With neither, the source size is kept.
    """
    if spec.size is not None:
        return int(spec.size[0]), int(spec.size[1])
    if spec.shortest_edge is not None:
        edge = int(spec.shortest_edge)
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(edge * long / short)
        return (new_long, edge) if width <= height else (edge, new_long)
    return height, width


def center_crop(image: np.ndarray, crop: tuple[int, int]) -> np.ndarray:
    """Centre-crop an (H, W, C) image to ``crop`` (h, w), zero-padding axes that are too small.

    Offsets follow transformers' default (torchvision) image processor backend: the crop starts
    at ``(H - h) // 2``; an axis shorter than the crop is padded with ``(h - H) // 2`` zeros
    before it and the rest after it.
    """
    ch, cw = int(crop[0]), int(crop[1])
    h, w = image.shape[:2]
    if h >= ch and w >= cw:
        top, left = (h - ch) // 2, (w - cw) // 2
        return image[top : top + ch, left : left + cw]
    out = np.zeros((ch, cw) + image.shape[2:], dtype=image.dtype)
    src_y, dst_y, n_y = ((h - ch) // 2, 0, ch) if h >= ch else (0, (ch - h) // 2, h)
    src_x, dst_x, n_x = ((w - cw) // 2, 0, cw) if w >= cw else (0, (cw - w) // 2, w)
    out[dst_y : dst_y + n_y, dst_x : dst_x + n_x] = image[src_y : src_y + n_y, src_x : src_x + n_x]
    return out


def decode(path: str | os.PathLike, spec: DecodeSpec, *, threads: int | None = None,
           start: float | None = None, end: float | None = None,
           tuning: DecodeTuning | None = None) -> DecodedMedia:
    """Decode a media file into mono audio at ``spec.sample_rate`` and frames sampled at ``spec.fps``.

    One demux pass reads the best audio and video streams. Frames are chosen by their own
    timestamps: for each target ``t_k = k / fps`` before the end of the video, the frame on
    screen at ``t_k`` (the last one with pts <= t_k, or the first frame for targets before it);
    a frame is taken once, so ``frame_times`` strictly increase. Only chosen frames are
    converted, by libswscale, straight to the model geometry. With ``spec.mode="keyframes"``
    only keyframes are decoded and each target gets the last keyframe at or before it (its
    own time in ``frame_times``).

    In exact mode, non-reference frames that no target can fall on are not decoded at all
    (see ``DecodeTuning``); the output is bit-identical to decoding every frame.

    Audio is resampled by libswresample to mono float32. Timestamp jumps larger than
    ``AUDIO_GAP_FILL`` seconds are filled with silence; smaller jitter and overlaps are simply
    concatenated. ``audio_start`` is the time of the first decoded sample (for AAC that can
    include the encoder's priming samples when the file places them on the timeline).

    Error rule: the container must open and both streams must exist; any error *raised* by
    the demuxer or a decoder mid-stream fails the file with ``decode_error`` (damage the codec
    conceals silently is accepted).

    A segment (``start``/``end``, seconds on the file's timeline) seeks to the keyframe before
    ``start`` and decodes forward until both streams pass ``end``, so its cost follows its
    length, not the file's. Its frames are the whole file's frames at the same targets
    (``k / fps`` inside the segment), its audio is cut to the segment, and times stay on the
    file's timeline; ``duration`` is the segment's covered length.

    Args:
        path: the media file.
        spec: target rates and frame geometry.
        threads: video decoder threads; None reads ``AVFEAT_DECODE_THREADS`` (default 1),
            because decoding normally runs in several worker processes already.
        start, end: the segment to decode (None: the file's start / end).
        tuning: CPU-saving switches that keep the output (default ``DecodeTuning()``);
            ``REFERENCE_TUNING`` is the plain path, for tests and benchmarks.

    Raises:
        MediaError: with one of the named statuses when the file cannot be used.
    """
    _check_spec(spec)
    tuning = tuning or DecodeTuning()
    threads = _thread_count(threads)
    try:
        with _open_checked(os.fspath(path)) as container:
            return _decode_container(container, spec, threads, start, end, tuning)
    except _SkipMiss:  # rare (timestamps out of order, frames that decode to nothing): no skipping
        pass
    with _open_checked(os.fspath(path)) as container:
        return _decode_container(container, spec, threads, start, end, replace(tuning, skip_unused=False))


def _check_spec(spec: DecodeSpec) -> None:
    if spec.mode not in DECODE_MODES:
        raise ValueError(f"DecodeSpec.mode must be one of {', '.join(DECODE_MODES)}, got {spec.mode!r}")
    if not spec.fps > 0 or not math.isfinite(spec.fps):
        raise ValueError(f"DecodeSpec.fps must be a positive number, got {spec.fps!r}")
    if int(spec.sample_rate) <= 0:
        raise ValueError(f"DecodeSpec.sample_rate must be positive, got {spec.sample_rate!r}")


def _thread_count(threads: int | None) -> int:
    if threads is None:
        raw = os.environ.get(THREADS_ENV, "").strip()
        try:
            threads = int(raw) if raw else 1
        except ValueError:
            raise ValueError(f"{THREADS_ENV} must be an integer, got {raw!r}") from None
    return max(0, int(threads))  # 0 lets FFmpeg pick one thread per core


def _one_line(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())


def _pick_stream(container, kind: str):
    """The default/best stream of ``kind``, ignoring cover art (attached pictures)."""
    cover = getattr(getattr(av.stream, "Disposition", None), "attached_pic", None)  # PyAV >= 13
    streams = [
        s
        for s in (container.streams.video if kind == "video" else container.streams.audio)
        if not (kind == "video" and cover is not None and s.disposition & cover)
    ]
    if not streams:
        return None
    best = container.streams.best(kind)
    return best if any(best is s for s in streams) else streams[0]


# A segment's decode starts this long before its start: audio packets may sit in the file
# before the video keyframe that a seek lands on.
_SEEK_MARGIN = 1.0


def _decode_container(container, spec: DecodeSpec, threads: int, start: float | None = None, end: float | None = None,
                      tuning: DecodeTuning = REFERENCE_TUNING) -> DecodedMedia:
    astream = _pick_stream(container, "audio")
    vstream = _pick_stream(container, "video")
    if astream is None:
        raise MediaError(Status.NO_AUDIO, "no audio stream")
    if vstream is None:
        raise MediaError(Status.NO_VIDEO, "no video stream (audio-only file)")
    for stream in (astream, vstream):
        if stream.codec_context is None:
            raise MediaError(Status.DECODE_ERROR, f"no decoder for the {stream.type} codec")
    if threads != 1:
        vstream.codec_context.thread_count = threads
        vstream.codec_context.thread_type = "AUTO"
    else:
        vstream.codec_context.thread_count = 1

    vcontext = vstream.codec_context
    keyframes = spec.mode == KEYFRAMES
    if keyframes:
        vcontext.skip_frame = "NONKEY"  # the decoder drops every other frame before decoding it
    # Exact mode: per packet, let the decoder drop the frame when it is a non-reference frame
    # that no target can fall on (see DecodeTuning.skip_unused).
    skipper = tuning.skip_unused and not keyframes and vcontext.name in _SKIP_CODECS
    skipping = False

    origin = _timeline_origin(container, astream, vstream)
    audio = _AudioCollector(int(spec.sample_rate), origin)
    video = _FrameSampler(spec, origin, vstream.time_base, start, end, tuning=tuning)
    a_index, v_index = astream.index, vstream.index
    if start:
        try:  # to the keyframe before; a file that cannot seek is decoded from its start
            container.seek(int((float(origin) + max(0.0, start - _SEEK_MARGIN)) * av.time_base), backward=True, any_frame=False)
        except (av.error.FFmpegError, OSError):
            pass
    packet = None
    try:
        for packet in container.demux(astream, vstream):
            index = packet.stream_index
            if index == v_index:
                video.saw_packet(packet)
                if skipper:
                    unused = video.unused(packet)
                    if unused != skipping:
                        vcontext.skip_frame = "NONREF" if unused else "DEFAULT"
                        skipping = unused
            for frame in packet.decode():
                if index == a_index:
                    audio.add(frame)
                elif index == v_index:
                    video.add(frame)
            if end is not None and video.done and audio.end_time() >= end:
                break  # both streams are past the segment
        packet = None
        audio.finish()
        video.finish()
    except (av.error.FFmpegError, OSError) as exc:
        where = ""
        if packet is not None:
            kind = "audio" if packet.stream_index == a_index else "video"
            where = f" in the {kind} stream"
            if packet.pts is not None and packet.time_base is not None:
                where += f" near {float(packet.pts * packet.time_base - origin):.2f} s"
        raise MediaError(Status.DECODE_ERROR, f"corrupt data{where}: {_one_line(exc)}") from None

    if audio.samples == 0:
        raise MediaError(Status.NO_AUDIO, "the audio stream decodes to no samples")
    if video.count == 0:
        raise MediaError(Status.NO_VIDEO, "the video stream decodes to no frames")
    audio_data, audio_start = audio.cut(start, end)
    duration = max(audio_start + len(audio_data) / spec.sample_rate, video.end_time())
    if end is not None:
        duration = min(duration, end)
    duration -= start or 0.0
    if not video.times or duration < 1.0 / spec.fps:
        raise MediaError(
            Status.TOO_SHORT, f"media covers {duration:.3f} s, less than one frame interval ({1.0 / spec.fps:.3g} s)"
        )
    if len(audio_data) < MIN_AUDIO_SAMPLES:
        raise MediaError(
            Status.TOO_SHORT, f"audio has {len(audio_data)} samples, fewer than the {MIN_AUDIO_SAMPLES} the audio model needs"
        )
    return DecodedMedia(
        audio=audio_data,
        audio_start=audio_start,
        frames=np.ascontiguousarray(np.stack(video.arrays)),
        frame_times=np.asarray(video.times, dtype=np.float64),
        duration=float(duration),
        width=int(video.width),
        height=int(video.height),
        source_sample_rate=int(astream.rate or audio.source_rate or 0),
    )


def _timeline_origin(container, astream, vstream) -> Fraction:
    """Timeline zero: the container's start time, else the earliest stream start."""
    if container.start_time is not None:
        return Fraction(container.start_time, av.time_base)
    starts = [
        s.start_time * s.time_base for s in (astream, vstream) if s.start_time is not None and s.time_base is not None
    ]
    return min(starts) if starts else Fraction(0)


class _AudioCollector:
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


class _SkipMiss(Exception):
    """A skipped frame may have been needed: decode the file again without skipping."""


class _FrameSampler:
    """Picks the frame on screen at each target time k / fps and converts only those.

    In keyframe mode it sees only keyframes (others are skipped by the decoder, and any that a
    decoder still returns are ignored here), and the video's end comes from the packets.
    """

    def __init__(self, spec: DecodeSpec, origin: Fraction, time_base, start: float | None = None, end: float | None = None,
                 *, tuning: DecodeTuning = REFERENCE_TUNING):
        self.spec = spec
        self.tuning = tuning
        self.keyframes = spec.mode == KEYFRAMES
        self.fps = float(spec.fps)
        self.end = end
        self.done = False  # a segment's end has been passed
        self.origin = origin
        self.time_base = time_base
        self.arrays: list[np.ndarray] = []
        self.times: list[float] = []
        self.count = 0  # frames decoded
        self.width: int | None = None
        self.height: int | None = None
        # Next target index: a segment's targets are the whole file's targets inside it.
        self._k = 0 if not start else math.ceil(start * self.fps - _EPS * self.fps)
        self._prev = None  # last displayable frame seen
        self._prev_time: float | None = None
        self._prev_duration: float | None = None  # its own duration, when the stream says
        self._gap: float | None = None  # the last interval between frames
        self._taken: float | None = None  # time of the last converted frame
        self._geometry: tuple[int, int] | None = None
        self._scaler = None  # one libswscale context for the file (DecodeTuning.reuse_scaler)
        self._scaler_threads = True  # False: this PyAV's reformat takes no ``threads``
        self._seen: list[float] = []  # sorted video packet times above the last frame's (skip rule)
        self._asked: list[float] = []  # sorted times of packets the decoder may have skipped
        self._asked_any = False
        self._skipped_last = False  # frames were skipped just before the last frame taken in
        self._no_skip = False  # timestamps this stream has make the skip rule unsafe
        self._packet_end: float | None = None  # end of the video from its packets (keyframe mode)
        self._last_packet: float | None = None

    def saw_packet(self, packet) -> None:
        """Keyframe mode: follow the video's end from its packets, since most frames are skipped."""
        if not self.keyframes or packet.pts is None:
            return
        time_base = packet.time_base or self.time_base
        t = float(packet.pts * time_base - self.origin)
        step = float(packet.duration * time_base) if packet.duration else None
        if step is None and self._last_packet is not None and t > self._last_packet:
            step = t - self._last_packet
        self._last_packet = t
        end = t + (step or 0.0)
        self._packet_end = end if self._packet_end is None else max(self._packet_end, end)

    def unused(self, packet) -> bool:
        """True when this packet's frame can serve no target, so the decoder may skip it if
        nothing references it.

        A frame at ``p`` serves the targets in [p, next frame's time). Once a packet at
        ``q > p`` has been seen, the next frame comes at or before ``q``, so no target in
        [p, q) proves the frame unused whatever packets follow. B-frames arrive after the
        frames around them, so ``q`` is usually the very next frame. Never before the first
        frame is out (targets before it take the first frame), nor at or past a segment's
        end, nor once a packet without a timestamp or a frame out of order has shown up.
        """
        if self._no_skip:
            return False
        if packet.pts is None:
            if packet.size:  # (the demuxer's final empty packet only flushes the decoder)
                self._no_skip = True  # frame times get guessed from their neighbours
            return False
        time_base = packet.time_base or self.time_base
        if time_base is None:
            return False
        p = float(packet.pts * time_base - self.origin)
        seen = self._seen
        i = bisect.bisect_right(seen, p)
        seen.insert(i, p)
        if self._prev_time is None or p <= self._prev_time or i + 1 >= len(seen):
            return False
        if self.end is not None and p >= self.end - _SKIP_MARGIN:
            return False
        if len(seen) > 512:  # times at or below the last frame's can never be a later q
            del seen[: bisect.bisect_right(seen, self._prev_time)]
            i = bisect.bisect_right(seen, p) - 1
        q = seen[i + 1]
        if self._target_in(p, q):
            return False
        bisect.insort(self._asked, p)
        self._asked_any = True
        return True

    def _target_in(self, low: float, high: float) -> bool:
        """Whether a target k / fps may lie in [low, high), with the skip rule's margin."""
        first = math.ceil((low - _SKIP_MARGIN) * self.fps)
        return first / self.fps < high + _SKIP_MARGIN

    def _check_skips(self, t: float | None) -> bool:
        """Verify the skips before a frame at ``t`` (None: no timestamp) comes in.

        The frames skipped between the previous frame and this one would have served the
        targets in [the first of them, t), had they been decoded; when one may lie there, or
        the frames stop coming in time order, raise ``_SkipMiss`` so that ``decode`` starts the
        file again without skipping. (Frames the decoder did not skip come out at their own
        time and are taken off the list.) Returns whether frames were skipped just before it.
        """
        if not self._asked_any:
            return False
        if t is None or (self._prev_time is not None and t <= self._prev_time):
            raise _SkipMiss
        n = bisect.bisect_right(self._asked, t)
        gone = self._asked[:n]
        del self._asked[:n]
        if gone and gone[-1] == t:
            gone.pop()  # a reference frame: decoded after all
        if gone and self._target_in(gone[0], t):
            raise _SkipMiss
        return bool(gone)

    def add(self, frame) -> None:
        if self.keyframes and not frame.key_frame:
            return  # a decoder that ignores skip_frame
        self.count += 1
        if self.width is None:
            self.width, self.height = frame.width, frame.height
        time_base = frame.time_base or self.time_base
        if frame.pts is not None and time_base is not None:
            t = float(frame.pts * time_base - self.origin)
            skipped = self._check_skips(t)
        elif self._asked_any:
            self._check_skips(None)  # raises: a time guessed from the previous frame may differ
        elif self._prev_time is not None:  # no timestamp: assume it follows the previous frame
            t = self._prev_time + (self._prev_duration or self._gap or 1.0 / self.fps)
            skipped = False
        else:
            t = 0.0
            skipped = False
        if self._prev_time is not None and t <= self._prev_time:
            self._no_skip = True  # the skip rule assumes frames come out in time order
            return  # out of order or duplicate timestamp: never on screen in timeline order
        if self.end is not None and t >= self.end - _EPS:
            if not self.done:  # the frame on screen at the segment's last targets is served
                self._serve_before(self.end, frame)
                self.done = True
            return
        self._serve_before(t, frame)
        if self._prev_time is not None:
            self._gap = t - self._prev_time
        self._prev, self._prev_time = frame, t
        self._skipped_last = skipped
        duration = getattr(frame, "duration", None)
        self._prev_duration = float(duration * time_base) if duration and time_base is not None else None

    def end_time(self) -> float:
        """End of the video on the timeline: last frame time plus one frame duration (in
        keyframe mode: the last packet's, since the frames seen are only the keyframes)."""
        if self._prev_time is None:
            return 0.0
        if self.keyframes and self._packet_end is not None:
            return max(self._prev_time, self._packet_end)
        return self._prev_time + (self._prev_duration or self._gap or 0.0)

    def finish(self) -> None:
        if self._asked or (self._skipped_last and self._prev_duration is None):
            # Skipped frames after the last one decoded, or between the last two when the end
            # comes from their interval: the end of the video may differ.
            raise _SkipMiss
        if self._prev is not None and not self.done:
            limit = self.end_time() if self.end is None else min(self.end_time(), self.end)
            self._serve_before(limit, None)
        self._prev = None

    def _serve_before(self, limit: float, first) -> None:
        """Serve every target before ``limit`` with the frame on screen then."""
        if self._k / self.fps >= limit - _EPS:
            return
        if self._prev is not None:
            self._take(self._prev, self._prev_time)
        elif first is not None:
            self._take(first, limit)
        # Jump straight past the served targets (a long timestamp jump costs nothing).
        k = max(self._k + 1, math.ceil((limit - _EPS) * self.fps))
        while k > self._k + 1 and (k - 1) / self.fps >= limit - _EPS:
            k -= 1
        while k / self.fps < limit - _EPS:
            k += 1
        self._k = k

    def _take(self, frame, t: float) -> None:
        if self._taken is not None and t <= self._taken:
            return
        if self._geometry is None:
            self._geometry = resize_geometry(frame.height, frame.width, self.spec)
        image = self._convert(frame).to_ndarray()
        if self.spec.crop is not None:
            image = center_crop(image, self.spec.crop)
        self.arrays.append(np.ascontiguousarray(image))
        self.times.append(t)
        self._taken = t

    def _convert(self, frame):
        """libswscale: straight from the decoder's format and size to RGB at the model geometry."""
        h, w = self._geometry
        options = {"width": w, "height": h, "format": "rgb24", "interpolation": "BICUBIC"}
        if self.tuning.scaler_threads and self._scaler_threads:
            options["threads"] = int(self.tuning.scaler_threads)
        if self.tuning.reuse_scaler:
            if self._scaler is None:
                self._scaler = VideoReformatter()
            convert = lambda **kw: self._scaler.reformat(frame, **kw)  # noqa: E731
        else:
            convert = frame.reformat
        try:
            return convert(**options)
        except TypeError:  # PyAV before ``threads``: FFmpeg's default
            if "threads" not in options:
                raise
            self._scaler_threads = False
            del options["threads"]
            return convert(**options)


@contextlib.contextmanager
def _open_checked(path: str):
    """Open a media container, or raise MediaError (missing, empty, unreadable; for URLs and tar
    members also the status of a failed read, such as ``access_denied`` or ``remote_timeout``).

    A local file is opened by path. A URL or a tar member is opened as a file object from
    ``sources.open_bytes``: PyAV reads it through range requests (or a window over the tar's
    bytes), and nothing is copied to disk.
    """
    from avfeat.extract import sources

    if sources.is_plain_local(path):
        try:
            status = os.stat(path)
        except OSError as exc:
            raise MediaError(Status.UNREADABLE, f"cannot read file: {_one_line(exc)}") from None
        if not stat.S_ISREG(status.st_mode):  # a FIFO would block the open until some writer came
            raise MediaError(Status.UNREADABLE, "not a regular file (a FIFO, socket or device)")
        size = status.st_size
        if size == 0:
            raise MediaError(Status.EMPTY_FILE, "file is empty (0 bytes)")
        try:
            container = av.open(path, metadata_errors="ignore")
        except (av.error.FFmpegError, OSError) as exc:
            raise MediaError(Status.UNREADABLE, f"not a readable media file: {_one_line(exc)}") from None
        with container:
            yield container
        return
    try:
        size = sources.stat(path).size
        source = sources.open_bytes(path) if size else None
    except OSError as exc:
        raise MediaError(sources.status_of(exc), _one_line(exc)) from None  # says what it could not read
    if not size:
        raise MediaError(Status.EMPTY_FILE, "file is empty (0 bytes)")
    try:
        try:
            container = av.open(source, metadata_errors="ignore")
        except (av.error.FFmpegError, OSError) as exc:
            raise MediaError(Status.UNREADABLE, f"not a readable media file: {_one_line(exc)}") from None
        with container:
            yield container
        if source.error is not None:  # PyAV dropped a failed read and stopped early
            raise MediaError(Status.DECODE_ERROR, f"reading failed: {_one_line(source.error)}")
    except MediaError:
        # PyAV saw a failed read as corrupt or unreadable data; say what really happened.
        if source.error is not None and sources.is_remote(path):
            raise MediaError(sources.status_of(source.error), _one_line(source.error)) from None
        raise
    finally:
        source.close()


def decode_audio(path: str | os.PathLike, sample_rate: int) -> tuple[np.ndarray, float]:
    """Only the audio of a file (wav, flac, mp3, or a video's sound track): mono float32 at
    ``sample_rate`` and the time of its first sample, decoded exactly as ``decode`` does.

    Audio-only queries have no picture, which ``decode`` would reject as ``no_video``.

    Raises:
        MediaError: ``unreadable``, ``empty_file``, ``no_audio``, ``decode_error`` or ``too_short``.
    """
    path = os.fspath(path)
    with _open_checked(path) as container:
        astream = _pick_stream(container, "audio")
        if astream is None:
            raise MediaError(Status.NO_AUDIO, "no audio stream")
        if astream.codec_context is None:
            raise MediaError(Status.DECODE_ERROR, "no decoder for the audio codec")
        audio = _AudioCollector(int(sample_rate), _timeline_origin(container, astream, astream))
        try:
            for packet in container.demux(astream):
                for frame in packet.decode():
                    audio.add(frame)
            audio.finish()
        except (av.error.FFmpegError, OSError) as exc:
            raise MediaError(Status.DECODE_ERROR, f"corrupt audio data: {_one_line(exc)}") from None
    data = audio.result()
    if len(data) < MIN_AUDIO_SAMPLES:
        raise MediaError(Status.TOO_SHORT, f"audio has {len(data)} samples, fewer than the {MIN_AUDIO_SAMPLES} the audio model needs")
    return data, audio.start_time()


def load_image(path: str | os.PathLike, spec: DecodeSpec) -> np.ndarray:
    """An image file (png, jpg, ...) as one (H, W, 3) uint8 RGB frame at the model geometry.

    Scaled by libswscale (bicubic) and centre-cropped exactly like decoded video frames, so an
    image and a video frame of the same picture give the same tokens.

    Raises:
        MediaError: ``unreadable`` when the file is missing, not an image, or too large to decode.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"))
    except Image.DecompressionBombError:  # the header claims more pixels than PIL will decode (a bomb)
        raise MediaError(Status.UNREADABLE, f"image too large to decode (over {2 * Image.MAX_IMAGE_PIXELS} pixels)") from None
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise MediaError(Status.UNREADABLE, f"not a readable image: {_one_line(exc)}") from None
    return to_model_geometry(rgb, spec)


def to_model_geometry(rgb: np.ndarray, spec: DecodeSpec) -> np.ndarray:
    """An (H, W, 3) uint8 RGB picture scaled by libswscale (bicubic) and centre-cropped to the
    geometry of ``spec``, as ``decode`` does with video frames."""
    h, w = resize_geometry(rgb.shape[0], rgb.shape[1], spec)
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    scaled = frame.reformat(width=w, height=h, format="rgb24", interpolation="BICUBIC").to_ndarray()
    return np.ascontiguousarray(center_crop(scaled, spec.crop) if spec.crop is not None else scaled)


def frame_at(path: str, time: float) -> np.ndarray | None:
    """The full-size RGB frame on screen at ``time`` seconds of the timeline (0 = the container's
    start, as in ``decode``), or None when the file cannot be decoded: for pictures of results."""
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            origin = (container.start_time or 0) / av.time_base
            container.seek(int((origin + max(0.0, time)) * av.time_base), backward=True)
            shown = None
            for frame in container.decode(stream):
                if frame.time is not None and frame.time - origin > time + 1e-6 and shown is not None:
                    break
                shown = frame
            return None if shown is None else shown.to_ndarray(format="rgb24")
    except (av.error.FFmpegError, OSError, IndexError):
        return None
