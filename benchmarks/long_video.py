"""Memory of sync and the audit on one long cached video (prints, never asserts).

A cache holding one synthetic video at the defaults' token sizes (HuBERT-base audio: 50
tokens/s × 768; DINOv2-small pictures: 257 tokens × 384 at 1 fps; float16 storage) is written
straight through the shard writer (no models), with random heads of the default width. Each
measurement runs in a fresh process, which prints its peak resident memory (ru_maxrss) and wall
time for `sync_cached` and for the audit's per-video measure (the lag curve, the per-frame
lag-0 scores, the picture spread and the first CROSS_SECONDS projected for the cross pairs):

- before: the whole video's tokens read into memory and scored as one chunk (the code before
  sync and the audit walked videos in time chunks);
- after: cache views read ``sync.CHUNK_SECONDS`` of frames (and the audio they reach) at a time.

    python benchmarks/long_video.py                 # 10 minutes and 1 hour (goal: ≤ 1 GB at an hour)
    python benchmarks/long_video.py --minutes 30    # other lengths
    python benchmarks/long_video.py --smoke         # a 2-minute video: does it run?
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _bench import machine, parse, parser, work_folder

AUDIO_RATE, AUDIO_DIM, VISUAL_TOKENS, VISUAL_DIM, FPS, DIM = 50.0, 768, 257, 384, 1.0, 256
MAX_OFFSET = 2.0


def write_cache(root: Path, minutes: float) -> None:
    """One video of ``minutes`` of random float16 tokens, committed by the real shard writer."""
    from avfeat.data.shards import ShardWriter, new_record, open_for_writing

    seconds = minutes * 60
    frames = int(seconds * FPS)
    rng = np.random.default_rng(0)
    # Random blocks, each row scaled differently: varied tokens without drawing ~1 GB of normals.
    audio_block = rng.standard_normal((997, AUDIO_DIM), dtype=np.float32)
    audio = np.resize(audio_block, (int(seconds * AUDIO_RATE), AUDIO_DIM)).astype(np.float16)
    audio *= rng.uniform(0.5, 1.5, (len(audio), 1)).astype(np.float16)
    visual_block = rng.standard_normal((61, VISUAL_TOKENS, VISUAL_DIM), dtype=np.float32).astype(np.float16)
    visual = np.resize(visual_block, (frames, VISUAL_TOKENS, VISUAL_DIM))
    visual *= rng.uniform(0.5, 1.5, (frames, 1, 1)).astype(np.float16)
    config = {"audio_model": "random:hubert-base", "visual_model": "random:dinov2-small", "audio_layer": -1, "visual_layer": -1,
              "fps": FPS, "audio_token_rate": AUDIO_RATE, "audio_dim": AUDIO_DIM, "visual_dim": VISUAL_DIM, "visual_tokens": VISUAL_TOKENS}
    layout = open_for_writing(root, config)
    record = new_record("long", "long.mp4", 0, 0.0).with_(duration=seconds, audio_rate=AUDIO_RATE, fps=FPS)
    with ShardWriter(layout, 0, audio_dim=AUDIO_DIM, visual_tokens_per_frame=VISUAL_TOKENS, visual_dim=VISUAL_DIM, attrs={}) as writer:
        writer.add(record, audio, visual, np.arange(frames) / FPS)


def measure(root: str, mode: str) -> dict:
    """In a fresh process: sync and the audit's per-video measure of the cached video."""
    import torch

    from avfeat.align.heads import AVHeads, HeadConfig
    from avfeat.data.cache import Cache
    from avfeat.index import sync
    from avfeat.index.audit.measure import CROSS_SECONDS, Tokens, lag_zero, spread

    torch.manual_seed(0)
    heads = AVHeads(HeadConfig(audio_dim=AUDIO_DIM, visual_dim=VISUAL_DIM, dim=DIM)).eval()
    cache = Cache(root)
    record = cache.ok_record("long")
    started = time.perf_counter()
    if mode == "before":  # the whole video in memory, one chunk
        sync.CHUNK_SECONDS = 1e9
        audio, frames = cache.read_audio(record), cache.read_frames(record)
        result = sync.sync_tokens(heads, audio, record.audio_start, record.audio_rate, frames, cache.frame_times(record), record.fps, MAX_OFFSET)
        sync_seconds = time.perf_counter() - started
        tokens = Tokens(audio, record.audio_start, record.audio_rate, frames, cache.frame_times(record), record.fps)
        first = frames[:, 0]
    else:
        result = sync.sync_cached(cache, "long", heads, MAX_OFFSET)
        sync_seconds = time.perf_counter() - started
        tokens = Tokens.read(cache, record)
        first = tokens.first_tokens()
    lag_zero(heads, tokens, tokens, MAX_OFFSET)
    spread(first)
    tokens.excerpt(heads, CROSS_SECONDS)
    total = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"peak_rss_mib": round(peak), "sync_s": round(sync_seconds, 1), "audit_measure_s": round(total - sync_seconds, 1),
            "offset": result.offset}


def run_child(root: Path, mode: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", str(root), mode], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the {mode} measurement failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(measure(sys.argv[2], sys.argv[3])))
        return
    found = parser(__doc__)
    found.add_argument("--minutes", type=float, nargs="+", default=[10.0, 60.0], help="video lengths to measure")
    found.add_argument("--work", type=Path, default=None, help="folder for the caches (default: a temporary one)")
    args = parse(found, {"minutes": [2.0]})
    folder = work_folder(args.work, "avfeat-long-video-")
    print(f"# {machine()}; audio {AUDIO_RATE:g}/s × {AUDIO_DIM}, pictures {VISUAL_TOKENS} × {VISUAL_DIM} at {FPS:g} fps, float16, heads dim {DIM}")
    print(f"{'video':>8} {'mode':>7} {'peak RSS MiB':>13} {'sync s':>8} {'audit measure s':>16}")
    for minutes in args.minutes:
        root = folder / f"cache-{minutes:g}min"
        if not (root / "cache.json").exists():
            write_cache(root, minutes)
        for mode in ("before", "after"):
            got = run_child(root, mode)
            print(f"{minutes:>6g} m {mode:>7} {got['peak_rss_mib']:>13,} {got['sync_s']:>8.1f} {got['audit_measure_s']:>16.1f}", flush=True)


if __name__ == "__main__":
    main()
