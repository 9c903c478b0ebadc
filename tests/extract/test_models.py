"""Backbone loading and batched preprocessing, held against the reference transformers processors.

Offline and deterministic: only ``random:`` architectures and directories saved from them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from avfeat.core.errors import ModelError
from avfeat.extract.media import DecodeSpec  # noqa: E402
from avfeat.extract.models import (  # noqa: E402
    RANDOM_ARCHS,
    build_random,
    load_audio_backbone,
    load_visual_backbone,
)

SR = 16000


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(-1, a.shape[-1]).astype(np.float64)
    b = b.reshape(-1, b.shape[-1]).astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)


def _wave(seconds: float, seed: int = 0) -> np.ndarray:
    """Speech-like test signal: noise plus a chirp, with a DC offset and a non-unit scale."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    w = 0.2 * rng.standard_normal(n) + 0.5 * np.sin(2 * np.pi * (200 + 150 * t) * t) + 0.3
    return w.astype(np.float32)


def _save(tmp_path, name, model, processor):
    d = tmp_path / name
    model.save_pretrained(d)
    processor.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def tiny_audio():
    return load_audio_backbone("random:hubert-tiny")


@pytest.fixture(scope="module")
def tiny_visual():
    return load_visual_backbone("random:dinov2-tiny")


# ------------------------------------------------------------------------------- arch table


def test_random_arch_table_dims():
    from transformers import Dinov2Config, HubertConfig

    expect = {
        "hubert-base": (768, 12),
        "hubert-large": (1024, 24),
        "dinov2-small": (384, 12),
        "dinov2-base": (768, 12),
        "dinov2-large": (1024, 24),
    }
    for arch, (dim, layers) in expect.items():
        a = RANDOM_ARCHS[arch]
        cfg = (HubertConfig if a.family == "audio" else Dinov2Config)(**a.config)
        assert (cfg.hidden_size, cfg.num_hidden_layers) == (dim, layers), arch
    large = HubertConfig(**RANDOM_ARCHS["hubert-large"].config)
    assert large.do_stable_layer_norm and large.feat_extract_norm == "layer"
    assert RANDOM_ARCHS["hubert-large"].processor["do_normalize"] is True


def test_build_random_is_deterministic():
    m1, _ = build_random("hubert-tiny")
    m2, _ = build_random("random:hubert-tiny")
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert s1.keys() == s2.keys()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)


# ------------------------------------------------------------------------------- audio


def test_audio_rates_and_summary(tiny_audio):
    a = tiny_audio
    assert a.sample_rate == 16000 and a.token_rate == 50.0 and a.min_samples == 400
    assert a.dim == 32 and a.is_random
    summary = a.config_summary()
    json.dumps(summary)
    assert summary["spec"] == "random:hubert-tiny" and summary["layer"] == -1 and summary["dim"] == 32


@pytest.mark.parametrize("n", [399, 400, 401, 16000, 16000 * 3 + 123])
def test_num_tokens_matches_model(tiny_audio, n):
    model, _ = build_random("hubert-tiny")
    w = _wave(n / SR + 0.01, seed=n)[:n]
    out = tiny_audio.encode([w])[0]
    assert out.shape == (tiny_audio.num_tokens(n), 32)
    assert out.dtype == np.float32
    if n >= 400:
        with torch.inference_mode():
            ref = model(torch.from_numpy(w)[None]).last_hidden_state[0].numpy()
        assert ref.shape[0] == tiny_audio.num_tokens(n)
        np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-4)
    else:
        assert tiny_audio.num_tokens(n) == 0


def test_audio_matches_reference_feature_extractor(tiny_audio):
    model, fe = build_random("hubert-tiny")
    assert fe.do_normalize is False and fe.sampling_rate == 16000
    w = _wave(3.3, seed=1)
    inputs = fe(w, sampling_rate=16000, return_tensors="pt")
    with torch.inference_mode():
        ref = model(inputs.input_values).last_hidden_state[0].numpy()
    ours = tiny_audio.encode([w])[0]
    assert ours.shape == ref.shape
    assert _cos(ours, ref).min() >= 0.99


def _layer_norm_tiny_hubert():
    """A tiny HuBERT-large-like model (layer norm feature extractor), whose tokens do depend on
    the input's offset and scale, so a missing or wrong waveform normalisation shows."""
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    cfg = HubertConfig(
        conv_dim=(32,) * 7,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        conv_bias=True,
    )
    torch.manual_seed(1)
    model = HubertModel(cfg).eval()
    fe = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=True
    )
    return model, fe


