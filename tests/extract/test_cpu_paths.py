"""CPU compute paths: ``--dtype int8`` (dynamically quantized linears) against float32, how the
cache records it, and where it is refused."""

import sys

import numpy as np
import pytest
import torch

from avfeat.data.cache import Cache
from avfeat.core.errors import AvfeatError
from avfeat.extract import encoder as encoder_module
from avfeat.extract.encoder import resolve_dtype
from avfeat.extract.models import load_audio_backbone, load_visual_backbone
from avfeat.testing.runner import TINY_MODELS as TINY
from avfeat.testing.media import make_clip
from avfeat.testing.runner import run_avfeat as avfeat

# The tiny random models' level (their tokens measured at min cosine > 0.999 against float32);
# the real-size random models measure mean > 0.999, min > 0.998 (benchmarks/cpu_inference.py).
COSINE = 0.99


def extract(src, out, *extra, check=None):
    return avfeat("extract", src, "--out", out, *TINY, "--fps", 2, "--quiet", "--workers", 0, *extra, check=check, threads=1)


def _cosine(a, b):
    a = np.asarray(a, np.float64).reshape(-1, a.shape[-1])
    b = np.asarray(b, np.float64).reshape(-1, b.shape[-1])
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    root = tmp_path_factory.mktemp("cpu_paths")
    (root / "in").mkdir()
    make_clip(root / "in" / "a.mp4", seconds=2.0)
    extract(root / "in", root / "f32", "--dtype", "float32", check=0)
    extract(root / "in", root / "int8", "--dtype", "int8", check=0)
    return root


def test_int8_cache_tokens_match_float32_and_record_int8(caches):
    f32, int8 = Cache(caches / "f32"), Cache(caches / "int8")
    assert int8.shard_attrs()["compute_dtype"] == "int8" and f32.shard_attrs()["compute_dtype"] == "float32"
    (video,) = [r.video_id for r in f32.records()]
    for read in ("audio_tokens", "visual_tokens"):
        a, b = getattr(f32, read)(video), getattr(int8, read)(video)
        assert a.shape == b.shape and a.size
        assert _cosine(a, b).min() >= COSINE, read
        assert not np.array_equal(a, b)  # int8 really computed them


def test_resuming_an_int8_cache_with_float32_is_refused_in_one_line(caches):
    make_clip(caches / "in" / "b.mp4", seconds=1.0)
    try:
        result = extract(caches / "in", caches / "int8", "--resume", "--dtype", "float32", check=1)
    finally:
        (caches / "in" / "b.mp4").unlink()
    assert "computed in int8, this run would compute float32; pass --dtype int8" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and len(Cache(caches / "int8").records()) == 1


def test_int8_linears_are_quantized_and_other_layers_stay_float32():
    visual = load_visual_backbone("random:dinov2-tiny", dtype="int8")
    kinds = {m._get_name() for m in visual.model.modules()}  # the quantized class is also named Linear
    assert "DynamicQuantizedLinear" in kinds and "Linear" not in kinds and "Conv2d" in kinds
    assert visual.dtype == "int8" and visual.config_summary()["dtype"] == "int8"
    assert next(visual.model.parameters()).dtype == torch.float32


def test_int8_matches_float32_on_a_synthetic_clip_in_process():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (3, 112, 112, 3), dtype=np.uint8)
    wave = (0.3 * np.sin(np.arange(16000) * 0.05) + rng.normal(0, 0.05, 16000)).astype(np.float32)
    for load, data in ((load_visual_backbone, frames), (load_audio_backbone, [wave])):
        spec = "random:dinov2-tiny" if load is load_visual_backbone else "random:hubert-tiny"
        ref, got = (load(spec, dtype=d).encode(data) for d in ("float32", "int8"))
        ref, got = (np.concatenate(x) if isinstance(x, list) else x for x in (ref, got))
        assert _cosine(ref, got).min() >= COSINE


def test_int8_on_cuda_is_refused_in_one_line(monkeypatch, capsys):
    with pytest.raises(AvfeatError, match="--dtype int8 runs on the CPU only"):
        resolve_dtype("int8", "cuda:0")
    # As if there were a GPU: refused before any weights load or anything is written.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(AvfeatError, match="int8 runs on the CPU only"):
        load_visual_backbone("random:dinov2-tiny", device="cuda", dtype="int8")
    from avfeat.cli import main

    monkeypatch.setattr(sys, "argv", ["avfeat", "extract", "nowhere", "--out", "never", *TINY, "--device", "cuda", "--dtype", "int8"])
    with pytest.raises(SystemExit) as exit:
        main()
    err = capsys.readouterr().err
    assert exit.value.code == 1 and "--dtype int8 runs on the CPU only, not on cuda" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("bf16, engines, capability, expected", [
    (True, ["x86", "fbgemm"], "AVX512", "bfloat16"),
    (False, ["x86", "fbgemm", "onednn"], "AVX2", "int8"),
    (False, ["x86", "fbgemm"], "AVX512", "int8"),
    (False, ["qnnpack"], "DEFAULT", "float32"),
    (False, ["x86", "fbgemm"], "DEFAULT", "float32"),
])
def test_auto_picks_int8_only_on_x86_cpus_without_native_bfloat16(monkeypatch, bf16, engines, capability, expected):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: bf16)
    monkeypatch.setattr(encoder_module, "_quantized_engines", lambda: set(engines))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert resolve_dtype("auto", "cpu") == expected
    assert resolve_dtype("auto", "cuda") == "bfloat16"
    assert resolve_dtype("float32", "cpu") == "float32"
    assert encoder_module.cpu_int8_wins() is (capability != "DEFAULT" and "x86" in engines)
