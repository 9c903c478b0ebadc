"""Synthetic audio-visual corpus with known ground truth: ``make_corpus`` (and ``write_corpus``
for `avfeat synth`), its argument checks, and ``cut_clip``.

Each video comes from ``synth_video.make_video`` (one class's object drawn where and when its
sound plays) and is written by ``synth_media.write_media`` as a real H.264/AAC file, so every
test and the demo exercise the same decoding path as users' videos.

Ground truth (``ground_truth.parquet``, one row per video): ``path`` (file name), ``class`` (int),
``class_name`` (str), ``offset`` (float s), ``event_starts`` / ``event_ends`` (list<float> s,
visual events on the file's timeline, multiples of 1/fps; the object is visible in frames whose
time t satisfies start <= t < end), ``boxes`` (list of [x0, y0, x1, y1] int pixels per event,
x1/y1 exclusive), ``width``, ``height``, ``duration`` (s), ``fps``, ``sample_rate``, and the
audio defects (always present, so the schema does not depend on ``corrupt``): ``defect`` (str:
"" for a clean video, else one of ``DEFECTS``), ``defect_source`` (str: for ``swap`` the donor's
file name, else ""), ``defect_offset`` (float s: the shift an ``offset`` defect injected, else
0.0).

Defects (``make_corpus(corrupt=...)``), for measuring audit tools against ground truth:

- ``swap``: the clean soundtrack of a video of another class (a clean one when there is one, so
  the donor's file holds exactly that track);
- ``overlay``: a melody of tones of foreign pitches (none of the classes' sounds), changing
  every 0.3-0.8 s, at 1.5-2x the class sound's RMS, added over the whole original track;
- ``silence``: the track replaced by noise at about 1e-4 (the pictures stay);
- ``offset``: the audio shifted by a further 0.4-2.0 s of random sign; ``offset`` then holds the
  total shift and ``event_starts`` / ``event_ends`` stay the visual events.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from avfeat.core.errors import InputError
from avfeat.data.synth_media import write_media
from avfeat.data.synth_video import MAX_CLASSES, make_video, min_seconds, overlay


GROUND_TRUTH = "ground_truth.parquet"

#: Audio defects ``make_corpus(corrupt=...)`` injects; the names are a contract (ground-truth
#: column ``defect``, audit tools).
DEFECTS = ("swap", "overlay", "silence", "offset")
#: Range (s) of the magnitude of an ``offset`` defect's shift.
DEFECT_SHIFT_MIN, DEFECT_SHIFT_MAX = 0.4, 2.0


def _defect_plan(seed: int, labels: np.ndarray, corrupt: float, sample_rate: int) -> list[dict]:
    """Per video: ``defect`` ("" or a DEFECTS name), ``donor`` (index, for swap), ``shift`` (s).

    Drawn from a stream of its own, so that adding defects changes no other draw: with
    ``corrupt=0`` the corpus is exactly what it was before defects existed, and with defects
    the clean videos are the same files.
    """
    videos = len(labels)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xBAD]))
    plan = [{"defect": "", "donor": None, "shift": 0.0} for _ in range(videos)]
    chosen = [int(i) for i in rng.permutation(videos)[: int(round(corrupt * videos))]]
    for j, i in enumerate(chosen):  # round-robin over the types: balanced
        plan[i]["defect"] = DEFECTS[j % len(DEFECTS)]
    for i in chosen:
        if plan[i]["defect"] == "swap":
            # prefer a clean donor: then the donor's file holds exactly the swapped-in track
            others = [d for d in range(videos) if labels[d] != labels[i]]
            clean = [d for d in others if not plan[d]["defect"]]
            plan[i]["donor"] = int(rng.choice(clean or others))
        elif plan[i]["defect"] == "offset":
            shift = rng.uniform(DEFECT_SHIFT_MIN, DEFECT_SHIFT_MAX) * rng.choice([-1.0, 1.0])
            plan[i]["shift"] = round(shift * sample_rate) / sample_rate
    return plan


@dataclass(frozen=True)
class _Plan:
    """Every draw of a corpus taken before its videos are made: each video's class, offset and
    random stream, and its defect; and the geometry all its videos share."""

    seed: int
    labels: np.ndarray
    offsets: np.ndarray
    video_seeds: list
    defects: list[dict]
    seconds: float
    size: int
    fps: float
    sample_rate: int

    @classmethod
    def draw(cls, seed: int, videos: int, classes: int, offset: float, corrupt: float, **geometry) -> _Plan:
        children = np.random.SeedSequence([int(seed), 0x5EED]).spawn(videos + 1)
        plan_rng = np.random.default_rng(children[0])
        labels = plan_rng.permutation(np.arange(videos) % classes)
        offsets = plan_rng.uniform(-offset, offset, size=videos) if offset > 0 else np.zeros(videos)
        defects = _defect_plan(seed, labels, corrupt, geometry["sample_rate"])
        return cls(seed, labels, offsets, children[1:], defects, **geometry)

    def video(self, i: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray, dict]:
        """``make_video`` of video ``i`` from its own seed, its audio ``shift`` s further late."""
        rng = np.random.default_rng(self.video_seeds[i])
        return make_video(
            rng, int(self.labels[i]), seconds=self.seconds, offset=float(self.offsets[i]) + shift, size=self.size,
            fps=self.fps, sample_rate=self.sample_rate,
        )

    def corpus_video(self, i: int) -> tuple[np.ndarray, np.ndarray, dict]:
        """Frames, audio (its defect injected) and ground-truth row of video ``i``."""
        defect, donor, shift = self.defects[i]["defect"], self.defects[i]["donor"], self.defects[i]["shift"]
        frames, audio, truth = self.video(i, shift)  # make_video keeps shifted events inside the file
        defect_rng = np.random.default_rng(np.random.SeedSequence([int(self.seed), 0xBAD, i]))
        if defect == "swap":
            audio = self.video(donor)[1]  # the donor's clean track, regenerated from its own seed
        elif defect == "overlay":
            audio = np.clip(audio + overlay(defect_rng, len(audio), self.sample_rate), -1.0, 1.0)
        elif defect == "silence":
            audio = (1e-4 * defect_rng.standard_normal(len(audio))).astype(np.float32)
        row = {
            "path": f"video_{i:05d}.mp4", **truth, "defect": defect,
            "defect_source": f"video_{donor:05d}.mp4" if defect == "swap" else "",
            "defect_offset": float(shift),
        }
        return frames, audio, row


def make_corpus(
    out_dir: str | Path,
    videos: int = 40,
    seconds: float = 6.0,
    classes: int = 10,
    seed: int = 0,
    offset: float = 0.0,
    size: int = 224,
    fps: float = 25.0,
    sample_rate: int = 16000,
    progress=None,
    corrupt: float = 0.0,
):
    """Write a synthetic audio-visual corpus and return its ground truth as a pyarrow Table.

    Writes ``videos`` MP4 files (H.264 + AAC) named ``video_00000.mp4``... into ``out_dir`` and
    the ground truth to ``out_dir/ground_truth.parquet`` (one row per video; its columns: see the
    module's docstring).

    Each class (``synth_video.class_info``) pairs a visual object (shape x colour) with a sound
    (timbre x pitch). Classes are assigned round-robin and shuffled, so they are balanced. Each
    video has 2-5 events (fewer only when the file is too short) of 0.4-1.5 s separated by at
    least 0.3 s of low background noise; during an event the object is drawn at a random
    position and size on a per-video background, and its sound plays.

    Offsets: when ``offset > 0`` each video gets its own offset drawn uniformly from
    ``[-offset, +offset]`` (seeded, rounded to one audio sample); otherwise all offsets are 0.
    A positive offset means the audio is late: the sound of an event starts ``offset`` seconds
    after the object appears (``event_starts + offset``). Events lie inside the file, at least
    0.2 s from either end, in both modalities.

    Defects: ``corrupt`` is the share of videos (exactly ``round(corrupt * videos)``, chosen by
    a seeded permutation) whose audio is damaged (``DEFECTS``, described in the module's
    docstring), the types assigned round-robin in that order so they are balanced. ``corrupt=0``
    (the default) writes the same files and the same other columns as a corpus made before
    defects existed: the defects come from a random stream of their own.

    Deterministic: the same arguments give the same ground truth (and, with the same PyAV/
    FFmpeg build, the same bytes).

    Args:
        progress: optional callable taking an iterable and returning it (e.g. ``tqdm``).

    Raises:
        ValueError: on invalid arguments (``avfeat synth`` reports them as ``InputError``).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    check_arguments(videos=videos, seconds=seconds, classes=classes, offset=offset, size=size, fps=fps,
                    sample_rate=sample_rate, corrupt=corrupt)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan = _Plan.draw(seed, videos, classes, offset, corrupt, seconds=seconds, size=size, fps=fps,
                      sample_rate=sample_rate)
    rows = []
    indices = range(videos)
    if progress is not None:
        indices = progress(indices)
    for i in indices:
        frames, audio, row = plan.corpus_video(i)
        write_media(out / row["path"], frames, fps, audio, sample_rate)
        rows.append(row)
    table = pa.Table.from_pylist(rows, schema=_ground_truth_schema())
    pq.write_table(table, out / GROUND_TRUTH)
    return table


def _ground_truth_schema():
    """The columns of ``ground_truth.parquet`` (described in the module's docstring)."""
    import pyarrow as pa

    return pa.schema(
        [
            ("path", pa.string()),
            ("class", pa.int32()),
            ("class_name", pa.string()),
            ("offset", pa.float64()),
            ("event_starts", pa.list_(pa.float64())),
            ("event_ends", pa.list_(pa.float64())),
            ("boxes", pa.list_(pa.list_(pa.int32(), 4))),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("duration", pa.float64()),
            ("fps", pa.float64()),
            ("sample_rate", pa.int32()),
            ("defect", pa.string()),
            ("defect_source", pa.string()),
            ("defect_offset", pa.float64()),
        ]
    )


def check_arguments(
    *, videos: int, seconds: float, classes: int, offset: float, size: int, fps: float, sample_rate: int,
    corrupt: float = 0.0,
) -> None:
    """Raise ValueError with a one-line message if the corpus cannot be generated."""
    if videos < 1:
        raise ValueError(f"--videos must be at least 1 (got {videos})")
    if not 1 <= classes <= MAX_CLASSES:
        raise ValueError(f"--classes must be between 1 and {MAX_CLASSES} (got {classes})")
    if not np.isfinite(offset) or offset < 0:
        raise ValueError(f"--offset must be a non-negative number of seconds (got {offset})")
    if not np.isfinite(corrupt) or not 0.0 <= corrupt <= 1.0:
        raise ValueError(f"--corrupt must be a fraction between 0 and 1 (got {corrupt})")
    if corrupt > 0 and min(videos, classes) < 2:
        raise ValueError("--corrupt needs at least 2 videos and 2 classes (a swap takes another class's soundtrack)")
    if size < 16 or size % 2:
        raise ValueError(f"--size must be an even number of pixels >= 16 (got {size})")
    if not np.isfinite(fps) or fps <= 0:
        raise ValueError(f"--fps must be positive (got {fps})")
    if sample_rate < 8000:
        raise ValueError(f"sample rate must be at least 8000 Hz (got {sample_rate})")
    need = min_seconds(offset) + 3.0 / fps  # frame rounding of margins and events
    if not np.isfinite(seconds) or seconds < need:
        raise ValueError(
            f"--seconds {seconds} is too short for one event with --offset {offset}: need at least {need:.2f}"
        )
    if corrupt > 0:
        need = min_seconds(offset + DEFECT_SHIFT_MAX) + 3.0 / fps
        if seconds < need:
            raise ValueError(
                f"--seconds {seconds} is too short for --corrupt: an offset defect shifts the audio by up to "
                f"{DEFECT_SHIFT_MAX} s more than --offset {offset}; need at least {need:.2f}"
            )


@dataclass(frozen=True)
class CorpusReport:
    """What ``write_corpus`` wrote."""

    out: Path
    videos: int
    classes: int
    defective: int  # videos given an audio defect (--corrupt)
    ground_truth: str = GROUND_TRUTH


def write_corpus(
    out: str | Path, *, videos: int, seconds: float, classes: int, seed: int, offset: float, size: int, fps: float,
    corrupt: float = 0.0, progress=None,
) -> CorpusReport:
    """``make_corpus`` for `avfeat synth`: the arguments and the folder checked first, and every
    problem one :class:`~avfeat.core.errors.InputError` line."""
    out = Path(out)
    try:
        check_arguments(videos=videos, seconds=seconds, classes=classes, offset=offset, size=size, fps=fps, sample_rate=16000, corrupt=corrupt)
    except ValueError as error:
        raise InputError(str(error)) from None
    _check_out_dir(out)
    try:
        table = make_corpus(out, videos=videos, seconds=seconds, classes=classes, seed=seed, offset=offset, size=size, fps=fps,
                            progress=progress, corrupt=corrupt)
    except OSError as error:
        raise InputError(f"cannot write to {out}: {error.strerror or error}") from None
    defective = sum(1 for defect in table.column("defect").to_pylist() if defect)
    return CorpusReport(out, videos, classes, defective)


def _check_out_dir(out: Path) -> None:
    """Raise InputError unless ``out`` is (or can become) a writable folder."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is not a folder")
    probe = out
    while not probe.exists():  # nearest existing ancestor decides whether we can create it
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise InputError(f"cannot create {out}: {probe} is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        test = out / ".avfeat-write-test"
        test.write_bytes(b"")
        test.unlink()
    except OSError as error:
        raise InputError(f"cannot write to {out}: {error.strerror or error}") from None


def cut_clip(source: str | Path, out: str | Path, start: float, seconds: float, sample_rate: int = 16000) -> None:
    """Write ``seconds`` of ``source`` from ``start`` on as a new H.264/AAC file (a re-encoded
    copy, as a user's excerpt of a video would be): for locate demos and tests."""
    with av.open(str(source)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 25)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0) if start - 1e-6 <= f.time < start + seconds - 1e-6]
    with av.open(str(source)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks = [r.to_ndarray().reshape(-1) for f in container.decode(audio=0) for r in resampler.resample(f)]
        chunks += [r.to_ndarray().reshape(-1) for r in resampler.resample(None)]
    audio = np.concatenate(chunks)[int(start * sample_rate) : int((start + seconds) * sample_rate)]
    write_media(out, np.stack(frames), fps, audio.astype(np.float32), sample_rate)
