"""A million videos in the manifest: opening a cache, `avfeat info` and planning a resume.

Prints figures; asserts nothing. Writes a synthetic cache of ``--rows`` videos as a long
extraction leaves it: cache.json by the real writer, ``--rows / --per-part`` manifest parts of
synthetic records (0.5% of them failed, with an input table's ``label`` and ``split`` columns),
and a small placeholder shard per part whose size and SHA-256 the parts record (no tokens: none
of these timings reads any). Then times, median of ``--repeats``:

- open: ``Cache(path)``;
- info: `avfeat info CACHE`, and `avfeat info CACHE --videos`, in-process, written to /dev/null;
- resume plan: what `avfeat extract --resume` decides before it decodes anything
  (``avfeat.extract.job.plan_run``) for ``--rows`` inputs, all recorded but the last 1%. The
  recorded inputs carry their size and mtime as a listing that knows them does (a tar's
  headers, an S3 listing) and, as a folder listing does, that they are no links, their paths
  already formatted as strings as ``list_inputs`` leaves them; the last 1% are
  real tiny files, stat'ed and hashed for their ids.

Each stage runs in a fresh interpreter, so its peak RSS is its own (interpreter and imports
included); a stage that fails (an exit status other than 0) stops the benchmark with its error.
Each figure is printed with the rows and the 10 s goal, then each stage's peak RSS.

    python benchmarks/manifest.py                 # 1,000,000 rows (~ minutes to write)
    python benchmarks/manifest.py --rows 100000
    python benchmarks/manifest.py --smoke
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import resource
from pathlib import Path

from _bench import machine, median_time, parse, parser, print_figures, timed, work_folder

GOAL_S = 10.0
CONFIG = {"audio_model": "random:hubert-tiny", "visual_model": "random:dinov2-tiny", "audio_layer": -1, "visual_layer": -1,
          "audio_dim": 32, "audio_token_rate": 50.0, "visual_dim": 32, "visual_tokens": 65, "fps": 2.0}
NEW_SHARE = 0.01  # of the inputs: not yet in the cache


def _manifest(root: Path, rows: int, per_part: int):
    """Every row of the synthetic manifest as one table, in the manifest's schema then the
    input table's columns; ``shard`` and the shard's size and hash are filled per part."""
    import numpy as np
    import pyarrow as pa

    from avfeat.data.manifest import manifest_schema

    number = np.arange(rows, dtype=np.int64)
    failed = number % 200 == 7
    duration = np.where(failed, 0.0, 5.0 + number % 50)
    audio = (duration * 50).astype(np.int64)
    shard = (number // per_part).astype(np.int32)
    audio_offset = np.cumsum(audio) - audio
    audio_offset -= audio_offset[shard * per_part]  # offsets restart in each shard
    names = [f"video_{n:07d}" for n in range(rows)]
    columns = {
        "video_id": [f"{name}-{n * 2654435761 % 2**64:016x}" for n, name in enumerate(names)],
        "path": [str(root / "videos" / f"{name}.mp4") for name in names],
        "size": 1000 + number, "mtime": 1.7e9 + number, "status": np.where(failed, "decode_error", "ok"),
        "error": np.where(failed, "corrupt data", ""), "duration": duration, "shard": shard,
        "audio_offset": audio_offset, "audio_length": audio, "audio_start": np.zeros(rows), "audio_rate": np.full(rows, 50.0),
        "visual_offset": audio_offset // 25, "visual_length": audio // 25, "fps": np.full(rows, 2.0),
        "width": np.full(rows, 320), "height": np.full(rows, 240), "source_sample_rate": np.full(rows, 16000),
        "audio_level": np.full(rows, -20.0), "segment_start": pa.nulls(rows, pa.float64()), "segment_end": pa.nulls(rows, pa.float64()),
        "shard_sha256": pa.nulls(rows, pa.string()), "shard_bytes": pa.nulls(rows, pa.int64()),
    }
    schema = manifest_schema()
    table = pa.table({field.name: pa.array(columns[field.name], type=field.type) for field in schema})
    label = pa.array([f"class_{n % 400}" for n in range(rows)])
    split = pa.array(np.where(number % 10 == 0, "test", "train"))
    return table.append_column("label", label).append_column("split", split)


def write_cache(root: Path, rows: int, per_part: int) -> None:
    """The synthetic cache: cache.json by the real writer, the manifest parts and a placeholder
    shard per part (its size and SHA-256 recorded, as a commit records them)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from avfeat.data.layout import part_name, shard_name
    from avfeat.data.shards import open_for_writing

    layout = open_for_writing(root / "cache", CONFIG)
    table = _manifest(root, rows, per_part)
    for index, first in enumerate(range(0, rows, per_part)):
        shard = layout.shard_dir / shard_name(index)
        shard.write_bytes(b"placeholder %d" % index)
        part = table.slice(first, per_part)
        for name, value in (("shard_sha256", hashlib.sha256(shard.read_bytes()).hexdigest()), ("shard_bytes", shard.stat().st_size)):
            column = part.schema.get_field_index(name)
            part = part.set_column(column, part.schema.field(column), pa.array([value] * part.num_rows, part.schema.field(column).type))
        pq.write_table(part, layout.manifest_dir / part_name(index), write_page_checksum=True)


