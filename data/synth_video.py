"""One synthetic video with known ground truth: the class catalogue (a visual object, shape x
colour, paired with a sound, timbre x pitch), the drawing of its frames, the synthesis of its
sounds and the timing of its events (``make_video``). Pure numpy: arrays in memory, no files.
"""

from __future__ import annotations

import numpy as np


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


def overlay(rng: np.random.Generator, n: int, sample_rate: int) -> np.ndarray:
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
# Events, and the whole video
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
    frames, boxes = _draw_frames(rng, info, events, n_frames, size)
    audio = _sound_track(rng, info, events, n_samples, shift, fps, sample_rate)

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


def _draw_frames(
    rng: np.random.Generator, info: dict, events: list[tuple[int, int]], n_frames: int, size: int
) -> tuple[np.ndarray, list[list[int]]]:
    """The frames of a video whose object (``info``) shows during ``events`` (frame ranges), at a
    random place and size per event on a per-video background, and the boxes it was drawn in."""
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
    return frames, boxes


def _sound_track(
    rng: np.random.Generator, info: dict, events: list[tuple[int, int]], n_samples: int, shift: int, fps: float,
    sample_rate: int,
) -> np.ndarray:
    """Low background noise with the class sound (``info``) during ``events`` (frame ranges),
    ``shift`` samples late."""
    noise_level = rng.uniform(0.002, 0.008)
    audio = (noise_level * rng.standard_normal(n_samples)).astype(np.float32)
    for start, end in events:
        a = int(round(start / fps * sample_rate)) + shift
        b = int(round(end / fps * sample_rate)) + shift
        a, b = max(a, 0), min(b, n_samples)
        sound = _tone(info["timbre"], info["pitch"], b - a, sample_rate, rng)
        audio[a:b] += sound * _ramp(b - a, sample_rate)
    np.clip(audio, -1.0, 1.0, out=audio)
    return audio
