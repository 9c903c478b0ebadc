"""The synthetic corpus: real files, honest ground truth, injected audio offsets."""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from avfeat.cli import app
from avfeat.data.synth import COLOURS, MAX_CLASSES, class_info, make_corpus, shape_mask

VIDEOS, SECONDS, CLASSES, SEED, OFFSET, SIZE = 6, 4.0, 6, 3, 0.25, 96
COLUMNS = {
    "path", "class", "class_name", "offset", "event_starts", "event_ends", "boxes",
    "width", "height", "duration",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "corpus"
    args = [
        "synth", str(out), "--videos", str(VIDEOS), "--seconds", str(SECONDS), "--classes", str(CLASSES),
        "--seed", str(SEED), "--offset", str(OFFSET), "--size", str(SIZE), "--quiet",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert str(out) in result.output and str(VIDEOS) in result.output
    rows = pq.read_table(out / "ground_truth.parquet").to_pylist()
    return out, rows


def decode_video(path):
    """(times, frames) of every decoded frame, plus the stream's frame rate."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        times, frames = [], []
        for frame in container.decode(stream):
            times.append(float(frame.pts * stream.time_base))
            frames.append(frame.to_ndarray(format="rgb24"))
        return np.array(times), np.stack(frames), stream.average_rate


def decode_audio(path):
    """(start time in s, mono float samples, sample rate) of the decoded audio."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        start, chunks = None, []
        for frame in container.decode(stream):
            if start is None:
                start = float(frame.pts * frame.time_base)
            chunks.append(frame.to_ndarray().reshape(-1))
        return start, np.concatenate(chunks), stream.rate


def rms(samples, rate, begin, end):
    return float(np.sqrt(np.mean(samples[int(round(begin * rate)) : int(round(end * rate))] ** 2)))


def test_cli_writes_files_and_ground_truth(corpus):
    out, rows = corpus
    assert sorted(p.name for p in out.glob("*.mp4")) == [f"video_{i:05d}.mp4" for i in range(VIDEOS)]
    assert len(rows) == VIDEOS
    for row in rows:
        assert COLUMNS <= set(row)
        assert (out / row["path"]).is_file() and "/" not in row["path"]
        assert 0 <= row["class"] < CLASSES and row["class_name"] == class_info(row["class"])["name"]
        assert " / " in row["class_name"] and "Hz" in row["class_name"]
        assert (row["width"], row["height"]) == (SIZE, SIZE)
        assert row["duration"] == pytest.approx(SECONDS)
        assert -OFFSET <= row["offset"] <= OFFSET
        starts, ends, boxes = row["event_starts"], row["event_ends"], row["boxes"]
        assert 1 <= len(starts) <= 5 and len(starts) == len(ends) == len(boxes)
        for i, (start, end, box) in enumerate(zip(starts, ends, boxes)):
            assert 0.4 - 1e-9 <= end - start <= 1.5 + 1e-9
            if i:
                assert start - ends[i - 1] >= 0.3 - 1e-9  # silence between events
            for t in (start, end, start + row["offset"], end + row["offset"]):
                assert 0 < t < row["duration"]  # both modalities stay inside the file
            x0, y0, x1, y1 = box
            assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE
    # balanced classes, and the offsets really vary (so the audio test below can fail)
    assert sorted(r["class"] for r in rows) == list(range(CLASSES))
    assert max(abs(r["offset"]) for r in rows) > 0.05


def test_decoded_geometry_duration_and_rate(corpus):
    out, rows = corpus
    for row in rows[:3]:
        times, frames, rate = decode_video(out / row["path"])
        assert frames.shape[1:] == (SIZE, SIZE, 3)
        assert rate == Fraction(25)
        assert len(frames) / float(rate) == pytest.approx(row["duration"], abs=0.1)
        assert times[0] == pytest.approx(0.0, abs=1e-6)
        start, samples, sample_rate = decode_audio(out / row["path"])
        assert sample_rate == 16000
        assert start == pytest.approx(0.0, abs=1e-6)
        assert len(samples) / sample_rate == pytest.approx(row["duration"], abs=0.1)


def test_object_visible_in_box_only_during_events(corpus):
    out, rows = corpus
    for row in rows:
        rgb = np.array(class_info(row["class"])["rgb"], dtype=float)
        times, frames, _ = decode_video(out / row["path"])
        starts, ends = row["event_starts"], row["event_ends"]

        def centre(frame_time, box):
            index = int(np.argmin(np.abs(times - frame_time)))
            x0, y0, x1, y1 = box
            return frames[index, (y0 + y1) // 2, (x0 + x1) // 2].astype(float)

        quiet_times = [starts[0] / 2, (ends[-1] + row["duration"]) / 2]
        quiet_times += [(e + s) / 2 for e, s in zip(ends[:-1], starts[1:])]
        for start, end, box in zip(starts, ends, row["boxes"]):
            for t in (start + 0.01, (start + end) / 2, end - 0.05):  # first, middle and last frames
                assert np.abs(centre(t, box) - rgb).max() < 40, (row["path"], t)
            for t in quiet_times + [start - 0.03, end + 0.01]:  # the frames just before and after too
                assert np.abs(centre(t, box) - rgb).max() > 60, (row["path"], t)


def test_audio_events_carry_the_offset(corpus):
    out, rows = corpus
    for row in rows:
        start, samples, rate = decode_audio(out / row["path"])
        offset = row["offset"]
        window = int(0.005 * rate)
        envelope = np.sqrt(np.mean(samples[: len(samples) // window * window].reshape(-1, window) ** 2, axis=1))
        onset = start + int(np.argmax(envelope > 0.05)) * window / rate
        assert onset == pytest.approx(row["event_starts"][0] + offset, abs=0.03), row["path"]
        starts, ends = row["event_starts"], row["event_ends"]
        for s, e in zip(starts, ends):
            assert rms(samples, rate, s + offset + 0.02 - start, e + offset - 0.02 - start) > 0.1
        for e, s in zip(ends[:-1], starts[1:]):
            assert rms(samples, rate, e + offset + 0.03 - start, s + offset - 0.03 - start) < 0.03
        assert rms(samples, rate, 0.0, starts[0] + offset - 0.03 - start) < 0.03


def test_same_seed_same_corpus_different_seed_differs(tmp_path):
    kwargs = dict(videos=3, seconds=2.0, classes=3, offset=0.1, size=32)
    first = make_corpus(tmp_path / "a", seed=7, **kwargs)
    second = make_corpus(tmp_path / "b", seed=7, **kwargs)
    other = make_corpus(tmp_path / "c", seed=8, **kwargs)
    assert first.to_pylist() == second.to_pylist()
    assert pq.read_table(tmp_path / "a" / "ground_truth.parquet").equals(first)
    assert first.to_pylist() != other.to_pylist()
    for name in ("video_00000.mp4", "video_00002.mp4"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_zero_offset_by_default(tmp_path):
    rows = make_corpus(tmp_path, videos=2, seconds=2.0, classes=2, seed=1, size=32).to_pylist()
    assert [r["offset"] for r in rows] == [0.0, 0.0]


def test_class_catalogue_is_distinct():
    infos = [class_info(k) for k in range(MAX_CLASSES)]
    assert MAX_CLASSES >= 20
    assert len({(i["shape"], i["colour"]) for i in infos}) == MAX_CLASSES
    assert len({(i["timbre"], i["pitch"]) for i in infos}) == MAX_CLASSES
    assert len({i["name"] for i in infos}) == MAX_CLASSES
    assert len(set(COLOURS.values())) == len(COLOURS)
    for info in infos[:8]:
        mask = shape_mask(info["shape"], 33)
        assert mask[16, 16] and 0.15 < mask.mean() < 1.0 + 1e-9


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--videos", "0"], "--videos"),
        (["--classes", "0"], "--classes"),
        (["--seconds", "0.3"], "--seconds"),
        (["--offset", "-1"], "--offset"),
        (["--size", "33"], "--size"),
    ],
)
def test_bad_arguments_one_line_error(tmp_path, args, needle):
    result = _run_cli([str(tmp_path / "out"), *args, "--quiet"])
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("avfeat: error:") and needle in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("target", ["file", "under_file"])
def test_out_not_a_writable_folder(tmp_path, target):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    out = blocker if target == "file" else blocker / "sub"
    result = _run_cli([str(out), "--videos", "1", "--seconds", "2", "--quiet"])
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("avfeat: error:") and "blocker" in lines[0]


def _run_cli(args):
    command = [sys.executable, "-c", "from avfeat.cli import main; main()", "synth", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)
