"""Remote inputs against local disk: decode-only throughput (prints, never asserts).

Writes ``--clips`` synthetic videos, serves them from a separate process over the local HTTP
server of the tests (Range requests) and a local S3 (moto), also as one WebDataset shard, and
times decoding every clip in this process exactly as `avfeat extract`'s decode workers do
(``avfeat.extract.media.decode``: a stat, then PyAV reading through range requests), median of
``--repeats``, against the same files on local disk. Figures are media-seconds decoded per
second. Both servers run on this machine, so the figures measure avfeat's remote read path
(requests, read-ahead, tar windows) and the servers' own cost, not a network.

    python benchmarks/remote.py                      # 8 clips of 10 s, 224 px, 1 fps: about 70 s
    python benchmarks/remote.py --clips 16 --fps 2
    python benchmarks/remote.py --smoke              # 2 clips of 1 s, 64 px: does it run?
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
from pathlib import Path

from _bench import interleaved, machine, parse, parser, print_figures, work_folder

BUCKET = "avfeat-bench"


def serve(root: str, conn) -> None:
    """In a child process: serve ``root`` over HTTP and S3, send both URLs, wait for the end."""
    from avfeat.testing.servers import S3_TEST_ENV, serve_http, serve_s3, upload_s3

    os.environ.update(S3_TEST_ENV)
    files = {str(p.relative_to(root)): p for p in Path(root).rglob("*") if p.is_file()}
    with serve_http(root) as http, serve_s3() as endpoint:
        upload_s3(endpoint, BUCKET, files)
        conn.send((http.url, endpoint))
        conn.recv()  # the parent is done


def main() -> None:
    options = parser(__doc__, repeats=5)
    options.add_argument("--clips", type=int, default=8)
    options.add_argument("--seconds", type=float, default=10.0)
    options.add_argument("--size", type=int, default=224, help="frame size of the synthetic videos (pixels)")
    options.add_argument("--fps", type=float, default=1.0, help="frames sampled per second, as extract --fps")
    options.add_argument("--grain", type=int, default=12, help="film grain added to the frames (0-255): real videos' bitrates, not a flat picture's")
    args = parse(options, smoke=dict(clips=2, seconds=1.0, size=64))

    import numpy as np

    from avfeat.data.synth_media import write_media
    from avfeat.extract.media import DecodeSpec, decode
    from avfeat.testing.media import clip_audio, clip_frames
    from avfeat.testing.servers import S3_TEST_ENV, make_shard

    root = work_folder(None, "avfeat-remote-")
    names = [f"clip{i:03d}.mp4" for i in range(args.clips)]
    (root / "clips").mkdir()
    rng = np.random.default_rng(0)
    for name in names:
        frames = clip_frames(args.seconds, (args.size, args.size)).astype(np.int16)
        frames += rng.integers(-args.grain, args.grain + 1, size=frames.shape, dtype=np.int16)
        write_media(root / "clips" / name, np.clip(frames, 0, 255).astype(np.uint8), 25, clip_audio(args.seconds), 16000)
    make_shard(root / "shard.tar", {Path(name).stem: (root / "clips" / name, {"caption": name}) for name in names})
    media_seconds = args.seconds * args.clips
    spec = DecodeSpec(fps=args.fps)

    parent, child = multiprocessing.get_context("spawn").Pipe()
    server = multiprocessing.get_context("spawn").Process(target=serve, args=(str(root), child), daemon=True)
    server.start()
    http_url, endpoint = parent.recv()
    os.environ.update(S3_TEST_ENV, AWS_ENDPOINT_URL=endpoint)
    sources = {
        "local files": [root / "clips" / n for n in names],
        "local tar members": [f"{root / 'shard.tar'}#{n}" for n in names],
        "http files": [f"{http_url}/clips/{n}" for n in names],
        "http tar members": [f"{http_url}/shard.tar#{n}" for n in names],
        "s3 files": [f"s3://{BUCKET}/clips/{n}" for n in names],
        "s3 tar members": [f"s3://{BUCKET}/shard.tar#{n}" for n in names],
    }
    figures = {
        "machine": machine(),
        "clips": args.clips,
        "clip_seconds": args.seconds,
        "clip_bytes": (root / "clips" / names[0]).stat().st_size,
        "fps": args.fps,
    }
    try:
        for paths in sources.values():  # warm up: imports, filesystems, connections
            decode(paths[0], spec)
        times = interleaved({kind: lambda paths=paths: [decode(path, spec) for path in paths] for kind, paths in sources.items()}, args.repeats)
        local = statistics.median(times["local files"])
        for kind, taken in times.items():
            figures[f"{kind}: media-s/s"] = round(media_seconds / statistics.median(taken), 1)
            figures[f"{kind}: time / local files"] = round(statistics.median(taken) / local, 2)
    finally:
        parent.send("done")
        server.join(30)
    print_figures(figures)


if __name__ == "__main__":
    main()
