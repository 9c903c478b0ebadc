"""``decode``: one demux pass over a container's audio and video streams, from its start or from a
seek before a segment, into mono audio at the model rate and frames sampled by timestamp."""

from __future__ import annotations

import os
from dataclasses import replace

import av
import numpy as np

from avfeat.data.records import Status
from avfeat.extract.media.audio import MIN_AUDIO_SAMPLES, AudioCollector
from avfeat.extract.media.containers import one_line, open_checked, pick_stream, timeline_origin
from avfeat.extract.media.frames import FrameSampler, SkipMiss
from avfeat.extract.media.spec import KEYFRAMES, REFERENCE_TUNING, SKIP_CODECS, DecodedMedia, DecodeSpec, DecodeTuning, MediaError, check_spec

# Video decoder threads per process when ``decode(threads=None)``; decoding usually runs in
# several worker processes at once, so the default is one thread each.
THREADS_ENV = "AVFEAT_DECODE_THREADS"


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
    check_spec(spec)
    tuning = tuning or DecodeTuning()
    threads = _thread_count(threads)
    try:
        with open_checked(os.fspath(path)) as container:
            return _decode_container(container, spec, threads, start, end, tuning)
    except SkipMiss:  # rare (timestamps out of order, frames that decode to nothing): no skipping
        pass
    with open_checked(os.fspath(path)) as container:
        return _decode_container(container, spec, threads, start, end, replace(tuning, skip_unused=False))


def _thread_count(threads: int | None) -> int:
    if threads is None:
        raw = os.environ.get(THREADS_ENV, "").strip()
        try:
            threads = int(raw) if raw else 1
        except ValueError:
            raise ValueError(f"{THREADS_ENV} must be an integer, got {raw!r}") from None
    return max(0, int(threads))  # 0 lets FFmpeg pick one thread per core


# A segment's decode starts this long before its start: audio packets may sit in the file
# before the video keyframe that a seek lands on.
_SEEK_MARGIN = 1.0


def _decode_container(container, spec: DecodeSpec, threads: int, start: float | None = None, end: float | None = None,
                      tuning: DecodeTuning = REFERENCE_TUNING) -> DecodedMedia:
    astream, vstream = _open_streams(container, threads, keyframes=spec.mode == KEYFRAMES)
    origin = timeline_origin(container, astream, vstream)
    audio = AudioCollector(int(spec.sample_rate), origin)
    video = FrameSampler(spec, origin, vstream.time_base, start, end, tuning=tuning)
    if start:
        try:  # to the keyframe before; a file that cannot seek is decoded from its start
            container.seek(int((float(origin) + max(0.0, start - _SEEK_MARGIN)) * av.time_base), backward=True, any_frame=False)
        except (av.error.FFmpegError, OSError):
            pass
    _demux(container, astream, vstream, audio, video, end, spec, tuning, origin)
    return _result(astream, audio, video, spec, start, end)


def _open_streams(container, threads: int, keyframes: bool):
    """The audio and video streams to decode, with the video decoder's threads set (and, in
    keyframe mode, told to drop every frame but keyframes before decoding them)."""
    astream = pick_stream(container, "audio")
    vstream = pick_stream(container, "video")
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
    if keyframes:
        vstream.codec_context.skip_frame = "NONKEY"
    return astream, vstream


def _demux(container, astream, vstream, audio: AudioCollector, video: FrameSampler, end: float | None,
           spec: DecodeSpec, tuning: DecodeTuning, origin) -> None:
    """The one pass over both streams' packets, until their end or until both pass ``end``;
    an error raised by the demuxer or a decoder fails the file with ``decode_error``."""
    vcontext = vstream.codec_context
    keyframes = spec.mode == KEYFRAMES  # (the decoder drops every other frame, see _open_streams)
    # Exact mode: per packet, let the decoder drop the frame when it is a non-reference frame
    # that no target can fall on (see DecodeTuning.skip_unused).
    skipper = tuning.skip_unused and not keyframes and vcontext.name in SKIP_CODECS
    skipping = False
    a_index, v_index = astream.index, vstream.index
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
        raise MediaError(Status.DECODE_ERROR, f"corrupt data{where}: {one_line(exc)}") from None


def _result(astream, audio: AudioCollector, video: FrameSampler, spec: DecodeSpec, start: float | None,
            end: float | None) -> DecodedMedia:
    """What the streams gave, cut to the segment, or the ``MediaError`` that says why it is unusable."""
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
