"""Segment decoding benchmark (prints, never asserts).

A segment of a long file (an input table's ``start``/``end``) seeks to the keyframe before its
start and decodes forward to its end, so its cost should follow the segment's length and not
the file's, nor where in the file it lies. This writes one long synthetic video (keyframe every
``--gop`` frames, as encoders do) and times, median of ``--repeats``:

- decoding the whole file;
- a ``--segment``-second segment at the start, the middle and the end of the file;
- segments of 1x, 2x and 4x that length at the middle.

    python benchmarks/segments.py                   # 10-minute file, ~1 min
    python benchmarks/segments.py --minutes 60      # an hour-long file
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the long file")
    parser.add_argument("--segment", type=float, default=10.0, help="segment length in seconds")
    parser.add_argument("--size", type=int, default=128, help="frame size of the synthetic video (pixels)")
    parser.add_argument("--fps", type=float, default=1.0, help="frames sampled per second, as extract --fps")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from avfeat.extract.media import DecodeSpec, decode
    from avfeat.testing import make_clip

    work = Path(tempfile.mkdtemp(prefix="avfeat-segments-"))
    path = work / "long.mp4"
    seconds = args.minutes * 60
    started = time.perf_counter()
    make_clip(path, seconds=seconds, size=(args.size, args.size))
    made = time.perf_counter() - started
    spec = DecodeSpec(fps=args.fps)

    whole = median_seconds(lambda: decode(path, spec), args.repeats)
    figures = {
        "machine": platform.processor() or platform.machine(),
        "file_seconds": seconds,
        "file_bytes": path.stat().st_size,
        "write_s": round(made, 1),
        "whole_file_s": round(whole, 3),
    }
    middle = seconds / 2
    for name, start in (("start", 0.0), ("middle", middle), ("end", seconds - args.segment)):
        took = median_seconds(lambda: decode(path, spec, start=start, end=start + args.segment), args.repeats)
        figures[f"segment_{args.segment:g}s_at_{name}_s"] = round(took, 3)
        figures[f"segment_{args.segment:g}s_at_{name}_over_whole"] = round(took / whole, 4)
    base = None
    for factor in (1, 2, 4):
        length = args.segment * factor
        took = median_seconds(lambda: decode(path, spec, start=middle, end=middle + length), args.repeats)
        base = base or took
        figures[f"segment_{length:g}s_middle_s"] = round(took, 3)
        figures[f"segment_{length:g}s_middle_over_{args.segment:g}s"] = round(took / base, 2)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
