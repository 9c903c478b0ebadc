"""Synthetic audio-visual corpus with known ground truth.

Real H.264/AAC files written through PyAV, so every test and the demo exercise the same
decoding path as users' videos.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from avfeat.core.errors import InputError


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


# --------------------------------------------------------------------------------------------
# Class catalogue: a visual object (shape x colour) paired with a sound (timbre x pitch).
# --------------------------------------------------------------------------------------------

SHAPES = ("circle", "square", "triangle", "diamond", "plus", "cross", "star", "target")
COLOURS = {
    "red": (230, 30, 30),
    "green": (30, 200, 60),
    "blue": (40, 80, 245),
    "yellow": (240, 220, 30),
    "magenta": (220, 40, 220),
    "cyan": (30, 210, 220),
    "orange": (255, 140, 0),
    "white": (245, 245, 245),
}
TIMBRES = ("sine", "square", "sawtooth", "pluck", "noise", "chirp")
PITCHES = (220, 294, 392, 523, 698, 880, 1175, 1568)
#: RMS of every class sound.
SOUND_RMS = 0.2

#: Number of distinct classes the catalogue can produce (each has a unique shape/colour pair
#: and a unique timbre/pitch pair).
MAX_CLASSES = len(TIMBRES) * len(PITCHES)

#: Event timing (seconds): each event lasts EVENT_MIN..EVENT_MAX, events are separated by at
#: least GAP_MIN of silence, and no event (in either modality) is closer than MARGIN to the
#: start or end of the file.
EVENT_MIN, EVENT_MAX = 0.4, 1.5
GAP_MIN = 0.3
MARGIN = 0.2
EVENTS_MIN, EVENTS_MAX = 2, 5


def min_seconds(offset: float = 0.0) -> float:
    """Shortest file that fits one event for a maximum absolute audio offset ``offset``."""
    return EVENT_MIN + 2 * MARGIN + abs(offset)


def class_info(k: int) -> dict:
    """Description of class ``k`` (0 <= k < MAX_CLASSES).

    Consecutive classes differ in shape, colour, timbre and pitch; all (shape, colour) pairs and
    all (timbre, pitch) pairs are distinct across the catalogue.
    """
    if not 0 <= k < MAX_CLASSES:
        raise ValueError(f"class index {k} out of range [0, {MAX_CLASSES})")
    n_shape, n_timbre = len(SHAPES), len(TIMBRES)
    shape = SHAPES[k % n_shape]
    colour = list(COLOURS)[(k % n_shape + k // n_shape) % len(COLOURS)]
    timbre = TIMBRES[k % n_timbre]
    pitch = PITCHES[(k + k // n_timbre) % len(PITCHES)]
    return {
        "class": k,
        "shape": shape,
        "colour": colour,
        "rgb": COLOURS[colour],
        "timbre": timbre,
        "pitch": pitch,
        "name": f"{colour} {shape} / {pitch} Hz {timbre}",
    }


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------


def shape_mask(shape: str, size: int) -> np.ndarray:
    """(size, size) bool mask of ``shape`` filling a square box; the box centre is always set."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0  # pixel centres in [-1, 1]
    v, u = np.meshgrid(c, c, indexing="ij")  # v: down, u: right
    au, av_ = np.abs(u), np.abs(v)
    r = np.hypot(u, v)
    if shape == "circle":
        return r <= 1.0
    if shape == "square":
        return np.ones((size, size), dtype=bool)
    if shape == "triangle":  # apex up, base along the bottom edge
        return au <= (v + 1.0) / 2.0
    if shape == "diamond":
        return au + av_ <= 1.0
    if shape == "plus":
        return np.minimum(au, av_) <= 0.3
    if shape == "cross":
        return np.minimum(np.abs(u - v), np.abs(u + v)) <= 0.42
    if shape == "star":  # five points, one straight up, straight edges
        angles = np.pi / 5 * np.arange(10)
        radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return _inside_polygon(u, v, radii * np.sin(angles), 0.09 - radii * np.cos(angles))
    if shape == "target":  # ring with a central dot
        return (r <= 0.4) | ((r >= 0.65) & (r <= 1.0))
    raise ValueError(f"unknown shape {shape!r}")


