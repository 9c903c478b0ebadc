"""A small synthetic token cache shared by the align tests, and the `acceptance` marker."""

from __future__ import annotations

import subprocess
import sys

import pytest

from avfeat.data.synth import make_corpus

TINY = ["--audio-model", "random:hubert-tiny", "--visual-model", "random:dinov2-tiny"]


def pytest_configure(config):
    config.addinivalue_line("markers", "acceptance: the retrieval acceptance run (minutes on a CPU)")


def avfeat(*args, check=None):
    """Run the real command line; assert the exit code when ``check`` is given."""
    result = subprocess.run([sys.executable, "-m", "avfeat", *map(str, args)], capture_output=True, text=True, timeout=600)
    if check is not None:
        assert result.returncode == check, result.stderr[-3000:]
    return result


def build_cache(folder, videos: int, seconds: float, classes: int, fps: float, size: int = 64, seed: int = 0):
    """Synthetic videos + `avfeat extract` with the tiny random backbones → (corpus, cache)."""
    corpus, cache = folder / "corpus", folder / "cache"
    make_corpus(corpus, videos=videos, seconds=seconds, classes=classes, seed=seed, size=size)
    avfeat("extract", corpus, "--out", cache, *TINY, "--fps", fps, "--quiet", "--workers", 1, check=0)
    return corpus, cache


@pytest.fixture(scope="session")
def small_cache(tmp_path_factory):
    """8 videos of 3 s at 4 fps: enough for batches of 4 and a validation split."""
    _, cache = build_cache(tmp_path_factory.mktemp("align_small"), videos=8, seconds=3.0, classes=4, fps=4)
    return cache
