"""Decoding cost per core: where the time goes, and what each decode option saves (prints, never asserts).

Decoding is extraction's largest compute bill, so this measures media-seconds decoded per
CPU-second (process CPU time, which counts every thread, so "per core" holds on a shared
machine too) with one decoder thread per process, as extract's workers run:

- ``reference``: the plain path (``REFERENCE_TUNING``: every frame decoded, a new libswscale
  context per sampled frame, libswscale's own thread count);
- ``+skip``: only ``DecodeTuning.skip_unused`` (unused non-reference frames not decoded);
- ``+scaler``: only the one-thread, reused libswscale context;
- ``exact``: both (the default; its output is checked to be bit-identical to ``reference``);
- ``2 threads``: ``exact`` with two decoder threads (CPU per media-second, not wall time);
- ``keyframes``: ``DecodeSpec(mode="keyframes")``, only keyframes decoded.

It also splits the reference cost into demux, video decode (every frame), audio decode +
resampling to 16 kHz mono, and RGB conversion of the sampled frames, and reports each mode's
frame-time error: for every target ``k / fps`` before the decoded duration, how far (seconds)
the frame that serves it lies before it (mean and max; targets before the video's end).

Inputs: the real clips (``--media``, default the tests' ``../shared/media``) grouped by codec
and resolution, and synthetic H.264 clips written by ``avfeat.data.synth_media.write_media`` (a
panning texture with a moving disc, 25 fps, a keyframe every second as ``write_media`` sets it)
at 720p and 1080p, plus a 1080p one with x264's default 250-frame (10 s) GOP.

    python benchmarks/decode.py                      # ~4 min on 2 cores (synthetic files cached in --work)
    python benchmarks/decode.py --seconds 20 --repeats 1   # quicker
    python benchmarks/decode.py --smoke              # 2 s clips at 1/10 the sizes, a made-up "real" clip: does it run?
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from collections import defaultdict
from fractions import Fraction
from pathlib import Path

import numpy as np

from _bench import parse, parser, timed, work_folder

# The synthetic clips: (height, width, keyframe interval in frames at 25 fps); --smoke's at a tenth the size.
SYNTHETIC = ((720, 1280, 25), (1080, 1920, 25), (1080, 1920, 250))
SMOKE_SYNTHETIC = ((72, 128, 25), (108, 192, 25), (108, 192, 250))


class PanningFrames:
    """(F, H, W, 3) uint8 frames made one at a time (a 60 s 1080p clip would not fit in memory):
    a soft random texture panning 2 px per frame and a red disc moving across it."""

    def __init__(self, seconds: float, size: tuple[int, int], fps: float, seed: int = 0):
        self.h, self.w = size
        self.n = int(round(seconds * fps))
        self.shape = (self.n, self.h, self.w, 3)
        rng = np.random.default_rng(seed)
        small = rng.integers(0, 256, (self.h // 8 + 1, (self.w + 2 * self.n) // 8 + 1, 3), dtype=np.uint8)
        tex = np.repeat(np.repeat(small, 8, 0), 8, 1).astype(np.uint16)
        tex = (tex + np.roll(tex, 4, 0) + np.roll(tex, 4, 1) + np.roll(np.roll(tex, 4, 0), 4, 1)) // 4
        self.texture = tex.astype(np.uint8)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        yy, xx = np.ogrid[: self.h, : self.w]
        radius2 = (self.h // 10) ** 2
        for i in range(self.n):
            frame = self.texture[: self.h, 2 * i : 2 * i + self.w].copy()
            cx, cy = (7 * i) % self.w, self.h // 2 + int(self.h / 4 * np.sin(i / 20))
            frame[(yy - cy) ** 2 + (xx - cx) ** 2 < radius2] = (230, 40, 40)
            yield frame


def _tone(seconds: float, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t) * (0.5 + 0.5 * np.sin(np.pi * t))).astype(np.float32)


def _write_long_gop(path: Path, frames: PanningFrames, fps: int, audio: np.ndarray, rate: int, gop: int) -> None:
    """write_media's settings (libx264 veryfast, crf 20, AAC) with another keyframe interval."""
    import av

    with av.open(str(path), mode="w") as container:
        vstream = container.add_stream("libx264", rate=fps)
        vstream.height, vstream.width = frames.shape[1:3]
        vstream.pix_fmt = "yuv420p"
        vstream.options = {"preset": "veryfast", "crf": "20", "g": str(gop)}
        astream = container.add_stream("aac", rate=rate)
        astream.layout = "mono"
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, fps)
            container.mux(vstream.encode(frame))
        container.mux(vstream.encode())
        for begin in range(0, len(audio), 1024):
            frame = av.AudioFrame.from_ndarray(audio[None, begin : begin + 1024], format="flt", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = rate, begin, Fraction(1, rate)
            container.mux(astream.encode(frame))
        container.mux(astream.encode())


def synthetic_clips(work: Path, seconds: float, sizes=SYNTHETIC) -> list[tuple[Path, str]]:
    """(path, group label) of the synthetic clips, written once into ``work``."""
    from avfeat.data.synth_media import write_media

    def write(path: Path, height: int, width: int, gop: int) -> None:
        frames, audio = PanningFrames(seconds, (height, width), 25), _tone(seconds)
        tmp = path.with_suffix(".tmp.mp4")
        if gop == 25:
            write_media(tmp, frames, 25, audio, 16000)
        else:
            _write_long_gop(tmp, frames, 25, audio, 16000, gop)
        tmp.rename(path)

    work.mkdir(parents=True, exist_ok=True)
    made = []
    for height, width, gop in sizes:
        path = work / f"synth_{height}p_gop{gop}_{seconds:g}s.mp4"
        if not path.exists():
            took, _ = timed(lambda: write(path, height, width, gop))
            print(f"wrote {path.name} in {took:.0f} s", flush=True)
        made.append((path, f"synth h264 {width}x{height} gop {gop / 25:g}s"))
    return made


def stream_info(path: Path) -> dict:
    """ffprobe-style facts from PyAV: codec, size, frame rate, bitrate, frames and keyframes."""
    import av

    with av.open(str(path)) as container:
        video = container.streams.video[0]
        packets = [p for p in container.demux(video) if p.pts is not None]
        duration = container.duration / av.time_base if container.duration else 0.0
        keys = sum(1 for p in packets if p.is_keyframe)
        origin = (container.start_time or 0) / av.time_base
        ends = [float((p.pts + (p.duration or 0)) * video.time_base) - origin for p in packets]
        return {
            "codec": video.codec_context.name,
            "profile": video.codec_context.profile,
            "size": f"{video.width}x{video.height}",
            "fps": round(float(video.average_rate or 0), 2),
            "seconds": round(duration, 2),
            "mbit_s": round(path.stat().st_size * 8 / max(duration, 1e-9) / 1e6, 2),
            "frames": len(packets),
            "gop_s": round(duration / max(keys, 1), 2),
            "video_end": max(ends) if ends else duration,
        }


def cpu_seconds(fn, repeats: int) -> tuple[float, object]:
    """Least process CPU time (all threads) of ``repeats`` calls, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.process_time()
        result = fn()
        best = min(best, time.process_time() - started)
    return best, result


def frame_time_error(frame_times: np.ndarray, video_end: float, fps: float) -> tuple[float, float]:
    """(mean, max) seconds between each target k / fps before the video's end (its last packet's
    time + duration) and the frame serving it (the last frame at or before it)."""
    targets = np.arange(int(np.ceil(video_end * fps)) + 1) / fps
    targets = targets[targets < video_end - 1e-6]
    index = np.clip(np.searchsorted(frame_times, targets + 1e-6, side="right") - 1, 0, None)
    error = np.abs(targets - frame_times[index])
    return float(error.mean()), float(error.max())


def breakdown(path: Path, spec, repeats: int) -> dict[str, float]:
    """CPU seconds of the reference path's parts: demux, video decode, audio, RGB conversion."""
    import av

    from avfeat.extract import media

    def demux():
        with av.open(str(path)) as container:
            for _ in container.demux(container.streams.audio[0], container.streams.video[0]):
                pass

    def video():
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1
            for _ in container.decode(stream):
                pass

    def audio():
        media.decode_audio(path, spec.sample_rate)

    with av.open(str(path)) as container:  # frames as the sampler would convert them (1 per 1/fps)
        stream = container.streams.video[0]
        rate = float(stream.average_rate or 25)
        step = max(1, int(round(rate / spec.fps)))
        frames = [f for i, f in enumerate(container.decode(stream)) if i % step == 0][:30]
    h, w = media.resize_geometry(frames[0].height, frames[0].width, spec)
    per_second = rate / step  # sampled frames per media-second

    def convert(reuse: bool, threads: int | None, two_step: bool = False):
        from av.video.reformatter import VideoReformatter

        scaler = VideoReformatter() if reuse else None
        out = []
        for frame in frames:
            options = {"width": w, "height": h, "format": "rgb24", "interpolation": "BICUBIC"}
            if threads is not None:
                options["threads"] = threads
            if two_step:  # full-size RGB first, then scaled: what straight conversion avoids
                full = frame.reformat(format="rgb24", **({"threads": threads} if threads is not None else {}))
                out.append(full.reformat(**options).to_ndarray())
            else:
                out.append((scaler.reformat(frame, **options) if reuse else frame.reformat(**options)).to_ndarray())
        return out

    seconds = stream_info(path)["seconds"]
    parts = {}
    parts["demux"], _ = cpu_seconds(demux, repeats)
    parts["video"], _ = cpu_seconds(video, repeats)
    parts["audio"], _ = cpu_seconds(audio, repeats)
    conv_ref, ref_pixels = cpu_seconds(lambda: convert(False, None), repeats)
    conv_new, new_pixels = cpu_seconds(lambda: convert(True, 1), repeats)
    conv_two, two_pixels = cpu_seconds(lambda: convert(False, 1, two_step=True), repeats)
    scale = per_second * seconds / len(frames)  # conversions of the whole clip
    parts["convert"] = conv_ref * scale
    parts["convert_1thread_reused"] = conv_new * scale
    parts["convert_two_step"] = conv_two * scale
    parts["convert_identical"] = all(np.array_equal(a, b) for a, b in zip(ref_pixels, new_pixels))
    parts["two_step_max_diff"] = int(max(np.abs(a.astype(int) - b).max() for a, b in zip(ref_pixels, two_pixels)))
    return parts


