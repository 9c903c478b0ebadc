"""benchmarks/manifest.py times each command it runs only when the command succeeded: an
`avfeat info --videos` that failed at once was once reported as the fastest figure."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def manifest_bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import manifest

    yield manifest
    sys.modules.pop("manifest", None)


def test_a_failed_command_stops_the_benchmark(manifest_bench, tmp_path):
    with pytest.raises(SystemExit, match="exited 1"):
        manifest_bench._cli("info", str(tmp_path), "--videos")  # not a cache


def test_each_stage_runs_on_a_small_cache(manifest_bench, tmp_path, capsys):
    manifest_bench.write_cache(tmp_path, 40, 10)
    for stage in manifest_bench.STAGES:
        manifest_bench.run_stage(stage, tmp_path, 40, 1)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(manifest_bench.STAGES) and '"new": 1' in lines[-1]
