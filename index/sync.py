"""Audio-visual offset of a video: score frames against shifted audio over a grid of lags.

Sign convention: a positive offset means the audio is late (the sound comes after the
picture): the sound of what frame ``t`` shows is heard at ``t + offset``.

Method. Lags run over every audio-token step (20 ms at 50 Hz) within ±``max_offset``. For a
frame at time t and a lag L, the score is the max-mean of that frame's projected patches
against the projected audio tokens in the span centred on t + L (the audio of the instant the
frame was sampled, shifted by L; one frame interval long, at most SPAN_SECONDS): for each audio
token the best patch cosine, averaged over the tokens. The (frame × audio token) best-patch cosines are double-centred before they are
averaged: each frame's mean over a band of ±2·max_offset of audio around it, and each audio
token's mean over the frames whose band holds it, are subtracted (the grand mean added back),
so frames that match everything well, and sounds that match every picture, do not tilt the
curve; what is left is the interaction of picture and sound that alignment is about. The curve
is the sum, over the frames that can take each lag, of their centred scores, divided by the
most frames any lag has: a frame whose shifted audio falls outside the track counts as no
evidence (0, what a centred score is worth when nothing aligns) instead of leaving the lag to
fewer frames. A mean over fewer frames is noisier, so with it the lags that only part of the
frames can take (a track shorter than its pictures, as a remuxed copy is) won on noise: with
the synthetic events of one class recurring every second or so, copies put back in sync by
``remux_shifted`` came out one event period away. The offset is the curve's argmax, refined
by a parabola through it and its two neighbours.

Confidence: ``(peak − runner-up) / (peak − median)``, clipped to [0, 1], where the runner-up
is the best score more than one frame interval from the peak: 1 when nothing else comes near
the peak, 0 when another lag scores as well.

Only a band of ±2·max_offset of audio around each frame is ever compared with it, in chunks of
frames, and a cached video is read CHUNK_SECONDS of frames at a time (with the audio their bands
reach), so what stays in memory is a few numbers per frame: an hour costs well under 1 GB.

Many videos (``sync_files``, ``sync_cache``) share one load of the backbones and heads; a video
that fails is a row with its error, not the end of the run. ``remux_shifted`` repairs a video by
moving its audio packets in time (stream copy: no picture is decoded or encoded).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from avfeat.core.io import check_output_suffix, replace_durably, temp_path, write_output_file
from avfeat.core.values import one_line
from avfeat.data.records import nearest_index, nearest_indices, token_count
from avfeat.core.errors import AvfeatError, InputError, QueryError
from avfeat.index.vectors import heads_device, project_audio, project_visual

DEFAULT_MAX_OFFSET = 2.0
TABLE_SUFFIXES = (".csv", ".parquet", ".jsonl")  # what ``--out`` writes, by the file's suffix
# The band each frame is centred over, in multiples of max_offset (see sync_curve).
CENTRE_REACH = 2
# The audio a frame is compared with, at most: a frame shows one instant, and the second of
# sound around it at 1 fps averages away the onsets that place an offset. With heads trained on
# a 1 fps cache (80 synthetic videos, no options), 20 videos of 10 s offset in [-1, 1] s were
# synced within 0.2 s: 0.50 with a 1 s span, 0.75 with 0.5 s, 0.90 with 0.2 s and 0.1 s; on a
# second corpus 0.65 with 1 s and 0.2 s alike, the median error 0.17 s → 0.12 s.
SPAN_SECONDS = 0.2
# Frames are scored this many seconds at a time, with the audio their bands reach, so an
# hour-long cached video is never held whole (``_best_patches``).
CHUNK_SECONDS = 60.0


@dataclass
class SyncResult:
    offset: float | None  # seconds, positive = audio late; None when the sound is silent
    confidence: float  # in [0, 1]
    lags: np.ndarray  # (L,) seconds
    curve: np.ndarray  # (L,) score at each lag
    silent: bool = False  # the sound is below SILENT_DB: no offset, confidence 0

    def to_dict(self) -> dict:
        if self.silent:
            return {"offset": None, "confidence": 0.0, "silent": True}
        return {"offset": round(float(self.offset), 4), "confidence": round(float(self.confidence), 4)}


def silent_result(level: float | None) -> SyncResult | None:
    """The result for a sound below ``SILENT_DB`` dBFS (None: not silent, or level unknown).
    The tokens cannot tell silence (HuBERT normalises it into noise), so its curve would still
    have a peak, and a confident offset for nothing to hear is wrong."""
    from avfeat.extract.tasks import SILENT_DB

    if level is None or not level < SILENT_DB:
        return None
    return SyncResult(None, 0.0, np.zeros(0), np.zeros(0), silent=True)


def sync_curve(
    heads, audio_tokens: np.ndarray, audio_start: float, audio_rate: float, visual_tokens: np.ndarray,
    frame_times: np.ndarray, fps: float, max_offset: float = DEFAULT_MAX_OFFSET, chunk: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """(lags, curve) of raw backbone tokens, per the module docstring."""
    lags, scores, valid = frame_scores(heads, audio_tokens, audio_start, audio_rate, visual_tokens, frame_times, fps, max_offset, chunk)
    return lags, lag_curve(scores, valid)


def lag_curve(scores: torch.Tensor, valid: torch.Tensor) -> np.ndarray:
    """The curve: at each lag, the centred scores of the frames that can take it, summed and
    divided by the most frames any lag has (see the module docstring)."""
    sums = (scores * valid).sum(dim=0)
    counts = valid.sum(dim=0).double()
    if counts.max() == 0:
        raise QueryError("the video is too short to compare its audio and frames")
    return torch.where(counts > 0, sums / counts.max(), torch.tensor(float("-inf"), dtype=torch.float64)).numpy()


@torch.no_grad()
def frame_scores(
    heads, audio_tokens: np.ndarray, audio_start: float, audio_rate: float, visual_tokens: np.ndarray,
    frame_times: np.ndarray, fps: float, max_offset: float = DEFAULT_MAX_OFFSET, chunk: int = 64, projected: bool = False,
) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """(lags, scores (F, L), valid (F, L)): each frame's centred score at each lag, and whether
    the frame can take that lag (its shifted span of audio lies inside the track). With
    ``projected``, the tokens are the heads' outputs already (the audit pairs each video's
    sound with several videos' pictures and projects each once)."""
    total = len(audio_tokens)
    reach = nearest_index(max_offset, audio_rate)
    span = token_count(min(1.0 / fps, SPAN_SECONDS), audio_rate)
    lags = np.arange(-reach, reach + 1) / audio_rate
    # The band of token positions around each frame; a frame stands for the instant it was
    # sampled, so its span of audio is centred on it. The band reaches ``CENTRE_REACH`` times
    # further than the lags, for the centring (see the module docstring).
    wide = reach * CENTRE_REACH
    steps = torch.arange(-wide, wide + span) - span // 2
    bases = torch.as_tensor(nearest_indices(np.asarray(frame_times) - audio_start, audio_rate))
    if total == 0 or len(visual_tokens) == 0:
        raise QueryError("the video is too short to compare its audio and frames")
    # Filled in place: small per-chunk results kept between each chunk's large temporaries
    # would pin the allocator's freed memory, and resident memory would grow with the video.
    best = torch.empty(len(visual_tokens), len(steps), dtype=torch.float64)
    for begin, part in _best_patches(heads, audio_tokens, visual_tokens, bases, steps, fps, chunk, projected):
        best[begin : begin + len(part)] = part
    positions = bases[:, None] + steps
    inside = (positions >= 0) & (positions < total)
    token = positions.clamp(0, total - 1)
    # Double centring: remove each frame's mean (frames that match everything) and each audio
    # token's mean over the frames that see it (sounds that match every picture), keeping the
    # frame × token interaction that alignment is about.
    n_inside = inside.sum(dim=1).clamp(min=1)
    row = (best * inside).sum(dim=1) / n_inside
    col_sum = torch.zeros(total, dtype=torch.float64).index_add_(0, token[inside], best[inside])
    col_n = torch.zeros(total, dtype=torch.float64).index_add_(0, token[inside], torch.ones_like(best[inside]))
    col = col_sum / col_n.clamp(min=1)
    grand = best[inside].mean()
    centred = (best - row[:, None] - col[token] + grand) * inside
    inner = slice(wide - reach, wide + reach + span)  # the band positions the lags use
    centred, positions = centred[:, inner], positions[:, inner]
    sums_in_band = torch.nn.functional.pad(centred.cumsum(dim=1), (1, 0))
    scores = (sums_in_band[:, span:] - sums_in_band[:, :-span]) / span  # (F, lags): mean of span tokens
    first = positions[:, : len(lags)]
    valid = (first >= 0) & (first + span <= total)
    return lags, scores, valid


