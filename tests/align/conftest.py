"""A small synthetic token cache shared by the align tests, and the `acceptance` marker."""

from __future__ import annotations

import pytest

from avfeat.data.synth import make_corpus
from avfeat.testing import TINY_MODELS as TINY
from avfeat.testing import run_avfeat as avfeat


def pytest_configure(config):
    config.addinivalue_line("markers", "acceptance: the retrieval acceptance run (minutes on a CPU)")


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
