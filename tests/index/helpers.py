"""Test helpers: the tiny random backbones and the command line, run as users run it."""

from __future__ import annotations

import os
import subprocess
import sys

TINY = ["--audio-model", "random:hubert-tiny", "--visual-model", "random:dinov2-tiny"]


def avfeat(*args, check=None, timeout=600, threads=None):
    """Run ``python -m avfeat ARGS``; with ``check``, assert the exit status (stderr on failure).

    ``threads`` caps torch's intra-op threads (OMP_NUM_THREADS) in the child: small kernels
    run faster and far more steadily so on a shared few-core machine."""
    env = None if threads is None else {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    result = subprocess.run([sys.executable, "-m", "avfeat", *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)
    if check is not None:
        assert result.returncode == check, result.stderr[-3000:]
    return result