def _best_patches(heads, audio_tokens, visual_tokens, bases: torch.Tensor, steps: torch.Tensor, fps: float, chunk: int,
                  projected: bool) -> Iterator[tuple[int, torch.Tensor]]:
    """Each frame's best-patch cosine with each audio token of its band: (first frame, (c, band))
    per chunk of frames. The video is walked CHUNK_SECONDS of frames at a time, each with the span of audio
    its frames' bands reach (read and projected per time chunk): memory holds one time chunk
    of tokens, not the video (``audio_tokens`` and ``visual_tokens`` may be cache views)."""
    total = len(audio_tokens)
    device = heads_device(heads)  # the products run where the heads are (a GPU when present)
    per_chunk = max(1, int(round(CHUNK_SECONDS * fps)))
    for start in range(0, len(visual_tokens), per_chunk):
        stop = min(start + per_chunk, len(visual_tokens))
        tokens = (bases[start:stop, None] + steps).clamp(0, total - 1)
        low, high = int(tokens.min()), int(tokens.max()) + 1
        raw = audio_tokens[low:high]
        audio = (torch.as_tensor(raw) if projected else project_audio(heads, raw)).to(device)
        for begin in range(start, stop, chunk):
            frames = visual_tokens[begin : min(begin + chunk, stop)]
            patches = (torch.as_tensor(frames) if projected else project_visual(heads, frames))[:, 1:].to(device)  # (c, P, D)
            band = audio[(tokens[begin - start : begin - start + len(frames)] - low).to(device)]  # (c, band, D)
            yield begin, torch.einsum("cld,cpd->clp", band, patches).amax(dim=-1)  # best patch per token