def _inside_polygon(u: np.ndarray, v: np.ndarray, pu: np.ndarray, pv: np.ndarray) -> np.ndarray:
    """Even-odd test of points (u, v) against the closed polygon with vertices (pu, pv)."""
    inside = np.zeros(u.shape, dtype=bool)
    for i in range(len(pu)):
        u1, v1, u2, v2 = pu[i - 1], pv[i - 1], pu[i], pv[i]
        if v1 == v2:
            continue
        straddles = (v1 > v) != (v2 > v)
        crossing = u1 + (v - v1) * (u2 - u1) / (v2 - v1)
        inside ^= straddles & (u < crossing)
    return inside


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Dark, low-saturation, mildly textured background (H, W, 3) uint8, different per video."""
    base = rng.uniform(25, 95)
    tint = rng.uniform(-12, 12, size=3)
    grid = rng.uniform(-1, 1, size=(6, 6))
    ys = np.linspace(0, grid.shape[0] - 1, height)
    xs = np.linspace(0, grid.shape[1] - 1, width)
    rows = np.array([np.interp(xs, np.arange(grid.shape[1]), g) for g in grid])  # (6, W)
    smooth = np.array([np.interp(ys, np.arange(grid.shape[0]), col) for col in rows.T]).T  # (H, W)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.meshgrid(np.linspace(-1, 1, height), np.linspace(-1, 1, width), indexing="ij")
    gradient = np.cos(angle) * xx + np.sin(angle) * yy
    texture = rng.uniform(4, 12) * smooth + rng.uniform(0, 10) * gradient
    image = base + tint[None, None, :] + texture[:, :, None]
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Sound
# --------------------------------------------------------------------------------------------


def _tone(timbre: str, pitch: float, n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of the class sound, RMS ``SOUND_RMS``."""
    t = np.arange(n, dtype=np.float64) / sample_rate
    phase = 2 * np.pi * pitch * t
    if timbre == "sine":
        x = np.sin(phase)
    elif timbre == "square":
        x = np.sign(np.sin(phase))
    elif timbre == "sawtooth":
        x = 2.0 * np.mod(pitch * t, 1.0) - 1.0
    elif timbre == "pluck":  # decaying harmonic tone, re-plucked every 0.25 s
        period = 0.25
        local = np.mod(t, period)
        harmonics = sum(np.sin(h * phase) / h for h in (1, 2, 3, 4))
        x = harmonics * np.exp(-local / 0.1)
    elif timbre == "noise":  # noise band centred on the pitch, one third of it wide
        spectrum = np.fft.rfft(rng.standard_normal(n))
        freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
        spectrum[np.abs(freqs - pitch) > pitch / 6] = 0
        x = np.fft.irfft(spectrum, n)
    elif timbre == "chirp":  # upward sweep pitch -> 2 * pitch, repeated every 0.3 s
        period = 0.3
        local = np.mod(t, period)
        # phase of a linear sweep, restarted each period (phase-continuity is not needed)
        x = np.sin(2 * np.pi * (pitch * local + 0.5 * pitch / period * local**2))
    else:
        raise ValueError(f"unknown timbre {timbre!r}")
    rms = float(np.sqrt(np.mean(x**2))) if n else 1.0
    return (SOUND_RMS / max(rms, 1e-9) * x).astype(np.float32)


