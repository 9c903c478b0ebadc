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
    python benchmarks/segments.py --smoke           # a 12 s file: does it run?
"""

from __future__ import annotations

from _bench import machine, median_time, parse, parser, print_figures, timed, work_folder


def main() -> None:
    options = parser(__doc__, repeats=3)
    options.add_argument("--minutes", type=float, default=10.0, help="length of the long file")
    options.add_argument("--segment", type=float, default=10.0, help="segment length in seconds")
    options.add_argument("--size", type=int, default=128, help="frame size of the synthetic video (pixels)")
    options.add_argument("--fps", type=float, default=1.0, help="frames sampled per second, as extract --fps")
    # --smoke: a 12 s file, so that the 4x segment at the middle still fits in it.
    args = parse(options, smoke=dict(minutes=0.2, segment=1.0, size=64))

    from avfeat.extract.media import DecodeSpec, decode
    from avfeat.testing.media import make_clip

    path = work_folder(None, "avfeat-segments-") / "long.mp4"
    seconds = args.minutes * 60
    made, _ = timed(lambda: make_clip(path, seconds=seconds, size=(args.size, args.size)))
    spec = DecodeSpec(fps=args.fps)

    whole, _ = median_time(lambda: decode(path, spec), args.repeats)
    figures = {
        "machine": machine(),
        "file_seconds": seconds,
        "file_bytes": path.stat().st_size,
        "write_s": round(made, 1),
        "whole_file_s": round(whole, 3),
    }
    middle = seconds / 2
    for name, start in (("start", 0.0), ("middle", middle), ("end", seconds - args.segment)):
        took, _ = median_time(lambda: decode(path, spec, start=start, end=start + args.segment), args.repeats)
        figures[f"segment_{args.segment:g}s_at_{name}_s"] = round(took, 3)
        figures[f"segment_{args.segment:g}s_at_{name}_over_whole"] = round(took / whole, 4)
    base = None
    for factor in (1, 2, 4):
        length = args.segment * factor
        took, _ = median_time(lambda: decode(path, spec, start=middle, end=middle + length), args.repeats)
        base = base or took
        figures[f"segment_{length:g}s_middle_s"] = round(took, 3)
        figures[f"segment_{length:g}s_middle_over_{args.segment:g}s"] = round(took / base, 2)
    print_figures(figures)


if __name__ == "__main__":
    main()