def estimate(lags: np.ndarray, curve: np.ndarray, fps: float) -> SyncResult:
    """Offset (argmax, parabola-refined) and confidence of a curve; see the module docstring."""
    finite = np.isfinite(curve)
    peak = int(np.argmax(np.where(finite, curve, -np.inf)))
    offset = float(lags[peak])
    if 0 < peak < len(curve) - 1 and finite[peak - 1] and finite[peak + 1]:
        left, mid, right = curve[peak - 1 : peak + 2]
        bend = left - 2 * mid + right
        if bend < 0:
            offset += float(np.clip(0.5 * (left - right) / bend, -0.5, 0.5) * (lags[1] - lags[0]))
    values = curve[finite]
    far = finite & (np.abs(lags - lags[peak]) > 1.0 / fps)
    median = float(np.median(values))
    spread = float(curve[peak]) - median
    if not far.any() or spread <= 0:
        confidence = 0.0
    else:
        confidence = float(np.clip((curve[peak] - curve[far].max()) / spread, 0.0, 1.0))
    return SyncResult(offset, confidence, lags, curve)


def sync_tokens(heads, audio_tokens, audio_start, audio_rate, visual_tokens, frame_times, fps, max_offset=DEFAULT_MAX_OFFSET) -> SyncResult:
    if not (math.isfinite(max_offset) and max_offset > 0):
        raise QueryError(f"--max-offset must be a finite positive number of seconds (got {max_offset})")
    lags, curve = sync_curve(heads, audio_tokens, audio_start, audio_rate, visual_tokens, frame_times, fps, max_offset)
    return estimate(lags, curve, fps)


