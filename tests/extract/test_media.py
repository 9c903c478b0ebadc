"""Tests for avfeat.extract.media.decode: real clips, synthetic clips, and every bad input."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from avfeat.data.records import Status
from avfeat.extract.media import DecodedMedia, DecodeSpec, MediaError, center_crop, decode, resize_geometry
from avfeat.extract.media.audio import AudioCollector
from avfeat.extract.media.frames import FrameSampler
from avfeat.testing.media import BAD_INPUT_STATUS, MEDIA_SUFFIXES, frame_level, make_bad_inputs, make_clip, test_media_dir

SPEC = DecodeSpec(fps=2, shortest_edge=256, crop=(224, 224))
_folder = test_media_dir()
CLIPS = sorted(p.name for p in _folder.iterdir() if p.suffix.lower() in MEDIA_SUFFIXES) if _folder else []


def _source_video_times(path) -> tuple[np.ndarray, float]:
    """Sorted video packet timestamps (s, on the container timeline) and the container duration."""
    with av.open(str(path)) as container:
        origin = Fraction(container.start_time or 0, av.time_base)
        stream = container.streams.video[0]
        times = sorted(float(p.pts * stream.time_base - origin) for p in container.demux(stream) if p.pts is not None)
        return np.array(times), container.duration / av.time_base


def _reference_times(source: np.ndarray, fps: float) -> np.ndarray:
    """Independent frame choice: for each k/fps before the video's end, the last frame at or before it."""
    end = source[-1] + np.diff(source)[-1]
    targets = np.arange(int(np.ceil(end * fps)) + 1) / fps
    targets = targets[targets < end - 1e-6]
    index = np.clip(np.searchsorted(source, targets + 1e-6, side="right") - 1, 0, None)
    return source[np.unique(index)]


_decoded: dict[str, DecodedMedia] = {}


def _decode_clip(media_dir, name) -> DecodedMedia:
    if name not in _decoded:
        _decoded[name] = decode(media_dir / name, SPEC)
    return _decoded[name]


@pytest.mark.parametrize("name", CLIPS or ["<no real clips>"])
def test_real_clip_decodes(media_dir, name):
    out = _decode_clip(media_dir, name)
    source, container_duration = _source_video_times(media_dir / name)

    assert out.frames.dtype == np.uint8 and out.frames.flags["C_CONTIGUOUS"]
    assert out.frames.ndim == 4 and out.frames.shape[1:] == (224, 224, 3)
    assert out.frames.shape[0] == len(out.frame_times) >= 2
    assert abs(out.duration - container_duration) <= 0.1

    times = out.frame_times
    assert times.dtype == np.float64
    assert np.all(np.diff(times) > 0)
    assert times[0] >= 0 and times[-1] <= out.duration
    source_frame = np.diff(source).max()
    assert np.all(np.diff(times) <= 1 / SPEC.fps + source_frame + 1e-6)
    # Frames are the ones on screen at k / fps, by the stream's own timestamps.
    np.testing.assert_allclose(times, _reference_times(source, SPEC.fps), atol=1e-6)

    assert out.audio.dtype == np.float32 and out.audio.ndim == 1
    assert abs(len(out.audio) / SPEC.sample_rate - out.duration) <= 0.15
    assert np.all(np.isfinite(out.audio))
    assert np.sqrt(np.mean(out.audio**2)) > 1e-3
    assert abs(out.audio_start) < 0.05

    with av.open(str(media_dir / name)) as container:
        vstream, astream = container.streams.video[0], container.streams.audio[0]
        assert (out.width, out.height) == (vstream.width, vstream.height)
        assert out.source_sample_rate == astream.rate
    assert out.frames.std() > 1  # real pictures, not blank


def test_odd_frame_rate_uses_real_timestamps(media_dir):
    name = "activitynet_weightlifting_v_GGSY1Qvo990.mp4"
    if not (media_dir / name).exists():
        pytest.skip(f"{name} not in the clips folder")
    out = _decode_clip(media_dir, name)
    ticks = out.frame_times * (981 / 50)  # frames sit on multiples of 50/981 s
    np.testing.assert_allclose(ticks, np.round(ticks), atol=1e-6)
    assert len(out.frame_times) == 37  # 18.04 s of video at 2 fps


