"""Compact token storage chosen at extract time: `--storage int8` (per-token symmetric
quantization, scales in the shard) and `--pool-patches 2` (2x2 patch pooling in the Encoder).

Tiny `random:` models and synthetic videos, as every test; one small corpus per module."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from avfeat.data.cache import Cache
from avfeat.data.shards import ShardWriter, new_record, open_for_writing
from avfeat.data.codecs import dequantize_int8, quantize_int8
from avfeat.data.records import BackboneSpec
from avfeat.data.synth import make_corpus
from avfeat.core.errors import BackboneMismatchError, InputError
from avfeat.extract.encoder import pool_patch_tokens
from avfeat.testing.runner import TINY_MODELS as TINY
from avfeat.testing.runner import assert_same_cache
from avfeat.testing.runner import run_avfeat as avfeat
from avfeat.testing.runner import run_avfeat_process

THREADS = 1  # the caches of one corpus are compared token by token: one float-sum order


def extract(src, out, *extra, check=None):
    return avfeat("extract", src, "--out", out, *TINY, "--fps", 2, "--quiet", "--workers", 1, *extra, check=check, threads=THREADS)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("storage_corpus")
    make_corpus(folder, videos=6, seconds=3.0, classes=3, seed=0, size=96)
    return folder


@pytest.fixture(scope="module")
def float16_cache(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("f16") / "cache"
    extract(corpus, out, "--shard-size", 2, check=0)
    return out


@pytest.fixture(scope="module")
def int8_cache(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "cache"
    extract(corpus, out, "--shard-size", 2, "--storage", "int8", check=0)
    return out


@pytest.fixture(scope="module")
def pooled_cache(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("pool2") / "cache"
    extract(corpus, out, "--shard-size", 2, "--pool-patches", 2, check=0)
    return out


def _payload(root) -> int:
    total = 0
    for shard in (root / "shards").iterdir():
        with h5py.File(shard, "r") as handle:
            total += sum(handle[name].size * handle[name].dtype.itemsize for name in ("audio/tokens", "visual/tokens", "audio/scale", "visual/scale") if name in handle)
    return total


def _cosine(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


# ---- units ---------------------------------------------------------------------------------


def test_quantize_error_is_at_most_half_a_scale_and_zeros_and_nan_are_handled():
    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(50, 7, 48)).astype(np.float32) * rng.uniform(1e-3, 100, size=(50, 7, 1)).astype(np.float32)
    tokens[3, 2] = 0.0  # a token of all zeros
    q, scale = quantize_int8(tokens)
    assert q.dtype == np.int8 and q.shape == tokens.shape
    assert scale.dtype == np.float32 and scale.shape == tokens.shape[:-1]
    assert np.abs(q).max() == 127 and q.min() >= -127
    back = dequantize_int8(q, scale)
    assert back.dtype == np.float32
    error = np.abs(back - tokens)
    bound = scale[..., None] / 2 * (1 + 1e-5) + 1e-30
    assert (error <= bound).all(), float((error - bound).max())
    assert scale[3, 2] == 0 and (q[3, 2] == 0).all() and (back[3, 2] == 0).all()
    assert dequantize_int8(q, scale, "float16").dtype == np.float16
    for bad in (np.nan, np.inf):
        poisoned = tokens.copy()
        poisoned[0, 0, 0] = bad
        with pytest.raises(ValueError, match="non-finite"):
            quantize_int8(poisoned)


def test_int8_writer_records_non_finite_tokens_and_stores_scales(tmp_path):
    config = {"audio_model": "x", "visual_model": "y", "audio_layer": -1, "visual_layer": -1, "audio_dim": 8, "audio_token_rate": 50.0,
              "visual_dim": 4, "visual_tokens": 5, "fps": 1.0, "storage": "int8"}
    layout = open_for_writing(tmp_path / "cache", config)
    rng = np.random.default_rng(1)
    audio, visual = rng.normal(size=(10, 8)).astype(np.float32), rng.normal(size=(3, 5, 4)).astype(np.float32)
    bad = audio.copy()
    bad[4, 1] = np.nan
    with ShardWriter(layout, 0, audio_dim=8, visual_tokens_per_frame=5, visual_dim=4, attrs={}, storage="int8") as writer:
        writer.add(new_record("good", "good.mp4", 1, 0.0), audio, visual, np.arange(3.0))
        writer.add(new_record("bad", "bad.mp4", 1, 0.0), bad, visual, np.arange(3.0))
    with h5py.File(layout.shard_dir / "shard-00000.h5", "r") as shard:
        assert shard["audio/tokens"].dtype == np.int8 and shard["visual/tokens"].dtype == np.int8
        assert shard["audio/scale"].shape == (10,) and shard["visual/scale"].shape == (3, 5)
        assert shard.attrs["storage"] == "int8"
    cache = Cache(layout.root)
    assert cache.record("bad").status == "non_finite" and "non-finite" in cache.record("bad").error
    got = cache.read_audio("good")
    assert got.dtype == np.float16  # what float16 caches give readers
    np.testing.assert_allclose(got, audio, atol=float(np.abs(audio).max() / 127))
    assert _cosine(cache.read_frames("good"), visual).min() > 0.999


def test_pooling_averages_2x2_blocks_and_refuses_an_odd_grid():
    rng = np.random.default_rng(2)
    tokens = rng.normal(size=(3, 1 + 16, 5)).astype(np.float32)
    pooled = pool_patch_tokens(tokens, (4, 4), 2)
    assert pooled.shape == (3, 1 + 4, 5)
    np.testing.assert_array_equal(pooled[:, 0], tokens[:, 0])  # CLS first, untouched
    grid = tokens[:, 1:].reshape(3, 4, 4, 5)
    np.testing.assert_allclose(pooled[:, 1], grid[:, 0:2, 0:2].mean(axis=(1, 2)), rtol=1e-6)  # top left block
    np.testing.assert_allclose(pooled[:, 4], grid[:, 2:4, 2:4].mean(axis=(1, 2)), rtol=1e-6)  # bottom right
    assert pool_patch_tokens(tokens, (4, 4), 1) is tokens
    with pytest.raises(InputError) as refused:
        pool_patch_tokens(rng.normal(size=(1, 1 + 49, 5)).astype(np.float32), (7, 7), 2)
    assert "7x7" in str(refused.value) and "\n" not in str(refused.value)


def test_heads_of_another_patch_geometry_are_refused():
    base = dict(audio_model="a", visual_model="v", audio_dim=32, visual_dim=32)
    with pytest.raises(BackboneMismatchError, match="visual_tokens"):
        BackboneSpec(**base, visual_tokens=65).check_same(BackboneSpec(**base, visual_tokens=17), "heads H", "cache C")
    BackboneSpec(**base, visual_tokens=0).check_same(BackboneSpec(**base, visual_tokens=17), "heads H", "cache C")  # older files: unknown


# ---- through the command line -------------------------------------------------------------


def test_int8_cache_reads_float_tokens_close_to_float16(float16_cache, int8_cache):
    config = json.loads((int8_cache / "cache.json").read_text())
    assert config["storage"] == "int8" and config["pool_patches"] == 1 and config["storage_dtype"] == "float16"
    assert json.loads((float16_cache / "cache.json").read_text())["storage"] == "float16"
    for shard in (int8_cache / "shards").iterdir():
        with h5py.File(shard, "r") as handle:
            assert handle["audio/tokens"].dtype == np.int8 and "audio/scale" in handle and "visual/scale" in handle
            assert handle.attrs["storage"] == "int8"
    for shard in (float16_cache / "shards").iterdir():
        with h5py.File(shard, "r") as handle:
            assert handle["audio/tokens"].dtype == np.float16 and "audio/scale" not in handle
    small, full = Cache(int8_cache), Cache(float16_cache)
    assert [r.video_id for r in small.records()] == [r.video_id for r in full.records()]
    for record in full.records(status="ok"):
        for quantized, reference in ((small.audio_tokens(record.video_id), full.audio_tokens(record.video_id)),
                                     (small.visual_tokens(record.video_id), full.visual_tokens(record.video_id))):
            assert quantized.dtype == reference.dtype == np.float16 and quantized.shape == reference.shape
            assert _cosine(quantized, reference).min() >= 0.99
    # The token payload (a tiny corpus's files are mostly HDF5 chunk padding): int8 + a float32
    # scale per 32-d token is (32 + 4) / 64 of float16.
    assert _payload(int8_cache) < 0.6 * _payload(float16_cache)
    text = avfeat("info", int8_cache, check=0).stdout
    assert "stored as int8 with per-token float32 scales" in text
    report = json.loads(avfeat("info", int8_cache, "--json", check=0).stdout)
    assert report["storage"] == "int8" and report["pool_patches"] == 1
    assert "stored as float16" in avfeat("info", float16_cache, check=0).stdout


def test_int8_train_index_search_end_to_end(corpus, int8_cache, pooled_cache, tmp_path):
    heads, index = tmp_path / "heads", tmp_path / "index"
    avfeat("train-head", int8_cache, "--out", heads, "--window", 1.0, "--hop", 0.5, "--dim", 16, "--steps", 8,
           "--batch-size", 4, "--val-fraction", 0.34, "--workers", 0, "--quiet", check=0, threads=THREADS)
    avfeat("index", int8_cache, "--heads", heads, "--out", index, "--quiet", check=0, threads=THREADS)
    hits = json.loads(avfeat("search", index, corpus / "video_00000.mp4", "-k", 2, "--rerank", 4, "--json", check=0, threads=THREADS).stdout)
    assert [hit["rank"] for hit in hits] == [1, 2] and all(np.isfinite(hit["score"]) for hit in hits)
    # Heads of 1 + 64 patch tokens do not apply to a cache pooled to 1 + 16: one line.
    refused = avfeat("index", pooled_cache, "--heads", heads, "--out", tmp_path / "other", "--quiet")
    assert refused.returncode == 1 and "visual_tokens" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


def test_pool_patches_2_gives_the_mean_of_the_float16_patches(float16_cache, pooled_cache, corpus, tmp_path):
    config = json.loads((pooled_cache / "cache.json").read_text())
    assert config["pool_patches"] == 2 and config["visual_grid"] == [4, 4] and config["visual_tokens"] == 1 + 16
    full, pooled = Cache(float16_cache), Cache(pooled_cache)
    assert full.config.visual_tokens == 1 + 64 and pooled.spec.visual_grid == (4, 4)
    assert pooled.shard_attrs()["pool_patches"] == 2
    for record in full.records(status="ok"):
        tokens = full.visual_tokens(record.video_id).astype(np.float32)
        want = pool_patch_tokens(tokens, (8, 8), 2)
        got = pooled.visual_tokens(record.video_id)
        assert got.shape == (len(tokens), 17, full.config.visual_dim)
        # float16 rounding of the pooled tokens and of the 4 it averages: a few float16 ulps.
        np.testing.assert_allclose(got.astype(np.float32), want, rtol=4e-3, atol=4e-3 * np.abs(want).max())
        np.testing.assert_array_equal(pooled.audio_tokens(record.video_id), full.audio_tokens(record.video_id))
    assert "patches pooled 2x2 (4x4 grid)" in avfeat("info", pooled_cache, check=0).stdout
    # A query embedded at search time is pooled like the cache (the Encoder is shared).
    from avfeat.data.configs import TrainedOn
    from avfeat.index.query import Backbones

    query = Backbones(TrainedOn.from_dict(pooled.config.to_dict())).encode(corpus / "video_00000.mp4")
    assert query.visual.shape[1] == 17
    without_key = {k: v for k, v in pooled.config.to_dict().items() if k != "pool_patches"}  # a checkpoint's copy
    assert Backbones(TrainedOn.from_dict(without_key)).encode(corpus / "video_00000.mp4").visual.shape[1] == 17


def _snapshot(root):
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
            if p.is_file() and "lock" not in p.name}


@pytest.mark.parametrize("flags", [["--storage", "int8"], ["--pool-patches", "2"], ["--storage", "float16", "--pool-patches", "2"]])
def test_another_storage_onto_a_cache_is_refused_with_one_line(corpus, float16_cache, flags):
    before = _snapshot(float16_cache)
    refused = extract(corpus, float16_cache, "--resume", *flags)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "different config" in refused.stderr
    assert "storage" in refused.stderr or "pool_patches" in refused.stderr
    assert _snapshot(float16_cache) == before


def test_resume_keeps_the_storage_and_old_caches_read_as_float16(corpus, int8_cache, float16_cache, tmp_path):
    again = avfeat("extract", corpus, "--out", int8_cache, "--resume", "--quiet", check=0)  # the cache's own settings
    assert "6 already in the cache" in again.stdout
    assert "different config" in extract(corpus, int8_cache, "--resume", "--storage", "float16").stderr
    # A cache written before --storage existed: no storage or pool_patches in cache.json.
    old = tmp_path / "old"
    import shutil

    shutil.copytree(float16_cache, old)
    config = json.loads((old / "cache.json").read_text())
    del config["storage"], config["pool_patches"]
    (old / "cache.json").write_text(json.dumps(config))
    assert "6 already in the cache" in extract(corpus, old, "--resume", "--storage", "float16", "--pool-patches", "1", check=0).stdout
    assert "different config" in extract(corpus, old, "--resume", "--storage", "int8").stderr
    cache = Cache(old)
    assert cache.spec.storage == "float16" and cache.spec.pool_patches == 1
    assert json.loads(avfeat("info", old, "--json", check=0).stdout)["storage"] == "float16"


def _parts(out):
    return len(list((out / "manifest").glob("*.parquet"))) if (out / "manifest").is_dir() else 0


def test_int8_kill_at_random_moments_then_resume_gives_identical_cache(corpus, int8_cache, tmp_path):
    """The int8 variant of tests/extract/test_extract_cli.py's kill -9 test."""
    out = tmp_path / "cache"
    command = [sys.executable, "-m", "avfeat", "extract", str(corpus), "--out", str(out), *TINY, "--fps", "2", "--quiet",
               "--shard-size", "2", "--workers", "1", "--storage", "int8", "--resume"]
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)}
    rng = random.Random(4321)
    left_behind = []
    for target in range(3):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)
        delay = rng.uniform(0.0, 0.6)
        while process.poll() is None and _parts(out) < target:
            time.sleep(0.02)
        time.sleep(delay)
        if process.poll() is not None:
            break
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        left_behind.append(_parts(out))
    assert len(left_behind) >= 2 and min(left_behind) < 3, left_behind
    extract(corpus, out, "--shard-size", 2, "--resume", check=0)  # --storage comes from the cache
    assert not list(out.rglob("*.tmp"))
    assert_same_cache(out, int8_cache)
    raw = {}  # the stored int8 tokens and scales themselves, not only what readers make of them
    for root in (out, int8_cache):
        cache = Cache(root)
        raw[root] = {}
        for record in cache.records(status="ok"):
            handle = cache._shard(record.shard)
            a, v = slice(record.audio_offset, record.audio_offset + record.audio_length), slice(record.visual_offset, record.visual_offset + record.visual_length)
            raw[root][record.video_id] = [handle["audio/tokens"][a], handle["audio/scale"][a], handle["visual/tokens"][v], handle["visual/scale"][v]]
    assert raw[out].keys() == raw[int8_cache].keys()
    for vid, arrays in raw[out].items():
        for got, want in zip(arrays, raw[int8_cache][vid]):
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)


@pytest.mark.slow  # a local Ray starts: about a minute
@pytest.mark.usefixtures("one_ray_at_a_time")
def test_ray_int8_pooled_cache_equals_local(corpus, tmp_path):
    if subprocess.run([sys.executable, "-c", "import ray.data"], capture_output=True).returncode != 0:
        pytest.skip("Ray is not installed")
    flags = ("--shard-size", 3, "--storage", "int8", "--pool-patches", 2)
    extract(corpus, tmp_path / "local", *flags, check=0)
    # Ray starts its own processes: this command runs in its own process too.
    result = run_avfeat_process("extract", corpus, "--out", tmp_path / "ray", *TINY, "--fps", 2, "--quiet", "--workers", 1, *flags, "--ray",
                                check=0, threads=THREADS)
    assert "Traceback" not in result.stderr
    assert_same_cache(tmp_path / "ray", tmp_path / "local")
    assert Cache(tmp_path / "ray").config.visual_tokens == 17