def sync_cached(cache, video_id: str, heads, max_offset: float = DEFAULT_MAX_OFFSET) -> SyncResult:
    """Offset of a video whose tokens are in ``cache`` (no decoding, no backbones)."""
    record = cache.ok_record(video_id)
    silent = silent_result(record.audio_level)
    if silent is not None:
        return silent
    return sync_tokens(
        heads, cache.audio_view(record), record.audio_start, record.audio_rate, cache.frame_view(record),
        cache.frame_times(record), record.fps, max_offset,
    )


def sync_file(path: str | os.PathLike, checkpoint, max_offset: float = DEFAULT_MAX_OFFSET, device: str = "cpu", backbones=None) -> SyncResult:
    """Offset of any video file, embedded with the backbones the heads were trained on."""
    from avfeat.index.query import Backbones

    backbones = backbones or Backbones(checkpoint.config.cache, device=device)
    tokens = backbones.encode(path)
    if tokens.audio is None or tokens.visual is None:
        raise QueryError(f"{path} needs both sound and picture to be synchronised")
    silent = silent_result(tokens.audio_level)
    if silent is not None:
        return silent
    return sync_tokens(
        checkpoint.heads.eval(), tokens.audio, tokens.audio_start, tokens.audio_rate, tokens.visual, tokens.frame_times,
        float(checkpoint.config.cache.fps), max_offset,
    )


def plot_curve(result: SyncResult, path: str | os.PathLike, title: str = "") -> None:
    """Save the score over lags with the estimated offset marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 3.2), dpi=100)
    finite = np.isfinite(result.curve)
    axis.plot(result.lags[finite], result.curve[finite], lw=1.2)
    if result.silent:
        axis.text(0.5, 0.5, "silent: no offset", transform=axis.transAxes, ha="center", va="center")
    else:
        axis.axvline(result.offset, color="tab:red", ls="--", lw=1, label=f"offset {result.offset:+.3f} s (confidence {result.confidence:.2f})")
        axis.legend(loc="lower right", fontsize=8)
    axis.set_xlabel("lag (s), positive = audio late")
    axis.set_ylabel("centred score")
    axis.set_title(title or "audio-visual sync")
    figure.tight_layout()
    # Through a buffer: exactly ``path`` (savefig would add ".png" to a name without a suffix),
    # written atomically, and an unusable path is one line. The suffix picks the format (png
    # when matplotlib cannot write it).
    suffix = os.path.splitext(os.fspath(path))[1][1:].lower()
    buffer = io.BytesIO()
    figure.savefig(buffer, format=suffix if suffix in figure.canvas.get_supported_filetypes() else "png")
    plt.close(figure)
    write_output_file(path, buffer.getvalue())


# ---- many videos ---------------------------------------------------------------------------


def direction(offset: float | None) -> str:
    """The words for an offset's sign, as the CLI prints them ("silent": no offset)."""
    if offset is None:
        return "silent"
    return "audio late" if offset > 0 else "audio early" if offset < 0 else "in sync"


@dataclass
class SyncRow:
    """One video's line of a many-video run: its estimate, or why there is none."""

    video: str  # the path given (or listed), or the cached video's source path
    video_id: str | None = None  # cache mode only
    result: SyncResult | None = None
    error: str | None = None

    def to_dict(self, with_id: bool = False) -> dict:
        """The JSON Lines object; ``error`` only on a failed row, ``video_id`` with ``with_id``."""
        row = {"video": self.video}
        if with_id:
            row["video_id"] = self.video_id
        row.update(self.result.to_dict() if self.result else {"offset": None, "confidence": None})
        if self.error is not None:
            row["error"] = self.error
        return row