def test_variable_frame_rate_clip(media_dir):
    name = "talkinghead_retalking_face1.mp4"
    if not (media_dir / name).exists():
        pytest.skip(f"{name} not in the clips folder")
    out = _decode_clip(media_dir, name)
    source, _ = _source_video_times(media_dir / name)
    assert len(np.unique(np.round(np.diff(source), 4))) > 1  # the clip really is variable-rate
    assert out.frame_times[0] == pytest.approx(source[0])  # video starts after 0: first frame serves t=0
    assert source[0] > 0.01
    assert set(np.round(out.frame_times, 6)) <= set(np.round(source, 6))


@pytest.mark.parametrize("case", sorted(BAD_INPUT_STATUS))
def test_bad_input_status(bad_inputs, case):
    with pytest.raises(MediaError) as info:
        decode(bad_inputs[case], DecodeSpec(fps=1.0))
    assert info.value.status == BAD_INPUT_STATUS[case], info.value.message
    assert info.value.message and "\n" not in info.value.message
    with pytest.raises(MediaError) as info:  # same status at another frame rate
        decode(bad_inputs[case], SPEC)
    assert info.value.status == BAD_INPUT_STATUS[case]


def test_make_bad_inputs_maps_status_to_path(tmp_path):
    paths = make_bad_inputs(tmp_path)
    assert set(paths) == set(BAD_INPUT_STATUS.values())
    assert paths["unreadable"].endswith("truncated.mp4")
    assert (tmp_path / "notes.mp4").exists()  # the text case is written too
    for status, path in paths.items():
        with pytest.raises(MediaError) as info:
            decode(path, DecodeSpec())
        assert info.value.status == status


def test_missing_path_and_directory_are_unreadable(tmp_path):
    for path in (tmp_path / "missing.mp4", tmp_path):
        with pytest.raises(MediaError) as info:
            decode(path, SPEC)
        assert info.value.status == Status.UNREADABLE


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", seconds=2.0, size=(64, 96), fps=25)


def test_synthetic_frames_match_their_timestamps(clip):
    out = decode(clip, DecodeSpec(fps=3, shortest_edge=None, size=None, crop=None))
    assert out.frames.shape[1:] == (64, 96, 3)
    assert (out.width, out.height) == (96, 64)
    # Targets 0, 1/3, 2/3, ... served by the frames at 0, 0.32, 0.64, 1.0, 1.32, 1.64 (25 fps).
    np.testing.assert_allclose(out.frame_times, [0.0, 0.32, 0.64, 1.0, 1.32, 1.64], atol=1e-6)
    for image, t in zip(out.frames, out.frame_times):
        level = np.median(image[-8:, :, :])  # below the moving square: background only
        assert abs(level - frame_level(int(round(t * 25)))) <= 4
    assert out.duration == pytest.approx(2.0, abs=0.1)
    assert out.source_sample_rate == 16000


def test_threads_give_identical_output(clip):
    one = decode(clip, SPEC, threads=1)
    two = decode(clip, SPEC, threads=2)
    np.testing.assert_array_equal(one.frame_times, two.frame_times)
    np.testing.assert_array_equal(one.frames, two.frames)
    np.testing.assert_array_equal(one.audio, two.audio)


def test_audio_start_offset(tmp_path):
    path = make_clip(tmp_path / "late_audio.mp4", seconds=2.0, audio_start=0.5)
    out = decode(path, SPEC)
    onset = int(np.argmax(np.abs(out.audio) > 0.05))  # the chirp starts loud
    # The sound is where it was written on the timeline...
    assert out.audio_start + onset / SPEC.sample_rate == pytest.approx(0.5, abs=0.03)
    # ...and audio_start is its first decoded sample: FFmpeg's MP4 muxer puts the AAC encoder's
    # 1024 priming samples on the timeline before it when the audio does not start at 0.
    assert 0.5 - 1024 / 16000 - 0.03 <= out.audio_start <= 0.5 + 0.03
    assert out.frame_times[0] == 0.0