def _ramp(n: int, sample_rate: int, seconds: float = 0.005) -> np.ndarray:
    """Envelope with short linear attack and release (avoids clicks)."""
    env = np.ones(n, dtype=np.float32)
    k = min(int(round(seconds * sample_rate)), n // 2)
    if k > 0:
        edge = (np.arange(k, dtype=np.float32) + 1) / (k + 1)
        env[:k] = edge
        env[n - k :] = edge[::-1]
    return env


def _foreign_pitch(rng: np.random.Generator) -> float:
    """A random pitch (Hz) at least a semitone away from every class pitch."""
    while True:
        pitch = float(np.exp(rng.uniform(np.log(150.0), np.log(2500.0))))
        if min(abs(np.log(pitch / p)) for p in PITCHES) > np.log(2 ** (1 / 12)):
            return pitch


def _overlay(rng: np.random.Generator, n: int, sample_rate: int) -> np.ndarray:
    """An unrelated melody over the whole track, loud enough to dominate the class sound.

    Pure tones of foreign pitches, each held 0.3-0.8 s, RMS 1.5-2x ``SOUND_RMS``: no class sounds
    like this, so a model hears "something else" everywhere, not another class.
    """
    out = np.zeros(n, dtype=np.float32)
    amplitude = rng.uniform(1.5, 2.0) * SOUND_RMS * np.sqrt(2.0)  # a sine's RMS is amplitude / sqrt(2)
    begin = 0
    while begin < n:
        end = min(n, begin + int(rng.uniform(0.3, 0.8) * sample_rate))
        t = np.arange(end - begin, dtype=np.float64) / sample_rate
        tone = amplitude * np.sin(2 * np.pi * _foreign_pitch(rng) * t)
        out[begin:end] = tone.astype(np.float32) * _ramp(end - begin, sample_rate)
        begin = end
    return out


# --------------------------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------------------------


def _event_frames(
    rng: np.random.Generator, lo: int, hi: int, fps: float
) -> list[tuple[int, int]]:
    """Random events as [start, end) frame ranges inside [lo, hi)."""
    dmin = int(np.ceil(EVENT_MIN * fps - 1e-9))
    dmax = max(dmin, int(np.floor(EVENT_MAX * fps + 1e-9)))
    gap = int(np.ceil(GAP_MIN * fps - 1e-9))
    span = hi - lo
    if span < dmin:
        raise ValueError("file too short for one event")
    count = int(rng.integers(EVENTS_MIN, EVENTS_MAX + 1))
    while count > 1 and count * dmin + (count - 1) * gap > span:
        count -= 1
    lengths = rng.integers(dmin, dmax + 1, size=count)
    budget = span - (count - 1) * gap
    while lengths.sum() > budget:  # shorten the longest event until everything fits
        lengths[np.argmax(lengths)] -= 1
    slack = budget - int(lengths.sum())
    # distribute the slack over the count + 1 spaces (before, between, after the events)
    cuts = np.sort(rng.integers(0, slack + 1, size=count))
    extra = np.diff(np.concatenate([[0], cuts]))
    events = []
    position = lo
    for i in range(count):
        position += int(extra[i]) + (gap if i else 0)
        events.append((position, position + int(lengths[i])))
        position += int(lengths[i])
    return events


def make_video(
    rng: np.random.Generator,
    klass: int,
    *,
    seconds: float,
    offset: float,
    size: int,
    fps: float,
    sample_rate: int,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Frames (F, H, W, 3) uint8, audio (N,) float32 and ground truth of one synthetic video.

    ``offset`` is this video's exact audio offset in seconds (positive: audio late).
    """
    info = class_info(klass)
    n_frames = int(round(seconds * fps))
    duration = n_frames / fps
    n_samples = int(round(duration * sample_rate))
    shift = int(round(offset * sample_rate))
    offset = shift / sample_rate

    lo = int(np.ceil((max(0.0, -offset) + MARGIN) * fps - 1e-9))
    hi = int(np.floor((duration - max(0.0, offset) - MARGIN) * fps + 1e-9))
    events = _event_frames(rng, lo, hi, fps)

    background = _background(rng, size, size)
    frames = np.repeat(background[None], n_frames, axis=0)
    colour = np.asarray(info["rgb"], dtype=np.uint8)
    boxes = []
    for start, end in events:
        side = int(rng.integers(int(0.25 * size), int(0.5 * size) + 1))
        x0 = int(rng.integers(0, size - side + 1))
        y0 = int(rng.integers(0, size - side + 1))
        mask = shape_mask(info["shape"], side)
        region = frames[start:end, y0 : y0 + side, x0 : x0 + side]
        region[:, mask] = colour
        boxes.append([x0, y0, x0 + side, y0 + side])

    noise_level = rng.uniform(0.002, 0.008)
    audio = (noise_level * rng.standard_normal(n_samples)).astype(np.float32)
    for start, end in events:
        a = int(round(start / fps * sample_rate)) + shift
        b = int(round(end / fps * sample_rate)) + shift
        a, b = max(a, 0), min(b, n_samples)
        sound = _tone(info["timbre"], info["pitch"], b - a, sample_rate, rng)
        audio[a:b] += sound * _ramp(b - a, sample_rate)
    np.clip(audio, -1.0, 1.0, out=audio)

    truth = {
        "class": klass,
        "class_name": info["name"],
        "offset": float(offset),
        "event_starts": [start / fps for start, _ in events],
        "event_ends": [end / fps for _, end in events],
        "boxes": boxes,
        "width": size,
        "height": size,
        "duration": float(duration),
        "fps": float(fps),
        "sample_rate": int(sample_rate),
    }
    return frames, audio, truth


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
    the ground truth to ``out_dir/ground_truth.parquet`` (one row per video).

    Each class (``class_info``) pairs a visual object (shape x colour) with a sound (timbre x
    pitch). Classes are assigned round-robin and shuffled, so they are balanced. Each video has
    2-5 events (fewer only when the file is too short) of 0.4-1.5 s separated by at least 0.3 s of low background noise; during an
    event the object is drawn at a random position and size on a per-video background, and its
    sound plays.

    Offsets: when ``offset > 0`` each video gets its own offset drawn uniformly from
    ``[-offset, +offset]`` (seeded, rounded to one audio sample); otherwise all offsets are 0.
    A positive offset means the audio is late: the sound of an event starts ``offset`` seconds
    after the object appears (``event_starts + offset``). Events lie inside the file, at least
    0.2 s from either end, in both modalities.

    Ground-truth columns: ``path`` (file name), ``class`` (int), ``class_name`` (str),
    ``offset`` (float s), ``event_starts`` / ``event_ends`` (list<float> s, visual events on the
    file's timeline, multiples of 1/fps; the object is visible in frames whose time t satisfies
    start <= t < end), ``boxes`` (list of [x0, y0, x1, y1] int pixels per event, x1/y1
    exclusive), ``width``, ``height``, ``duration`` (s), ``fps``, ``sample_rate``, and the
    audio defects (always present, so the schema does not depend on ``corrupt``): ``defect``
    (str: "" for a clean video, else one of ``DEFECTS``), ``defect_source`` (str: for ``swap``
    the donor's file name, else ""), ``defect_offset`` (float s: the shift an ``offset`` defect
    injected, else 0.0).

    Defects: ``corrupt`` is the share of videos (exactly ``round(corrupt * videos)``, chosen by
    a seeded permutation) whose audio is damaged, the types assigned round-robin in that order
    so they are balanced, for measuring audit tools against ground truth:

    - ``swap``: the clean soundtrack of a video of another class (a clean one when there is
      one, so the donor's file holds exactly that track);
    - ``overlay``: a melody of tones of foreign pitches (none of the classes' sounds), changing
      every 0.3-0.8 s, at 1.5-2x the class sound's RMS, added over the whole original track;
    - ``silence``: the track replaced by noise at about 1e-4 (the pictures stay);
    - ``offset``: the audio shifted by a further 0.4-2.0 s of random sign; ``offset`` then holds
      the total shift and ``event_starts`` / ``event_ends`` stay the visual events.

    ``corrupt=0`` (the default) writes the same files and the same other columns as a corpus
    made before defects existed: the defects come from a random stream of their own.

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

    children = np.random.SeedSequence([int(seed), 0x5EED]).spawn(videos + 1)
    plan_rng = np.random.default_rng(children[0])
    labels = plan_rng.permutation(np.arange(videos) % classes)
    offsets = plan_rng.uniform(-offset, offset, size=videos) if offset > 0 else np.zeros(videos)
    video_seeds = children[1:]
    plan = _defect_plan(seed, labels, corrupt, sample_rate)

    def generate(i: int, shift: float = 0.0):
        rng = np.random.default_rng(video_seeds[i])
        return make_video(
            rng, int(labels[i]), seconds=seconds, offset=float(offsets[i]) + shift, size=size, fps=fps,
            sample_rate=sample_rate,
        )

    rows = []
    indices = range(videos)
    if progress is not None:
        indices = progress(indices)
    for i in indices:
        defect, donor, shift = plan[i]["defect"], plan[i]["donor"], plan[i]["shift"]
        frames, audio, truth = generate(i, shift)  # make_video keeps shifted events inside the file
        defect_rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xBAD, i]))
        if defect == "swap":
            audio = generate(donor)[1]  # the donor's clean track, regenerated from its own seed
        elif defect == "overlay":
            audio = np.clip(audio + _overlay(defect_rng, len(audio), sample_rate), -1.0, 1.0)
        elif defect == "silence":
            audio = (1e-4 * defect_rng.standard_normal(len(audio))).astype(np.float32)
        name = f"video_{i:05d}.mp4"
        write_media(out / name, frames, fps, audio, sample_rate)
        rows.append({
            "path": name, **truth, "defect": defect,
            "defect_source": f"video_{donor:05d}.mp4" if defect == "swap" else "",
            "defect_offset": float(shift),
        })

    schema = pa.schema(
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
    table = pa.Table.from_pylist(rows, schema=schema)
    pq.write_table(table, out / GROUND_TRUTH)
    return table


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