def list_videos(arguments: Iterable[str | os.PathLike]) -> list[Path]:
    """The files VIDEO arguments name: a folder (or a quoted glob) is expanded as `avfeat
    extract` lists one (media files, recursively, sorted); anything else is kept as given, so a
    missing file becomes a failed row rather than stopping the others. Duplicates are dropped.

    Raises:
        InputError: a folder or glob holds no media file.
    """
    from avfeat.extract.inputs import list_inputs

    paths: dict[str, Path] = {}
    for argument in arguments:
        path = Path(argument)
        pattern = not path.exists() and any(char in str(argument) for char in "*?[")
        found = [Path(item.path) for item in list_inputs(str(argument))] if path.is_dir() or pattern else [path]
        for item in found:
            paths.setdefault(os.path.realpath(item), item)
    return list(paths.values())


def sync_files(paths: Iterable[str | os.PathLike], checkpoint, max_offset: float = DEFAULT_MAX_OFFSET,
               device: str = "cpu") -> Iterator[SyncRow]:
    """A row per video file, all embedded with one load of the heads' backbones."""
    from avfeat.index.query import Backbones

    backbones = Backbones(checkpoint.config.cache, device=device)  # loaded on the first file, once
    for path in paths:
        try:
            yield SyncRow(str(path), result=sync_file(path, checkpoint, max_offset, device, backbones=backbones))
        except AvfeatError as error:  # no audio, unreadable, too short: that video's row, not the run's end
            yield SyncRow(str(path), error=one_line(error))


def sync_cache(cache, checkpoint, max_offset: float = DEFAULT_MAX_OFFSET) -> Iterator[SyncRow]:
    """A row per video of ``cache`` with tokens, from its cached tokens (no decoding, no
    backbones). The caller checks that the cache is the heads' (``checkpoint.check_cache``)."""
    heads = checkpoint.heads.eval()
    for record in cache.records(status="ok"):
        try:
            yield SyncRow(record.path, record.video_id, result=sync_cached(cache, record.video_id, heads, max_offset))
        except AvfeatError as error:
            yield SyncRow(record.path, record.video_id, error=one_line(error))


def check_table_path(path: str | os.PathLike) -> None:
    """Refuse an ``--out`` suffix that names no table format (before any work is done)."""
    check_output_suffix(path, "--out", TABLE_SUFFIXES, "the suffix picks the table's format")


def write_table(rows: list[SyncRow], path: str | os.PathLike, with_id: bool = False) -> None:
    """Write the rows as CSV, Parquet or JSON Lines (by ``path``'s suffix), atomically. Every
    row has every column (offset, confidence and error empty where they do not apply), so the
    file reads as one table."""
    columns = ["video", *(["video_id"] if with_id else []), "offset", "confidence", "error"]
    records = [{name: {"error": None, **row.to_dict(with_id)}[name] for name in columns} for row in rows]
    suffix = Path(path).suffix.lower()
    check_table_path(path)
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        types = {"offset": pa.float64(), "confidence": pa.float64()}
        schema = pa.schema([(name, types.get(name, pa.string())) for name in columns])
        buffer = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(records, schema=schema), buffer)
        data = buffer.getvalue().to_pybytes()
    elif suffix == ".csv":
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        data = text.getvalue().encode()
    else:
        data = "".join(json.dumps(record) + "\n" for record in records).encode()
    write_output_file(path, data)


# ---- repair --------------------------------------------------------------------------------


@contextmanager
def _open_streams(source: Path):
    """``(reader, video, audio)`` of ``source``, open for the ``with`` block.

    Raises:
        QueryError: ``source`` cannot be read or lacks an audio or a video stream.
    """
    import av

    try:
        reader = av.open(str(source))
    except (av.error.FFmpegError, OSError) as error:
        raise QueryError(f"cannot read {source}: {one_line(error)}") from None
    with reader:
        video, audio = reader.streams.best("video"), reader.streams.best("audio")
        if video is None or audio is None:
            raise QueryError(f"{source} has no {'video' if video is None else 'audio'} stream; there is nothing to put in sync")
        yield reader, video, audio


