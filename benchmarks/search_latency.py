"""Latency of one `avfeat search` from a shell, local against --server (prints, never asserts).

Builds a small synthetic index with the tiny random backbones (``--videos`` clips of 3 s; the
figures are the process's and the round trip's cost, not the models'), starts `avfeat serve`
on it, waits until it is warm, then times ``avfeat search INDEX ID@S-E`` and
``avfeat search --server URL ID@S-E``, each a fresh process as a user runs it, interleaved,
median of ``--repeats``. The local run loads torch, FAISS, the index, heads and cache; the
--server run loads none of them.

    python benchmarks/search_latency.py              # 16 videos, 9 repeats: about a minute
    python benchmarks/search_latency.py --smoke      # 4 videos, 1 repeat: does it run?
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path

from _bench import interleaved, machine, parse, parser, print_figures, work_folder


def build(folder: Path, videos: int) -> tuple[Path, str]:
    """A cache, heads and index of ``videos`` synthetic clips; the index and one query span."""
    from avfeat.data.cache import Cache
    from avfeat.data.synth import make_corpus
    from avfeat.testing.runner import TINY_MODELS
    from avfeat.testing.runner import run_avfeat as avfeat

    make_corpus(folder / "corpus", videos=videos, seconds=3.0, classes=4, seed=0, size=64)
    avfeat("extract", folder / "corpus", "--out", folder / "cache", *TINY_MODELS, "--fps", 5, "--quiet", "--workers", 1, check=0)
    avfeat("train-head", folder / "cache", "--out", folder / "heads", "--window", 1.0, "--hop", 0.5, "--dim", 32, "--steps", 10,
           "--batch-size", 4, "--val-fraction", 0.25, "--workers", 0, "--quiet", check=0)
    avfeat("index", folder / "cache", "--heads", folder / "heads", "--out", folder / "index", "--quiet", check=0)
    return folder / "index", f"{Cache(folder / 'cache').records()[0].video_id}@0.5-2.5"


def run(*args) -> None:
    done = subprocess.run([sys.executable, "-m", "avfeat", "search", *map(str, args)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"avfeat search failed: {done.stderr.strip()[-500:]}")


def main() -> None:
    args = parse(_parser(), {"videos": 4})
    from avfeat.testing.servers import serve_index

    index, query = build(work_folder(args.work, "avfeat-search-latency-"), args.videos)
    with serve_index(index) as url:
        times = interleaved({"local": lambda: run(index, query), "server": lambda: run("--server", url, query)},
                            repeats=args.repeats, warmup=1)
    local, remote = statistics.median(times["local"]), statistics.median(times["server"])
    print_figures({"machine": machine(), "videos": args.videos, "repeats": args.repeats, "local_search_s": round(local, 3),
                   "server_search_s": round(remote, 3), "speedup": round(local / remote, 1)})


def _parser():
    found = parser(__doc__, repeats=9)
    found.add_argument("--videos", type=int, default=16, help="synthetic clips in the index")
    found.add_argument("--work", type=Path, default=None, help="folder for the corpus, cache, heads and index (default: a temporary one)")
    return found


if __name__ == "__main__":
    main()
