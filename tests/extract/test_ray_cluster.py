"""`avfeat extract --ray ADDRESS` on a multi-node Ray cluster (on this machine) that loses a node."""

import os
import subprocess
import sys
import time

import pytest

import pyarrow.parquet as pq

from avfeat.data.synth import make_corpus
from avfeat.testing.runner import TINY_MODELS as TINY
from avfeat.testing.runner import assert_same_cache
from avfeat.testing.runner import run_avfeat_process as avfeat

cluster_utils = pytest.importorskip("ray.cluster_utils", reason="Ray is not installed (pip install 'ray[data]'); CI installs it")

THREADS = 1  # one torch thread on both sides: the caches are compared bit for bit (see test_ray.py)
ARGS = ("--fps", 2, "--shard-size", 2, "--quiet")
# A stalled job stops in one line after 90 s without a committed shard, well within the test's bounds.
ENV = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS), "AVFEAT_RAY_STALL_SECONDS": "90"}


def extract_popen(src, out, address):
    command = [sys.executable, "-m", "avfeat", "extract", str(src), "--out", str(out), *TINY, *map(str, ARGS), "--ray", address]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def wait_for_commit(out, process, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if (out / "manifest").is_dir() and list((out / "manifest").glob("*.parquet")):
            return
        time.sleep(0.2)
    pytest.fail(f"no shard committed within {timeout} s (exit {process.poll()})")


@pytest.mark.slow  # a 3-node Ray cluster on this machine: about two minutes
@pytest.mark.usefixtures("one_ray_at_a_time")
def test_losing_a_worker_node_mid_job_keeps_the_cache_exact(tmp_path):
    src = tmp_path / "videos"
    make_corpus(src, videos=24, seconds=1.0, classes=3, seed=2, size=64)
    local = tmp_path / "local"
    avfeat("extract", src, "--out", local, *TINY, *ARGS, check=0, threads=THREADS, timeout=300)

    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    process = None
    try:
        workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        out = tmp_path / "cache"
        process = extract_popen(src, out, cluster.address)
        wait_for_commit(out, process, timeout=150)
        cluster.remove_node(workers[0])  # a worker node dies with whatever ran on it
        try:
            _, stderr = process.communicate(timeout=240)  # a hang fails here, never the CI job
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            pytest.fail("extract --ray hung after a worker node was lost")
        assert "Traceback" not in stderr
        if process.returncode != 0:  # stopped in one line: the same command resumes
            errors = [line for line in stderr.splitlines() if line.startswith("avfeat: error:")]
            assert len(errors) == 1 and "run again to resume" in errors[0], stderr[-3000:]
            rerun = extract_popen(src, out, cluster.address)
            _, stderr = rerun.communicate(timeout=240)
            assert rerun.returncode == 0, stderr[-3000:]
    finally:
        if process is not None and process.poll() is None:
            process.kill()
        cluster.shutdown()

    ids = [i for part in sorted((out / "manifest").glob("*.parquet")) for i in pq.read_table(part)["video_id"].to_pylist()]
    assert len(ids) == len(set(ids)) == 24  # every part's rows: no video committed twice
    assert_same_cache(out, local, ignore=("shard",))
