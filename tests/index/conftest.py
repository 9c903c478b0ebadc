"""One small synthetic cache, heads trained on it by `avfeat train-head`, and an index, shared
by the index tests (module-scoped fixtures would rebuild them per file; these are per session)."""

from __future__ import annotations

import pytest

from avfeat.data.synth import make_corpus
from avfeat.testing.runner import TINY_MODELS as TINY
from avfeat.testing.runner import run_avfeat as avfeat


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("index_corpus")
    make_corpus(folder, videos=8, seconds=3.0, classes=4, seed=0, size=64)
    return folder


@pytest.fixture(scope="session")
def cache(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("index_cache") / "cache"
    avfeat("extract", corpus, "--out", out, *TINY, "--fps", 5, "--quiet", "--workers", 1, check=0)
    return out


def train_heads(cache, out, seed=0, steps=20):
    avfeat(
        "train-head", cache, "--out", out, "--window", 1.0, "--hop", 0.2, "--dim", 32, "--steps", steps,
        "--batch-size", 6, "--seed", seed, "--val-fraction", 0.25, "--workers", 0, "--quiet", check=0,
    )
    return out


@pytest.fixture(scope="session")
def heads(cache, tmp_path_factory):
    return train_heads(cache, tmp_path_factory.mktemp("index_heads") / "heads")


@pytest.fixture(scope="session")
def index(cache, heads, tmp_path_factory):
    out = tmp_path_factory.mktemp("index_out") / "index"
    avfeat("index", cache, "--heads", heads, "--out", out, "--quiet", check=0)
    return out