def test_audio_do_normalize_matches_reference(tmp_path):
    model, fe = _layer_norm_tiny_hubert()
    d = _save(tmp_path, "hubert-ln", model, fe)
    ours_bb = load_audio_backbone(str(d))
    assert ours_bb.do_normalize and not ours_bb.is_random
    w = 3.0 * _wave(2.7, seed=2) + 1.5
    inputs = fe(w, sampling_rate=16000, return_tensors="pt")
    with torch.inference_mode():
        ref = model(inputs.input_values).last_hidden_state[0].numpy()
        raw = model(torch.from_numpy(w)[None]).last_hidden_state[0].numpy()
    ours = ours_bb.encode([w])[0]
    assert ours.shape == ref.shape
    assert _cos(ours, ref).min() >= 0.99
    # the check can fail: skipping the normalisation visibly changes the tokens
    assert _cos(raw, ref).mean() < 0.99


def test_long_audio_stitching_equals_single_pass(tiny_audio):
    model, _ = build_random("hubert-tiny")
    w = np.random.default_rng(3).standard_normal(75 * SR).astype(np.float32)
    n_tok = tiny_audio.num_tokens(len(w))
    assert len(tiny_audio._plan(len(w))) == 3  # really windowed (30 s cores)
    ours = tiny_audio.encode([w])[0]
    with torch.inference_mode():
        ref = model(torch.from_numpy(w)[None]).last_hidden_state[0].numpy()
    assert ours.shape == ref.shape == (n_tok, 32)
    cos = _cos(ours, ref)
    assert cos.min() >= 0.999
    # misaligning by a single token would be caught
    assert _cos(ours[1:], ref[:-1]).mean() < 0.9


def test_short_windows_stitching_and_alignment():
    # small windows + short context: many windows, including a short last one. Stationary noise:
    # on non-stationary audio windows legitimately differ from one pass (HuBERT-base's group
    # norm and attention span the whole input).
    bb = load_audio_backbone("random:hubert-tiny", window_seconds=3.0, context_seconds=1.0)
    model, _ = build_random("hubert-tiny")
    w = np.random.default_rng(4).standard_normal(int(10.37 * SR)).astype(np.float32)
    plan = bb._plan(len(w))
    assert len(plan) == 4 and all(start % 320 == 0 for start, _, _, _ in plan)
    ours = bb.encode([w])[0]
    with torch.inference_mode():
        ref = model(torch.from_numpy(w)[None]).last_hidden_state[0].numpy()
    assert ours.shape == ref.shape
    cos = _cos(ours, ref)
    assert cos.mean() >= 0.999 and cos.min() >= 0.99
    assert _cos(ours[1:], ref[:-1]).mean() < 0.9


def test_batch_independence(tiny_audio):
    a = _wave(4.0, seed=5)
    b = _wave(4.0, seed=6)  # same length as a: shares its batch
    c = _wave(2.5, seed=7)
    alone = tiny_audio.encode([a])[0]
    together = tiny_audio.encode([a, b, c], batch_size=8)
    assert [t.shape[0] for t in together] == [tiny_audio.num_tokens(len(x)) for x in (a, b, c)]
    np.testing.assert_allclose(together[0], alone, atol=1e-5)
    np.testing.assert_allclose(together[2], tiny_audio.encode([c])[0], atol=1e-5)
    assert not np.allclose(together[0], together[1], atol=1e-3)


# ------------------------------------------------------------------------------- visual


def test_visual_geometry_matches_decode_spec():
    v = load_visual_backbone("random:dinov2-small")
    g = v.decode_spec_geometry()
    assert g == {"shortest_edge": 256, "size": None, "crop": (224, 224)}
    spec = DecodeSpec(**g)
    assert spec.crop == (224, 224)
    assert v.grid == (16, 16) and v.num_patches == 256 and v.dim == 384
    json.dumps(v.config_summary())


