"""Every benchmark still runs: ``python benchmarks/<name>.py --smoke`` exits 0 and prints figures.

A benchmark is run by hand, rarely, so a refactor can break one unseen (benchmarks/extract.py
once failed on an attribute that had moved). ``--smoke`` runs each one's code paths on tiny
inputs in seconds (benchmarks/_bench.py); the figures are not checked, only that it runs. Each
runs as a script in a child process, as a user runs it: its own folder is first on sys.path,
which is how it finds ``_bench``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Every script under benchmarks/ (test_every_benchmark_has_a_smoke_test holds this list to the folder).
BENCHMARKS = [
    "acceptance", "audit", "cpu_inference", "decode", "extract", "gpu_check", "index_update", "long_video", "manifest",
    "ray_cluster", "remote", "search", "search_latency", "segments", "serve", "storage", "stream", "train",
]
# gpu_check's --smoke is its `--device cpu --small` mode, which test_gpu_check.py runs and checks
# stage by stage; running it here again would cost a minute for nothing.
SMOKED_ELSEWHERE = {"gpu_check"}
TIMEOUT = 240  # seconds; a smoke run takes 1-40 s on a shared 2-core CPU
# ... but for starting a three-node Ray cluster, its actors and a node loss: about 2.5 min on a busy 2-core CPU
TIMEOUTS = {"ray_cluster": 600}


def test_every_benchmark_has_a_smoke_test():
    # benchmarks/_*.py (_bench.py, _flops.py) are modules the scripts share, not benchmarks
    found = {path.stem for path in (REPO / "benchmarks").glob("*.py") if not path.stem.startswith("_")}
    assert found == set(BENCHMARKS), f"benchmarks without a smoke test: {sorted(found - set(BENCHMARKS))}; listed but gone: {sorted(set(BENCHMARKS) - found)}"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(BENCHMARKS) - SMOKED_ELSEWHERE))
def test_benchmark_smoke_run(name, request):
    if name == "ray_cluster":  # a Ray cluster of its own: one Ray at a time on this machine
        request.getfixturevalue("one_ray_at_a_time")
    result = subprocess.run(
        [sys.executable, f"benchmarks/{name}.py", "--smoke"],
        cwd=REPO, capture_output=True, text=True, timeout=TIMEOUTS.get(name, TIMEOUT),
    )
    assert result.returncode == 0, f"benchmarks/{name}.py --smoke exited {result.returncode}:\n{result.stderr[-3000:]}"
    assert result.stdout.strip(), f"benchmarks/{name}.py --smoke printed nothing:\n{result.stderr[-3000:]}"
