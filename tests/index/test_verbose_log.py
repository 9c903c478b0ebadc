"""`avfeat -v`: the choices a command makes, as ``LEVEL name: message`` lines on stderr."""

from __future__ import annotations

from avfeat.data.cache import Cache
from avfeat.testing.runner import run_avfeat as avfeat


def test_verbose_logs_the_cache_search_opens_and_plain_runs_log_nothing(index, cache):
    video = Cache(cache).records()[0].video_id
    plain = avfeat("search", index, f"{video}@0.0-2.0", "--json", check=0)
    verbose = avfeat("-v", "search", index, f"{video}@0.0-2.0", "--json", check=0)
    assert verbose.stdout == plain.stdout  # the output itself does not change
    lines = [line for line in verbose.stderr.splitlines() if line.startswith("INFO avfeat.")]
    assert any(line.startswith("INFO avfeat.index.vector_search: cache ") for line in lines), verbose.stderr
    assert "INFO " not in plain.stderr and "DEBUG " not in plain.stderr


def test_verbose_logs_the_index_kind(cache, heads, tmp_path):
    done = avfeat("-v", "index", cache, "--heads", heads, "--out", tmp_path / "index", "--quiet", check=0)
    assert any(line.startswith("INFO avfeat.index.build: index ") for line in done.stderr.splitlines()), done.stderr


def test_verbose_logs_the_training_schedule(cache, tmp_path):
    done = avfeat("-v", "train-head", cache, "--out", tmp_path / "heads", "--window", 1.0, "--hop", 0.2, "--dim", 16, "--steps", 2,
                  "--batch-size", 4, "--val-fraction", 0.25, "--workers", 0, "--quiet", check=0)
    assert any(line.startswith("INFO avfeat.align.schedule: schedule: ") for line in done.stderr.splitlines()), done.stderr
