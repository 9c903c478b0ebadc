"""An index stays tied to its cache when `extract --resume` adds videos to it: search (rerank,
locate) goes on while the index holds every video of the cache that has a window, and says the
index is older than the cache (run `avfeat index --update`) when it lacks some."""

from __future__ import annotations

import shutil

from avfeat.data.cache import Cache
from avfeat.data.synth import make_corpus
from avfeat.testing.runner import TINY_MODELS as TINY
from avfeat.testing.runner import one_line_error
from avfeat.testing.runner import run_avfeat as avfeat


def test_search_after_extract_resume_adds_videos(cache, heads, index, tmp_path):
    grown, built = tmp_path / "cache", tmp_path / "index"
    shutil.copytree(cache, grown)
    avfeat("index", grown, "--heads", heads, "--out", built, "--quiet", check=0)
    video = Cache(grown).records(status="ok")[0].video_id
    query = f"{video}@0.0-1.0"
    extra = tmp_path / "extra"
    make_corpus(extra, videos=2, seconds=3.0, classes=2, seed=7, size=64)
    avfeat("extract", extra, "--out", grown, *TINY, "--fps", 5, "--quiet", "--workers", 1, "--resume", check=0)
    assert len(Cache(grown).records(status="ok")) == len(Cache(cache).records(status="ok")) + 2
    for option in ("--rerank", "--locate"):
        args = (option, 3) if option == "--rerank" else (option,)
        line = one_line_error(avfeat("search", built, query, *args), "older than the cache", "--update")
        assert "another cache" not in line
    avfeat("index", grown, "--heads", heads, "--out", built, "--update", "--quiet", check=0)
    avfeat("search", built, query, "--rerank", 3, check=0)
    avfeat("search", built, query, "--locate", check=0)
    # A cache that is truly another one is still refused as such.
    assert "another cache" in one_line_error(avfeat("search", built, query, "--rerank", 3, "--cache", cache))