def main() -> None:
    options = parser(__doc__, repeats=3, repeats_help="runs per measurement (the least CPU time counts)")
    options.add_argument("--media", type=Path, default=None, help="folder of real clips [default: the tests' ../shared/media]")
    options.add_argument("--seconds", type=float, default=60.0, help="length of the synthetic clips")
    options.add_argument("--fps", type=float, default=1.0, help="frames sampled per second, as extract --fps")
    options.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "avfeat-decode-bench", help="where the synthetic clips are written (and reused)")
    options.add_argument("--no-synthetic", action="store_true")
    options.add_argument("--json", action="store_true", help="print the figures as JSON too")
    # --smoke writes into a temporary folder: its small clips must not land in the reused --work.
    args = parse(options, smoke=dict(seconds=2.0, work=None, json=True))

    from avfeat.extract import media
    from avfeat.extract.media import REFERENCE_TUNING, DecodeSpec, DecodeTuning, decode
    from avfeat.extract.media.frames import FrameSampler
    from avfeat.testing.media import MEDIA_SUFFIXES, make_clip, test_media_dir

    os.environ.pop(media.THREADS_ENV, None)
    work = work_folder(args.work, "avfeat-decode-")
    folder = args.media or test_media_dir()
    if args.smoke and args.media is None:  # no real clips needed: one small clip stands in for them
        folder = work / "media"
        folder.mkdir()
        make_clip(folder / "clip.mp4", seconds=args.seconds, size=(96, 128))
    clips: list[tuple[Path, str | None]] = []
    if folder is not None:
        clips += [(p, None) for p in sorted(folder.iterdir()) if p.suffix.lower() in MEDIA_SUFFIXES]
    if not args.no_synthetic:
        clips += synthetic_clips(work, args.seconds, SMOKE_SYNTHETIC if args.smoke else SYNTHETIC)

    exact, keyframes = DecodeSpec(fps=args.fps), DecodeSpec(fps=args.fps, mode="keyframes")
    paths = {
        "reference": (exact, REFERENCE_TUNING, 1),
        "+skip": (exact, DecodeTuning(skip_unused=True, scaler_threads=0, reuse_scaler=False), 1),
        "+scaler": (exact, DecodeTuning(skip_unused=False), 1),
        "exact": (exact, DecodeTuning(), 1),
        "2 threads": (exact, DecodeTuning(), 2),
        "keyframes": (keyframes, DecodeTuning(), 1),
    }
    # Count decoded frames and fall-backs by wrapping the sampler (the benchmark's own view).
    counts = defaultdict(int)
    original_add = FrameSampler.add

    def counting_add(self, frame):
        counts["frames"] += 1
        return original_add(self, frame)

    FrameSampler.add = counting_add

    groups: dict[str, dict] = {}
    for path, label in clips:
        info = stream_info(path)
        group = label or f"{info['codec']} {info['size']}"
        entry = groups.setdefault(group, {"clips": 0, "seconds": 0.0, "info": info, "cpu": defaultdict(float),
                                          "frames": defaultdict(int), "error": defaultdict(list), "parts": defaultdict(float)})
        entry["clips"] += 1
        entry["seconds"] += info["seconds"]
        results = {}
        for name, (spec, tuning, threads) in paths.items():
            counts.clear()
            took, out = cpu_seconds(lambda: decode(path, spec, threads=threads, tuning=tuning), args.repeats)
            entry["cpu"][name] += took
            entry["frames"][name] += counts["frames"] // args.repeats
            results[name] = out
            entry["error"][name].append(frame_time_error(out.frame_times, info["video_end"], args.fps) + (len(out.frame_times),))
        ref = results["reference"]
        for name in ("+skip", "+scaler", "exact", "2 threads"):
            out = results[name]
            if not (np.array_equal(out.frames, ref.frames) and np.array_equal(out.frame_times, ref.frame_times)
                    and np.array_equal(out.audio, ref.audio)):
                print(f"WARNING: {name} differs from reference on {path.name}")
        for key, value in breakdown(path, exact, args.repeats).items():
            if isinstance(value, bool):
                entry["parts"][key] = entry["parts"].get(key, True) and value
            elif key == "two_step_max_diff":
                entry["parts"][key] = max(entry["parts"].get(key, 0), value)
            else:
                entry["parts"][key] += value
        print(f"measured {path.name} ({group})", flush=True)
    FrameSampler.add = original_add

    print(f"\nmachine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores (shared); "
          f"fps {args.fps:g}; one decoder thread per process unless said; CPU time = process time over all threads\n")
    names = list(paths)
    print("media-seconds decoded per CPU-second (higher is better; x: over reference)")
    print("| codec, size | clips | media s | " + " | ".join(names) + " |")
    print("|---|---|---|" + "---|" * len(names))
    for group, entry in groups.items():
        ref = entry["seconds"] / entry["cpu"]["reference"]
        cells = []
        for name in names:
            rate = entry["seconds"] / entry["cpu"][name]
            cells.append(f"{rate:.0f}" if name == "reference" else f"{rate:.0f} ({rate / ref:.2f}x)")
        print(f"| {group} | {entry['clips']} | {entry['seconds']:.0f} | " + " | ".join(cells) + " |")

    print("\nframes decoded per media-second, and frame-time error (mean / max s off the 1/fps grid)")
    print("| codec, size | GOP s | Mbit/s | decoded: reference | exact | keyframes | error: exact | keyframes | frames kept: exact | keyframes |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for group, entry in groups.items():
        s = entry["seconds"]
        errors = {}
        for name in ("exact", "keyframes"):
            rows = entry["error"][name]
            weights = np.array([r[2] for r in rows], dtype=float)
            errors[name] = (float(np.average([r[0] for r in rows], weights=weights)), max(r[1] for r in rows), int(weights.sum()))
        info = entry["info"]
        print(f"| {group} | {info['gop_s']} | {info['mbit_s']} | {entry['frames']['reference'] / s:.1f} | {entry['frames']['exact'] / s:.1f} | "
              f"{entry['frames']['keyframes'] / s:.2f} | {errors['exact'][0]:.3f} / {errors['exact'][1]:.3f} | "
              f"{errors['keyframes'][0]:.2f} / {errors['keyframes'][1]:.2f} | {errors['exact'][2]} | {errors['keyframes'][2]} |")

    print("\nwhere the reference path's CPU goes (share of its decode time; parts measured apart)")
    print("| codec, size | demux | video decode | audio + resample | RGB conversion | conversion, 1 thread reused | two-step (full RGB, then scale) | two-step max pixel diff |")
    print("|---|---|---|---|---|---|---|---|")
    for group, entry in groups.items():
        total, p = entry["cpu"]["reference"], entry["parts"]
        print(f"| {group} | {p['demux'] / total:.0%} | {p['video'] / total:.0%} | {p['audio'] / total:.0%} | {p['convert'] / total:.0%} | "
              f"{p['convert_1thread_reused'] / total:.0%}{'' if p['convert_identical'] else ' (differs!)'} | {p['convert_two_step'] / total:.0%} | {p['two_step_max_diff']} |")
    if args.json:
        print(json.dumps({g: {k: (dict(v) if isinstance(v, defaultdict) else v) for k, v in e.items()} for g, e in groups.items()}, indent=1, default=str))


if __name__ == "__main__":
    main()