def check_remux_target(source: str | os.PathLike, out: str | os.PathLike) -> None:
    """Refuse, before any model loads, an ``out`` whose container (chosen by its suffix) cannot
    hold ``source``'s streams: the header of an empty copy is written to a temp file and removed.

    Raises:
        InputError: no container for the suffix, or one that cannot hold the codecs.
        QueryError: ``source`` cannot be read or lacks an audio or a video stream.
    """
    import av

    source, out = Path(source), Path(out)
    tmp = temp_path(out, keep_suffix=True)
    try:
        with _open_streams(source) as (_, video, audio):
            with av.open(str(tmp), mode="w") as writer:
                writer.add_stream_from_template(video)
                writer.add_stream_from_template(audio)
    except (av.error.FFmpegError, ValueError, OSError) as error:
        raise InputError(f"--fix {out}: cannot write a {out.suffix or 'suffix-less'} file holding the streams of {source}: "
                         f"{one_line(error)} (use the input's suffix, e.g. {source.suffix or '.mp4'})") from None
    finally:
        tmp.unlink(missing_ok=True)


def remux_shifted(source: str | os.PathLike, out: str | os.PathLike, offset: float) -> None:
    """Write a copy of ``source`` to ``out`` whose audio is moved by ``-offset`` seconds, so that
    a video whose audio is ``offset`` late (this module's sign) comes out in sync.

    Both streams are copied packet by packet: the video packets are written untouched (no
    picture is decoded or re-encoded), the audio packets keep their bytes and only their
    timestamps move (rounded to the audio time base). Audio packets that would start before
    the audio stream did (before 0, or before an AAC encoder's priming packet) are dropped;
    other streams (subtitles, data, cover art) are left out. The container is chosen from
    ``out``'s suffix. ``out`` is written through a temp file beside it and renamed: it is
    replaced whole or left as it was. Callers decide whether an existing ``out`` may be
    replaced; ``out`` naming ``source`` itself is always refused.

    Raises:
        InputError: ``out`` is ``source``, ``offset`` is not finite, or the copy cannot be
            written (a container that cannot hold the codecs, a full disk...).
        QueryError: ``source`` cannot be read or lacks an audio or a video stream.
    """
    import av

    source, out = Path(source), Path(out)
    if not math.isfinite(offset):
        raise InputError(f"cannot shift the audio of {source} by {offset} s")
    if os.path.realpath(source) == os.path.realpath(out):
        raise InputError(f"{out} is the input video itself; write the repaired copy to another file")
    # The temp name keeps out's suffix: FFmpeg picks the container from it.
    tmp = temp_path(out, keep_suffix=True)
    try:
        with _open_streams(source) as (reader, video, audio):
            shift = round(Fraction(offset).limit_denominator(10**9) / audio.time_base)  # in audio time-base units
            try:
                with av.open(str(tmp), mode="w") as writer:
                    copies = {video: writer.add_stream_from_template(video), audio: writer.add_stream_from_template(audio)}
                    first = None  # where the audio stream starts (0, or an AAC priming packet before it)
                    for packet in reader.demux(video, audio):
                        if packet.dts is None:  # the demuxer's empty flush packets
                            continue
                        if packet.stream is audio:
                            start = packet.dts if packet.pts is None else packet.pts
                            first = min(start, 0) if first is None else first
                            if start - shift < first:
                                continue
                            packet.dts -= shift
                            if packet.pts is not None:
                                packet.pts -= shift
                        packet.stream = copies[packet.stream]
                        writer.mux(packet)
            except (av.error.FFmpegError, ValueError) as error:
                raise InputError(f"cannot write the repaired copy {out}: {one_line(error)}") from None
        replace_durably(tmp, out)
    except OSError as error:
        raise InputError(f"cannot write the repaired copy {out}: {one_line(error)}") from None
    finally:
        tmp.unlink(missing_ok=True)
