"""`avfeat extract --ray` on a 3-node Ray cluster on this machine, against the local job, and with a node lost (prints, never asserts).

Starts ``ray.cluster_utils.Cluster``: a head and two worker nodes, each with ``--node-cpus``
CPUs, all on loopback, the cache on this machine's disk (the storage every node shares). It
times on the same synthetic corpus:

- ``local``: ``avfeat extract`` without Ray;
- ``cluster``: ``avfeat extract --ray ADDRESS``;
- ``node lost``: the same, with a worker node removed once the first shard is committed; the
  job finishes (Ray places the lost work again) or stops in one line and is run again, and the
  time counts both runs. Its cache is checked to hold every video once.

Models are the tiny ``random:`` ones unless ``--models`` says otherwise, so the figures are
Ray's overheads (start-up, scheduling, transfers) more than compute.

    python benchmarks/ray_cluster.py                 # 48 videos of 4 s, shards of 4: a few minutes on 2 cores
    python benchmarks/ray_cluster.py --smoke         # 8 videos of 1 s: does it run?
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from _bench import machine, parse, parser, print_figures, work_folder

TINY = ["--audio-model", "random:hubert-tiny", "--visual-model", "random:dinov2-tiny"]


def command(src: Path, out: Path, args, address: str | None) -> list[str]:
    base = [sys.executable, "-m", "avfeat", "extract", str(src), "--out", str(out), "--fps", "2", "--shard-size", str(args.shard_size), "--quiet"]
    return base + (args.models or TINY) + (["--ray", address] if address else [])


def run(cmd: list[str], env: dict, lose=None, out: Path | None = None) -> tuple[float, int]:
    """Wall seconds of one run and its exit status; ``lose()`` is called once a shard is committed."""
    started = time.perf_counter()
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    while lose is not None and process.poll() is None:
        if out is not None and (out / "manifest").is_dir() and any((out / "manifest").glob("*.parquet")):
            lose()
            break
        time.sleep(0.2)
    _, stderr = process.communicate(timeout=1800)
    if process.returncode not in (0, 1) or "Traceback" in stderr:
        raise SystemExit(f"{' '.join(cmd[3:5])} failed:\n{stderr[-3000:]}")
    return time.perf_counter() - started, process.returncode


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--videos", type=int, default=48)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--shard-size", type=int, default=4)
    p.add_argument("--node-cpus", type=int, default=1, help="CPUs of the head and of each worker node")
    p.add_argument("--models", nargs="*", help="extract's model flags (default: the tiny random: models)")
    p.add_argument("--work", type=Path, help="folder for the corpus and caches (default: a temporary one)")
    args = parse(p, smoke={"videos": 8, "seconds": 1.0, "shard_size": 2})

    import ray.cluster_utils
    import pyarrow.parquet as pq

    from avfeat.data.synth import make_corpus

    work = work_folder(args.work, "avfeat-ray-cluster-")
    src = work / "videos"
    if not src.is_dir():
        make_corpus(src, videos=args.videos, seconds=args.seconds, classes=3, seed=3, size=64)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    figures: dict = {"machine": machine(), "videos": args.videos, "nodes": f"3 x {args.node_cpus} CPUs"}
    figures["local_s"] = round(run(command(src, work / "local", args, None), env)[0], 1)

    cluster = ray.cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": args.node_cpus})
    try:
        workers = [cluster.add_node(num_cpus=args.node_cpus) for _ in range(2)]
        cluster.wait_for_nodes()
        figures["cluster_s"] = round(run(command(src, work / "cluster", args, cluster.address), env)[0], 1)
        out = work / "lost"
        seconds, status = run(command(src, out, args, cluster.address), env, lose=lambda: cluster.remove_node(workers[0]), out=out)
        if status:  # stopped in one line: the same command resumes
            seconds += run(command(src, out, args, cluster.address), env)[0]
        figures["node_lost_s"] = round(seconds, 1)
        figures["node_lost_reruns"] = int(bool(status))
    finally:
        cluster.shutdown()
    ids = [i for part in (out / "manifest").glob("*.parquet") for i in pq.read_table(part)["video_id"].to_pylist()]
    figures["node_lost_videos_once"] = len(ids) == len(set(ids)) == args.videos
    print_figures(figures)


if __name__ == "__main__":
    main()