def test_audio_timestamp_gap_is_filled_with_silence():
    collector = AudioCollector(16000, Fraction(0))
    for pts in (0, 1024, 2048, 16000 + 3072):  # a 1 s jump before the last block
        frame = av.AudioFrame.from_ndarray(np.full((1, 1024), 0.5, np.float32), format="flt", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 16000, pts, Fraction(1, 16000)
        collector.add(frame)
    collector.finish()
    audio = collector.result()
    assert len(audio) == 4 * 1024 + 16000
    assert np.all(audio[3072 : 3072 + 16000] == 0) and np.all(audio[-1024:] == 0.5)
    assert collector.start_time() == 0.0


def test_frame_sampler_variable_rate():
    stamps = [0.1, 0.15, 0.3, 0.95, 1.0, 2.6, 2.7]  # irregular, starts after 0, long freeze
    sampler = FrameSampler(DecodeSpec(fps=2, shortest_edge=None, crop=None), Fraction(0), Fraction(1, 1000))
    for t in stamps:
        frame = av.VideoFrame.from_ndarray(np.full((8, 8, 3), 0, np.uint8), format="rgb24")
        frame.pts, frame.time_base = int(round(t * 1000)), Fraction(1, 1000)
        sampler.add(frame)
    sampler.finish()
    # Targets 0, .5, 1, 1.5, 2, 2.5, 3 (end = 2.7 + 0.1): 0.1 (first, serves t=0), 0.3 (t=.5),
    # 1.0 (t=1, 1.5, 2, 2.5 during the freeze); 2.6 and 2.7 are never on screen at a target.
    np.testing.assert_allclose(sampler.times, [0.1, 0.3, 1.0])
    assert sampler.end_time() == pytest.approx(2.8)


@pytest.mark.parametrize("height,width", [(480, 854), (360, 480), (224, 298), (700, 700), (1280, 720), (161, 99)])
def test_resize_geometry_matches_transformers(height, width):
    image_transforms = pytest.importorskip("transformers.image_transforms")
    image = np.zeros((height, width, 3), np.uint8)
    expected = image_transforms.get_resize_output_image_size(
        image, size=256, default_to_square=False, input_data_format="channels_last"
    )
    assert resize_geometry(height, width, DecodeSpec(shortest_edge=256)) == tuple(expected)
    assert resize_geometry(height, width, DecodeSpec(shortest_edge=256, size=(100, 120))) == (100, 120)
    assert resize_geometry(height, width, DecodeSpec(shortest_edge=None)) == (height, width)


@pytest.mark.parametrize("shape", [(256, 455), (256, 256), (257, 301), (341, 256)])
def test_center_crop_matches_transformers(shape):
    image_transforms = pytest.importorskip("transformers.image_transforms")
    image = np.random.default_rng(0).integers(0, 256, shape + (3,), dtype=np.uint8)
    expected = image_transforms.center_crop(image, (224, 224), input_data_format="channels_last")
    np.testing.assert_array_equal(center_crop(image, (224, 224)), expected)


def test_center_crop_pads_small_images():
    image = np.ones((5, 10, 3), np.uint8)
    out = center_crop(image, (8, 6))
    assert out.shape == (8, 6, 3)
    # 3 rows of padding: 1 before, 2 after (torchvision backend); columns cropped from offset 2.
    assert out[:, :, 0].sum(axis=1).tolist() == [0, 6, 6, 6, 6, 6, 0, 0]


def test_the_real_clips_beside_the_repository_are_found(monkeypatch):
    # A wrong default folder would skip every real-clip test quietly.
    monkeypatch.delenv("AVFEAT_TEST_MEDIA", raising=False)
    beside = Path(__file__).resolve().parents[2].parent / "shared" / "media"
    if not (beside.is_dir() and any(p.suffix.lower() in MEDIA_SUFFIXES for p in beside.iterdir())):
        pytest.skip(f"no real clips in {beside}")
    assert test_media_dir() == beside
