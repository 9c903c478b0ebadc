"""benchmarks/gpu_check.py (`make gpu-check`), smoke-tested on the CPU with --small.

The figures that matter come from a GPU; here the point is that every stage runs, that its
figures carry the keys the README quotes, and that a failing stage is recorded in the JSON
instead of stopping the others.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"

# The figures each stage reports (a subset: the ones the README's GPU section quotes).
STAGE_KEYS = {
    "corpus": {"videos", "generate_s"},
    "backbones": {"visual", "audio", "dtype"},
    "extract": {"frames_per_s", "audio_seconds_per_s", "share_of_peak", "tflops_achieved", "e2e_over_model_only", "dtype"},
    "train": {"windows_per_s", "peak_memory_gib", "peak_memory_source", "batch_size"},
    "index": {"wall_s", "faiss", "audio", "visual"},
    "searcher": {"audio_query_ms", "visual_query_ms", "search_vectors_per_s"},
    "audit": {"videos", "wall_s", "seconds_per_media_hour"},
    "scores": {"geometry", "chunked_forward", "chunked_forward_backward", "naive_forward", "naive_forward_backward",
               "naive_over_chunked_forward", "naive_over_chunked_forward_backward"},
    "faiss": {"backend", "build_s", "queries_per_s_batched", "queries_per_s_single", "factory"},
}


def run_check(tmp_path: Path, *args: str, timeout: float) -> tuple[subprocess.CompletedProcess, dict]:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--small", "--work", str(tmp_path / "work"), *args],
        capture_output=True, text=True, timeout=timeout,
    )
    try:
        return result, json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"gpu_check printed no JSON (exit {result.returncode}): {result.stdout[-1000:]} {result.stderr[-2000:]}")


def test_a_failing_stage_is_recorded_and_the_others_still_run(tmp_path):
    # No corpus and no cache in the work folder: train-head fails; scores and faiss must still run.
    result, report = run_check(tmp_path, "--stages", "train,scores,faiss", timeout=180)
    assert result.returncode == 1
    assert report["failed_stages"] == ["train"]
    assert "error" in report["train"] and "cache" in report["train"]["error"]
    for stage in ("scores", "faiss"):
        assert STAGE_KEYS[stage] <= report[stage].keys(), (stage, report[stage])
    assert report["faiss"]["backend"] in ("faiss-cpu", "faiss-gpu", "faiss-gpu build, no GPU visible")
    assert report["scores"]["max_abs_difference"] < 1e-4  # chunked and naive max-mean agree
    assert "TFLOP/s" in report["peak_assumption"] and report["mode"] == "small"


@pytest.mark.slow
def test_every_stage_runs_in_the_small_cpu_mode(tmp_path):
    # 85-120 s on 2 shared CPU cores: 8 child processes, each importing torch and transformers.
    result, report = run_check(tmp_path, timeout=400)
    assert result.returncode == 0, {name: report[name] for name in report["failed_stages"]}
    for stage, keys in STAGE_KEYS.items():
        assert keys <= report[stage].keys(), (stage, report[stage])
    assert report["extract"]["frames"] > 0 and report["train"]["windows_per_s"] > 0
    assert report["searcher"]["audio_query_ms"]["hits"] > 0
