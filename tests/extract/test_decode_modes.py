"""Decode modes and CPU-saving switches: exact mode's output equals the plain path bit for bit;
keyframe mode returns keyframes with their own times."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from avfeat.extract import media
from avfeat.extract.media import REFERENCE_TUNING, DecodeSpec, DecodeTuning, decode
from avfeat.extract.media.frames import FrameSampler, SkipMiss
from avfeat.extract.media.spec import DECODE_MODES
from avfeat.testing.media import MEDIA_SUFFIXES, frame_level, make_clip, test_media_dir

_folder = test_media_dir()
CLIPS = sorted(p.name for p in _folder.iterdir() if p.suffix.lower() in MEDIA_SUFFIXES) if _folder else []
CLIP_FPS = 25  # make_clip's frame rate; write_media puts a keyframe every CLIP_FPS frames (1 s)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """4 s of 25 fps H.264 (x264 veryfast: B-frames, a keyframe every second) with AAC."""
    return make_clip(tmp_path_factory.mktemp("modes") / "clip.mp4", seconds=4.0, size=(64, 96), fps=CLIP_FPS)


def _assert_same(out, ref):
    np.testing.assert_array_equal(out.frame_times, ref.frame_times)
    np.testing.assert_array_equal(out.frames, ref.frames)
    np.testing.assert_array_equal(out.audio, ref.audio)
    assert (out.audio_start, out.duration, out.width, out.height) == (ref.audio_start, ref.duration, ref.width, ref.height)


def _keyframe_times(path) -> np.ndarray:
    """Times (container timeline) of the video packets the demuxer flags as keyframes."""
    with av.open(str(path)) as container:
        origin = Fraction(container.start_time or 0, av.time_base)
        stream = container.streams.video[0]
        return np.array(sorted(float(p.pts * stream.time_base - origin) for p in container.demux(stream)
                               if p.pts is not None and p.is_keyframe))


class _Counter:
    """Counts the frames the decoder hands to the sampler."""

    def __init__(self, monkeypatch):
        self.frames = 0
        add = FrameSampler.add

        def counting(sampler, frame):
            self.frames += 1
            return add(sampler, frame)

        monkeypatch.setattr(FrameSampler, "add", counting)


@pytest.mark.parametrize("fps", [1.0, 3.0, 7.0])
@pytest.mark.parametrize("segment", [(None, None), (0.7, 2.9), (1.5, None)])
def test_exact_mode_equals_reference_path(clip, fps, segment, monkeypatch):
    spec = DecodeSpec(fps=fps)
    start, end = segment
    counter = _Counter(monkeypatch)
    ref = decode(clip, spec, start=start, end=end, tuning=REFERENCE_TUNING)
    decoded_ref, counter.frames = counter.frames, 0
    out = decode(clip, spec, start=start, end=end)
    _assert_same(out, ref)
    if fps < CLIP_FPS / 4:  # unused B-frames exist, so fewer frames were decoded
        assert counter.frames < decoded_ref


def test_each_switch_alone_equals_reference_path(clip):
    spec = DecodeSpec(fps=2.0)
    ref = decode(clip, spec, tuning=REFERENCE_TUNING)
    for tuning in (DecodeTuning(skip_unused=True, scaler_threads=0, reuse_scaler=False),
                   DecodeTuning(skip_unused=False, scaler_threads=1, reuse_scaler=False),
                   DecodeTuning(skip_unused=False, scaler_threads=0, reuse_scaler=True)):
        _assert_same(decode(clip, spec, tuning=tuning), ref)


def test_exact_mode_with_decoder_threads_equals_reference_path(clip):
    spec = DecodeSpec(fps=2.0)
    _assert_same(decode(clip, spec, threads=2), decode(clip, spec, threads=1, tuning=REFERENCE_TUNING))


@pytest.mark.parametrize("name", CLIPS or ["<no real clips>"])
def test_real_clip_exact_mode_equals_reference_path(media_dir, name):
    for fps in (1.0, 2.0):
        spec = DecodeSpec(fps=fps)
        _assert_same(decode(media_dir / name, spec), decode(media_dir / name, spec, tuning=REFERENCE_TUNING))


def test_a_doubtful_skip_decodes_again_without_skipping(clip, monkeypatch):
    """When the check after a skip fails, decode starts over with every frame decoded."""
    spec = DecodeSpec(fps=1.0)
    ref = decode(clip, spec, tuning=REFERENCE_TUNING)
    calls = []
    check = FrameSampler._check_skips

    def doubting(sampler, t):
        calls.append(sampler.tuning.skip_unused)
        if sampler._asked_any:
            raise SkipMiss
        return check(sampler, t)

    monkeypatch.setattr(FrameSampler, "_check_skips", doubting)
    _assert_same(decode(clip, spec), ref)
    assert calls[0] is True and calls[-1] is False  # the second pass ran without skipping


def test_keyframe_mode_returns_keyframes_at_their_own_times(clip):
    fps = 2.0
    out = decode(clip, DecodeSpec(fps=fps, shortest_edge=None, crop=None, mode="keyframes"))
    keys = _keyframe_times(clip)
    # write_media's GOP: a keyframe at least every 25 frames (x264 may start one sooner).
    assert keys[0] == 0.0 and len(keys) >= 4 and np.diff(keys).max() <= 1.0 + 1e-6
    # Each target k / fps gets the last keyframe at or before it, once, at that keyframe's time.
    exact = decode(clip, DecodeSpec(fps=fps))
    targets = np.arange(int(np.ceil(exact.duration * fps))) / fps
    targets = targets[targets < exact.frame_times[-1] + 1 / CLIP_FPS]
    wanted = np.unique(keys[np.searchsorted(keys, targets + 1e-6, side="right") - 1])
    np.testing.assert_allclose(out.frame_times, wanted, atol=1e-9)
    assert set(np.round(out.frame_times, 6)) <= set(np.round(keys, 6))
    served = out.frame_times[np.searchsorted(out.frame_times, targets + 1e-6, side="right") - 1]
    error = targets - served
    assert error.min() >= -1e-9 and error.max() <= 1.0 + 1e-6  # never after its target, at most one GOP before
    assert error.max() > 0.2  # (and really off the grid)
    for image, t in zip(out.frames, out.frame_times):  # the pixels are the frame at that time
        level = np.median(image[-8:, :, :])
        assert abs(level - frame_level(int(round(t * CLIP_FPS)))) <= 4
    assert out.duration == pytest.approx(exact.duration)  # the video's end from its packets
    np.testing.assert_array_equal(out.audio, exact.audio)


def test_keyframe_mode_segment(clip):
    out = decode(clip, DecodeSpec(fps=2.0, mode="keyframes"), start=1.5, end=3.5)
    # Targets 1.5, 2.0, 2.5, 3.0, each served by the last keyframe at or before it (which can
    # lie before the segment's start, as in exact mode).
    keys = _keyframe_times(clip)
    targets = np.array([1.5, 2.0, 2.5, 3.0])
    wanted = np.unique(keys[np.searchsorted(keys, targets + 1e-6, side="right") - 1])
    np.testing.assert_allclose(out.frame_times, wanted, atol=1e-9)
    assert out.duration == pytest.approx(2.0)


@pytest.mark.parametrize("name", CLIPS or ["<no real clips>"])
def test_real_clip_keyframe_mode_uses_keyframe_times(media_dir, name):
    path = media_dir / name
    out = decode(path, DecodeSpec(fps=1.0, mode="keyframes"))
    exact = decode(path, DecodeSpec(fps=1.0))
    keys = _keyframe_times(path)
    assert len(out.frame_times) >= 1 and np.all(np.diff(out.frame_times) > 0)
    assert np.abs(out.frame_times[:, None] - keys[None, :]).min(axis=1).max() < 1e-6
    assert out.frames.shape[1:] == exact.frames.shape[1:]
    assert out.duration == pytest.approx(exact.duration, abs=0.05)


@pytest.mark.parametrize("mode", ["fast", "", "Exact", "keyframe"])
def test_bad_mode_is_a_one_line_error(clip, mode):
    with pytest.raises(ValueError, match="DecodeSpec.mode must be one of exact, keyframes") as info:
        decode(clip, DecodeSpec(mode=mode))
    assert "\n" not in str(info.value)


def test_default_mode_is_exact():
    assert DecodeSpec().mode == media.EXACT
    assert DECODE_MODES == ("exact", "keyframes")


def test_extract_decode_mode_keyframes_is_recorded_and_a_cache_never_mixes_modes(clip, tmp_path):
    import json

    from avfeat.data.cache import Cache
    from avfeat.testing.runner import TINY_MODELS, run_avfeat

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "clip.mp4").write_bytes(Path(clip).read_bytes())
    out = tmp_path / "cache"
    run_avfeat("extract", folder, "--out", out, *TINY_MODELS, "--fps", 2, "--decode-mode", "keyframes", "--workers", 1, "--quiet", check=0)
    assert json.loads((out / "cache.json").read_text())["decode_mode"] == "keyframes"
    with Cache(out) as cache:
        times = cache.frame_times(cache.records(status="ok")[0])
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        keyframes = [float(p.pts * p.time_base) for p in container.demux(stream) if p.is_keyframe and p.pts is not None]
    assert len(times) and np.all(np.isin(np.round(times, 3), np.round(keyframes, 3)))  # every frame is a keyframe, at its own time
    refused = run_avfeat("extract", folder, "--out", out, *TINY_MODELS, "--fps", 2, "--decode-mode", "exact", "--resume", "--quiet")
    assert refused.returncode != 0 and len(refused.stderr.strip().splitlines()) == 1 and "decode_mode" in refused.stderr