def test_visual_matches_reference_processor():
    from PIL import Image

    model, proc = build_random("dinov2-small")
    v = load_visual_backbone("random:dinov2-small")
    rng = np.random.default_rng(8)
    # smooth-ish random RGB image of odd size: low-res noise upsampled, plus fine noise
    base = rng.integers(0, 256, (31, 43, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((300, 217), Image.BILINEAR)
    arr = np.clip(np.asarray(img).astype(np.int16) + rng.integers(-20, 21, (217, 300, 3)), 0, 255)
    img = Image.fromarray(arr.astype(np.uint8))

    with torch.inference_mode():
        pixel_values = proc(images=img, return_tensors="pt").pixel_values
        ref = model(pixel_values=pixel_values).last_hidden_state.numpy()

    # stand-in for the decoder: scale the shorter side to shortest_edge, then centre-crop
    g = v.decode_spec_geometry()
    se, (ch, cw) = g["shortest_edge"], g["crop"]
    w, h = img.size
    nw, nh = (int(se * w / h), se) if h <= w else (se, int(se * h / w))
    scaled = np.asarray(img.resize((nw, nh), Image.BICUBIC))
    top, left = (nh - ch) // 2, (nw - cw) // 2
    frame = scaled[top: top + ch, left: left + cw]

    ours = v.encode(frame[None])
    assert ours.shape == ref.shape == (1, 257, 384)
    assert _cos(ours, ref).mean() >= 0.99
    # the check can fail: unnormalised pixels give clearly different tokens
    with torch.inference_mode():
        wrong = model(pixel_values=torch.from_numpy(frame.copy()).permute(2, 0, 1)[None].float() / 255).last_hidden_state
    assert _cos(wrong.numpy(), ref).mean() < 0.99


def test_tiny_visual_on_the_defaults_patch_grid():
    v = load_visual_backbone("random:dinov2-tiny-224")
    assert v.decode_spec_geometry() == {"shortest_edge": 256, "size": None, "crop": (224, 224)}
    assert v.grid == (16, 16) and v.num_patches == 256 and v.dim == 32
    frames = np.random.default_rng(3).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    assert v.encode(frames).shape == (2, 257, 32)


def test_visual_encode_shapes_and_batching(tiny_visual):
    v = tiny_visual
    assert v.decode_spec_geometry() == {"shortest_edge": 128, "size": None, "crop": (112, 112)}
    assert v.grid == (8, 8) and v.num_patches == 64
    frames = np.random.default_rng(9).integers(0, 256, (5, 112, 112, 3), dtype=np.uint8)
    out = v.encode(frames, batch_size=2)
    assert out.shape == (5, 65, 32) and out.dtype == np.float32
    np.testing.assert_allclose(v.encode(frames[3:4]), out[3:4], atol=1e-5)
    with pytest.raises(ValueError):
        v.encode(frames[:, :100])


def test_visual_geometry_from_height_width_processor(tmp_path):
    from transformers import AutoImageProcessor

    model, proc = build_random("dinov2-tiny")
    proc = AutoImageProcessor.from_pretrained(_save(tmp_path, "d0", model, proc))
    proc.size = {"height": 126, "width": 154}
    proc.do_center_crop = False
    d = _save(tmp_path, "d1", model, proc)
    v = load_visual_backbone(str(d))
    assert v.decode_spec_geometry() == {"shortest_edge": None, "size": (126, 154), "crop": None}
    assert v.grid == (9, 11) and v.num_patches == 99
    out = v.encode(np.zeros((2, 126, 154, 3), dtype=np.uint8))
    assert out.shape == (2, 100, 32)


# ------------------------------------------------------------------------------- round trip


def test_save_pretrained_round_trip_audio(tmp_path, tiny_audio):
    d = _save(tmp_path, "hubert-tiny", *build_random("hubert-tiny"))
    loaded = load_audio_backbone(str(d))
    assert loaded.is_random  # the saved config remembers the random spec
    waves = [_wave(2.0, seed=10), _wave(1.3, seed=11)]
    for x, y in zip(loaded.encode(waves), tiny_audio.encode(waves)):
        assert np.array_equal(x, y)
    assert loaded.config_summary()["spec"] == str(d)


def test_save_pretrained_round_trip_visual(tmp_path, tiny_visual):
    d = _save(tmp_path, "dinov2-tiny", *build_random("dinov2-tiny"))
    loaded = load_visual_backbone(str(d))
    assert loaded.decode_spec_geometry() == tiny_visual.decode_spec_geometry()
    frames = np.random.default_rng(12).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    assert np.array_equal(loaded.encode(frames), tiny_visual.encode(frames))


# ------------------------------------------------------------------------------- layers


def test_audio_layer_selection(tiny_audio):
    model, _ = build_random("hubert-tiny")
    w = _wave(1.5, seed=13)
    with torch.inference_mode():
        full = model(torch.from_numpy(w)[None], output_hidden_states=True)
    outs = {}
    for k in (0, 1, 2):
        bb = load_audio_backbone("random:hubert-tiny", layer=k)
        outs[k] = bb.encode([w])[0]
        np.testing.assert_allclose(outs[k], full.hidden_states[k][0].numpy(), atol=1e-5, rtol=1e-4)
        assert bb.config_summary()["layer"] == k
    last = tiny_audio.encode([w])[0]
    assert not np.allclose(outs[0], last, atol=1e-3)
    assert len(load_audio_backbone("random:hubert-tiny", layer=1).model.encoder.layers) == 1


def test_visual_layer_selection(tiny_visual):
    model, _ = build_random("dinov2-tiny")
    frames = np.random.default_rng(14).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
    x = (torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255 - torch.tensor([0.485, 0.456, 0.406]).view(
        1, 3, 1, 1
    )) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.inference_mode():
        full = model(pixel_values=x, output_hidden_states=True)
    last = tiny_visual.encode(frames)
    np.testing.assert_allclose(last, full.last_hidden_state.numpy(), atol=1e-4, rtol=1e-3)
    for k in (0, 1, 2):
        out = load_visual_backbone("random:dinov2-tiny", layer=k).encode(frames)
        np.testing.assert_allclose(out, full.hidden_states[k].numpy(), atol=1e-4, rtol=1e-3)
    # layer 2 is the last block's output before DINOv2's final layer norm: differs from -1
    assert not np.allclose(out, last, atol=1e-3)


@pytest.mark.parametrize("layer", [-2, 3, 99])
def test_layer_out_of_range(layer):
    with pytest.raises(ModelError, match="out of range"):
        load_audio_backbone("random:hubert-tiny", layer=layer)
    with pytest.raises(ModelError, match="out of range"):
        load_visual_backbone("random:dinov2-tiny", layer=layer)


# ------------------------------------------------------------------------------- errors


def test_unknown_random_arch_lists_known():
    with pytest.raises(ModelError) as info:
        load_audio_backbone("random:hubert-huge")
    assert "random:hubert-tiny" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ModelError, match="known"):
        build_random("nope")


def test_wrong_family(tmp_path):
    with pytest.raises(ModelError, match="visual"):
        load_audio_backbone("random:dinov2-tiny")
    with pytest.raises(ModelError, match="audio"):
        load_visual_backbone("random:hubert-tiny")
    d = _save(tmp_path, "dino", *build_random("dinov2-tiny"))
    with pytest.raises(ModelError, match="visual model"):
        load_audio_backbone(str(d))


def test_missing_local_path_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for spec in (str(tmp_path / "no" / "such" / "model"), "avfeat-tests/no-such-model"):
        with pytest.raises(ModelError) as info:
            load_audio_backbone(spec)
        msg = str(info.value)
        assert "\n" not in msg and spec in msg


def test_bad_dtype_and_device():
    with pytest.raises(ModelError, match="dtype"):
        load_audio_backbone("random:hubert-tiny", dtype="float64")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA"):
            load_visual_backbone("random:dinov2-tiny", device="cuda")


# ------------------------------------------------------------------------------- describing without weights


@pytest.mark.parametrize("local", [False, True])
def test_describe_gives_the_loaded_models_tensors_without_reading_weights(tmp_path, local):
    """A Ray driver only describes the tensors: the same cache config, shapes and decode settings
    as the loaded models, with no weights read (a local folder with its weights removed works)."""
    from avfeat.extract.encoder import Encoder, ExtractConfig

    audio, visual = "random:hubert-tiny", "random:dinov2-tiny"
    if local:
        audio = str(_save(tmp_path, "hubert-tiny", *build_random("hubert-tiny")))
        visual = str(_save(tmp_path, "dinov2-tiny", *build_random("dinov2-tiny")))
    config = ExtractConfig(audio_model=audio, visual_model=visual, audio_layer=1, fps=2.0)
    loaded = Encoder(config, device="cpu", dtype="float32")
    if local:
        for weights in tmp_path.rglob("*.safetensors"):
            weights.unlink()
    described = Encoder.describe(config)
    assert described.cache_config() == loaded.cache_config()
    assert described.writer_dims() == loaded.writer_dims() and described.spec == loaded.spec
    assert described.is_random and next(described.visual.model.parameters()).device.type == "meta"
