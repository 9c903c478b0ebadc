"""Video frames: which decoded frame serves each target time ``k / fps`` (exact or keyframe mode),
the rule that lets the decoder skip frames no target can fall on, and the libswscale conversion
of the chosen frames to the model geometry."""

from __future__ import annotations

import bisect
import math
from fractions import Fraction

import numpy as np
from av.video.reformatter import VideoReformatter

from avfeat.extract.media.geometry import center_crop, resize_geometry
from avfeat.extract.media.spec import KEYFRAMES, REFERENCE_TUNING, DecodeSpec, DecodeTuning

# Tolerance (seconds) when comparing frame timestamps with sampling targets.
_EPS = 1e-6
# Safety margin (seconds) of the skip rule: a frame this close to a target is always decoded.
_SKIP_MARGIN = 1e-4


class SkipMiss(Exception):
    """A skipped frame may have been needed: decode the file again without skipping."""


class FrameSampler:
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
        the frames stop coming in time order, raise ``SkipMiss`` so that ``decode`` starts the
        file again without skipping. (Frames the decoder did not skip come out at their own
        time and are taken off the list.) Returns whether frames were skipped just before it.
        """
        if not self._asked_any:
            return False
        if t is None or (self._prev_time is not None and t <= self._prev_time):
            raise SkipMiss
        n = bisect.bisect_right(self._asked, t)
        gone = self._asked[:n]
        del self._asked[:n]
        if gone and gone[-1] == t:
            gone.pop()  # a reference frame: decoded after all
        if gone and self._target_in(gone[0], t):
            raise SkipMiss
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
            raise SkipMiss
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
