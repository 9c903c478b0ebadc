"""Test helpers: the tiny random backbones and the command line, run as users run it."""

from __future__ import annotations

import subprocess
import sys

TINY = ["--audio-model", "random:hubert-tiny", "--visual-model", "random:dinov2-tiny"]


def avfeat(*args, check=None, timeout=600):
    """Run ``python -m avfeat ARGS``; with ``check``, assert the exit status (stderr on failure)."""
    result = subprocess.run([sys.executable, "-m", "avfeat", *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if check is not None:
        assert result.returncode == check, result.stderr[-3000:]
    return result