def resume_inputs(root: Path, rows: int) -> list:
    """``rows`` inputs: the cache's first ones as recorded (size and mtime from the listing,
    which saw no links), then 1% new tiny files on disk."""
    from avfeat.extract.inputs.items import MediaInput
    from avfeat.extract.sources.remote import Stat

    new = max(1, int(rows * NEW_SHARE))
    inputs = [MediaInput(root / "videos" / f"video_{n:07d}.mp4", stat=Stat(1000 + n, 1.7e9 + n), link=False) for n in range(rows - new)]
    for item in inputs:  # as a listing leaves its paths: list_inputs formats each one (pathlib keeps the string)
        os.fspath(item.path)
    fresh = root / "new"
    fresh.mkdir(exist_ok=True)
    for n in range(new):
        path = fresh / f"new_{n:07d}.mp4"
        if not path.exists():
            path.write_bytes(b"new video %d" % n)
        inputs.append(MediaInput(path))
    return inputs


STAGES = ("open", "info", "info_videos", "resume_plan")


def _cli(*argv: str) -> None:
    """``avfeat ARGV`` in this process, its output to /dev/null; any exit status but 0 fails."""
    from avfeat.cli import main

    code = 0
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        try:
            main(list(argv))
        except SystemExit as exit_:
            code = exit_.code
    if code not in (0, None):
        raise SystemExit(f"avfeat {' '.join(argv)} exited {code}")


def run_stage(stage: str, root: Path, rows: int, repeats: int) -> None:
    """One stage, timed in this (fresh) process; prints its figures as one JSON line."""
    import json

    from avfeat.data.cache import Cache
    from avfeat.data.layout import CacheLayout
    from avfeat.extract.job import RunOptions, plan_run

    cache = root / "cache"
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    extra = {}
    if stage == "open":
        seconds, store = median_time(lambda: Cache(cache), repeats)
        assert len(store) == rows, (len(store), rows)
    elif stage == "info":
        seconds, _ = median_time(lambda: _cli("info", str(cache)), repeats)
    elif stage == "info_videos":
        seconds, _ = median_time(lambda: _cli("info", str(cache), "--videos"), repeats)
    else:
        inputs = resume_inputs(root, rows)
        seconds, (summary, todo) = median_time(lambda: plan_run(CacheLayout(cache), inputs, RunOptions()), repeats)
        assert summary.skipped == len(inputs) - len(todo) and len(todo) == len(inputs) - (rows - max(1, int(rows * NEW_SHARE)))
        extra = {"new": len(todo)}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_rss_mb": round(peak / 1024), "start_rss_mb": round(rss_before / 1024), **extra}))


def _stage_in_child(stage: str, root: Path, args) -> dict:
    """Run one stage in a fresh interpreter (its own peak RSS); a failure stops the benchmark."""
    import json
    import subprocess
    import sys

    command = [sys.executable, __file__, "--stage", stage, "--work", str(root), "--rows", str(args.rows),
               "--per-part", str(args.per_part), "--repeats", str(args.repeats)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"stage {stage} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    args_parser = parser(__doc__, repeats=3)
    args_parser.add_argument("--rows", type=int, default=1_000_000, help="videos in the manifest")
    args_parser.add_argument("--per-part", type=int, default=1000, help="rows per manifest part (videos per shard)")
    args_parser.add_argument("--work", type=Path, default=None, help="folder to write the cache in (kept; reused when it holds one of --rows)")
    args_parser.add_argument("--stage", choices=STAGES, default=None, help=argparse.SUPPRESS)  # the parent runs each stage so
    args = parse(args_parser, {"rows": 20_000})

    root = work_folder(args.work.resolve() if args.work else None, "avfeat-manifest-").resolve()
    if args.stage is not None:
        return run_stage(args.stage, root, args.rows, args.repeats)
    marker = root / f"rows-{args.rows}-{args.per_part}"
    if not marker.exists():
        seconds, _ = timed(lambda: write_cache(root, args.rows, args.per_part))
        marker.touch()
        print(f"wrote a synthetic cache of {args.rows} rows in {args.rows // args.per_part} parts in {seconds:.1f} s")
    resume_inputs(root, args.rows)  # the new files, written before any stage times them
    stages = {stage: _stage_in_child(stage, root, args) for stage in STAGES}
    print(f"machine: {machine()}; {args.rows} rows in {args.rows // args.per_part} parts; goal {GOAL_S:g} s each; "
          "each stage in a fresh process (its peak RSS includes the interpreter and imports)")
    figures = {"rows": args.rows, **{f"{stage}_s": round(stages[stage]["seconds"], 2) for stage in STAGES},
               "resume_plan_new": stages["resume_plan"]["new"], "goal_s": GOAL_S,
               **{f"{stage}_peak_rss_mb": stages[stage]["peak_rss_mb"] for stage in STAGES}}
    print_figures(figures)


if __name__ == "__main__":
    main()
