"""The synthetic corpus: real files, honest ground truth, injected audio offsets."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from avfeat.cli import app
from avfeat.data.synth import DEFECTS, _defect_plan, make_corpus
from avfeat.data.synth_video import COLOURS, MAX_CLASSES, PITCHES, class_info, shape_mask
from avfeat.core.errors import InputError
from avfeat.testing.runner import run_avfeat

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
    return run_avfeat("synth", *args)


# --------------------------------------------------------------------------------------------
# --corrupt: known audio defects
# --------------------------------------------------------------------------------------------

DEFECT_ARGS = dict(videos=8, seconds=4.0, classes=4, seed=SEED, size=64)
DEFECT_COLUMNS = ("defect", "defect_source", "defect_offset")


@pytest.fixture(scope="module")
def defect_corpus(tmp_path_factory):
    """(folder, rows) of 8 videos, half of them (one per type) with an audio defect, via the CLI."""
    out = tmp_path_factory.mktemp("defects") / "corpus"
    args = ["synth", str(out), "--corrupt", "0.5", "--quiet"]
    for key, value in DEFECT_ARGS.items():
        args += [f"--{key}", str(value)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "4 with audio defects" in result.output
    return out, pq.read_table(out / "ground_truth.parquet").to_pylist()


@pytest.fixture(scope="module")
def clean_corpus(tmp_path_factory):
    """The same corpus with ``corrupt=0`` given explicitly."""
    out = tmp_path_factory.mktemp("clean") / "corpus"
    return out, make_corpus(out, corrupt=0.0, **DEFECT_ARGS).to_pylist()


def by_defect(rows):
    return {row["defect"]: row for row in rows if row["defect"]}


def envelope(samples, rate, window=0.005):
    """RMS of consecutive ``window``-second blocks."""
    n = int(window * rate)
    return np.sqrt(np.mean(samples[: len(samples) // n * n].reshape(-1, n) ** 2, axis=1))


def event_mask(row, count, rate, window=0.005):
    """1 in the blocks where ``row``'s sound plays (visual events shifted by its offset), else 0."""
    times = np.arange(count) * window
    mask = np.zeros(count)
    for s, e in zip(row["event_starts"], row["event_ends"]):
        mask[(times >= s + row["offset"]) & (times < e + row["offset"])] = 1.0
    return mask


def test_defects_counted_balanced_and_recorded(defect_corpus):
    _, rows = defect_corpus
    assert sorted(r["defect"] for r in rows if r["defect"]) == sorted(DEFECTS)
    defects = by_defect(rows)
    names = {r["path"]: r for r in rows}
    donor = names[defects["swap"]["defect_source"]]
    assert donor["class"] != defects["swap"]["class"] and donor["defect"] == ""  # a clean donor of another class
    for row in rows:
        assert set(DEFECT_COLUMNS) <= set(row)
        assert (row["defect_source"] != "") == (row["defect"] == "swap")
        if row["defect"] == "offset":
            assert 0.4 <= abs(row["defect_offset"]) <= 2.0
            assert row["offset"] == pytest.approx(row["defect_offset"], abs=1e-9)  # no --offset: all of it injected
            for t in row["event_starts"] + row["event_ends"]:
                assert 0 < t + row["offset"] < row["duration"] and 0 < t < row["duration"]
        else:
            assert row["defect_offset"] == 0.0 and row["offset"] == 0.0


def test_defect_plan_balanced_deterministic_and_rounded():
    labels = np.arange(40) % 10
    plan = _defect_plan(5, labels, 0.3, 16000)
    kinds = [p["defect"] for p in plan if p["defect"]]
    assert len(kinds) == 12 and all(kinds.count(kind) == 3 for kind in DEFECTS)
    assert plan == _defect_plan(5, labels, 0.3, 16000)
    assert plan != _defect_plan(6, labels, 0.3, 16000)
    for i, p in enumerate(plan):
        if p["defect"] == "swap":
            assert labels[p["donor"]] != labels[i] and not plan[p["donor"]]["defect"]
    assert sum(bool(p["defect"]) for p in _defect_plan(5, labels, 0.33, 16000)) == round(0.33 * 40)
    assert sum(bool(p["defect"]) for p in _defect_plan(5, labels, 1.0, 16000)) == 40


def test_defects_deterministic(defect_corpus, tmp_path):
    _, rows = defect_corpus
    assert make_corpus(tmp_path, corrupt=0.5, **DEFECT_ARGS).to_pylist() == rows


def test_corrupt_leaves_clean_videos_and_pictures_unchanged(defect_corpus, clean_corpus):
    out, rows = defect_corpus
    clean_out, clean_rows = clean_corpus
    assert all(r["defect"] == "" and r["defect_source"] == "" and r["defect_offset"] == 0.0 for r in clean_rows)
    for row, clean in zip(rows, clean_rows):
        if not row["defect"]:  # untouched: same file, same ground truth
            assert row == clean
            assert (out / row["path"]).read_bytes() == (clean_out / row["path"]).read_bytes()
        elif row["defect"] != "offset":  # only the audio changed
            for key in ("class", "offset", "event_starts", "event_ends", "boxes"):
                assert row[key] == clean[key], (row["path"], key)
            _, frames, _ = decode_video(out / row["path"])
            _, clean_frames, _ = decode_video(clean_out / row["path"])
            assert np.abs(frames.astype(int) - clean_frames).max() <= 2
        else:
            assert row["class"] == clean["class"]


def test_corrupt_zero_is_the_default_and_the_corpus_of_before(clean_corpus, tmp_path):
    # values this corpus had before --corrupt existed: the defect stream must not move any draw
    rows = make_corpus(tmp_path / "golden", videos=4, seconds=2.0, classes=3, seed=7, offset=0.1, size=32).to_pylist()
    assert [r["class"] for r in rows] == [1, 0, 2, 0]
    assert [r["offset"] for r in rows] == pytest.approx([-0.0454375, -0.0716875, 0.084125, 0.0915625], abs=1e-12)
    assert [[round(t * 25) for t in r["event_starts"]] for r in rows] == [[7, 29], [7, 30], [5, 31], [5, 27]]  # frames
    assert [r["boxes"][0] for r in rows] == [[14, 20, 23, 29], [16, 19, 26, 29], [7, 12, 18, 23], [13, 14, 21, 22]]
    clean_out, clean_rows = clean_corpus
    default = make_corpus(tmp_path / "default", **DEFECT_ARGS)
    assert default.to_pylist() == clean_rows
    for name in ("video_00000.mp4", "video_00005.mp4"):
        assert (tmp_path / "default" / name).read_bytes() == (clean_out / name).read_bytes()


def test_swap_carries_the_donor_soundtrack(defect_corpus):
    out, rows = defect_corpus
    row = by_defect(rows)["swap"]
    donor = next(r for r in rows if r["path"] == row["defect_source"])
    _, samples, rate = decode_audio(out / row["path"])
    _, donor_samples, _ = decode_audio(out / donor["path"])
    n = min(len(samples), len(donor_samples))
    assert np.abs(samples[:n] - donor_samples[:n]).max() < 0.02
    env = envelope(samples, rate)
    with_donor = np.corrcoef(env, event_mask(donor, len(env), rate))[0, 1]
    with_own = np.corrcoef(env, event_mask(row, len(env), rate))[0, 1]
    assert with_donor > 0.9 and with_own < with_donor - 0.2, (with_donor, with_own)


def test_overlay_sounds_everywhere_over_the_own_events(defect_corpus):
    out, rows = defect_corpus
    row = by_defect(rows)["overlay"]
    _, samples, rate = decode_audio(out / row["path"])
    starts, ends = row["event_starts"], row["event_ends"]
    gaps = [(0.05, starts[0] - 0.03)] + [(e + 0.03, s - 0.03) for e, s in zip(ends[:-1], starts[1:])]
    gaps.append((ends[-1] + 0.03, row["duration"] - 0.05))
    for begin, end in gaps:
        assert rms(samples, rate, begin, end) > 0.2, (begin, end)  # the class sound alone is silent here
    # the class sound still plays underneath: its pitch is strong in the events only
    pitch = class_info(row["class"])["pitch"]
    assert pitch in PITCHES

    def power_at_pitch(begin, end):
        chunk = samples[int(begin * rate) : int(end * rate)]
        spectrum = np.abs(np.fft.rfft(chunk * np.hanning(len(chunk)))) ** 2
        freqs = np.fft.rfftfreq(len(chunk), 1 / rate)
        return spectrum[np.abs(freqs - pitch) < 0.01 * pitch].sum() / len(chunk)

    inside = np.mean([power_at_pitch(s + 0.02, e - 0.02) for s, e in zip(starts, ends)])
    outside = np.mean([power_at_pitch(b, e) for b, e in gaps if e - b > 0.1])
    assert inside > 10 * outside, (inside, outside)


def test_silence_is_near_digital_silence(defect_corpus):
    out, rows = defect_corpus
    row = by_defect(rows)["silence"]
    _, samples, rate = decode_audio(out / row["path"])
    assert len(samples) / rate == pytest.approx(row["duration"], abs=0.1)
    assert float(np.sqrt(np.mean(samples**2))) < 1e-3


def test_offset_defect_shifts_the_sound_by_defect_offset(defect_corpus):
    out, rows = defect_corpus
    row = by_defect(rows)["offset"]
    start, samples, rate = decode_audio(out / row["path"])
    shift = row["defect_offset"]
    env = envelope(samples, rate)
    onset = start + int(np.argmax(env > 0.05)) * 0.005
    assert onset == pytest.approx(row["event_starts"][0] + shift, abs=0.05)
    for s, e in zip(row["event_starts"], row["event_ends"]):
        assert rms(samples, rate, s + shift + 0.02 - start, e + shift - 0.02 - start) > 0.1
    for e, s in zip(row["event_ends"][:-1], row["event_starts"][1:]):
        assert rms(samples, rate, e + shift + 0.03 - start, s + shift - 0.03 - start) < 0.03


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--corrupt", "nan"], "--corrupt"),
        (["--corrupt", "inf"], "--corrupt"),
        (["--corrupt", "-0.1"], "--corrupt"),
        (["--corrupt", "1.5"], "--corrupt"),
        (["--corrupt", "abc"], "--corrupt"),
        (["--corrupt", "0.5", "--seconds", "2.5"], "--seconds"),
        (["--corrupt", "0.5", "--classes", "1"], "--corrupt"),
    ],
)
def test_bad_corrupt_one_line_error(tmp_path, args, needle):
    result = CliRunner().invoke(app, ["synth", str(tmp_path / "out"), *args, "--quiet"])
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    if args[1] == "abc":  # typer's own usage error
        assert "--corrupt" in result.output
    else:  # `avfeat` prints an InputError as one line (see test_bad_arguments_one_line_error)
        assert isinstance(result.exception, InputError)
        message = str(result.exception)
        assert "\n" not in message and needle in message, message
    assert not (tmp_path / "out").exists()


# The generator's raw arrays and the ground truth of two fixed corpora, pinned: a change of any
# draw, picture or sample shows here. Hashes of what reaches write_media (not of encoded bytes,
# which depend on the FFmpeg build).
PINNED = [
    (dict(videos=4, seconds=2.0, classes=3, seed=7, size=32),
     "99eccff0b776c8089cd15ef41cda14642de846bf7e9c1cde6361bd56624ce2ad",
     "b8c984989ba367a990e11e021526c460a6c7992eef58a286133c1eea4e1c9ecd"),
    (dict(videos=8, seconds=4.0, classes=4, seed=5, offset=0.25, size=32, fps=10.0, corrupt=0.5),
     "2357610b02cc3daa0271a5731d73d224ba148bb003c3c38f34fc1ead88ba2e78",
     "9d30093b4a96c89c0613a2ea4e5460108499db8e36358936a3246502bc2ca8cb"),
]


@pytest.mark.parametrize("kwargs,media_digest,truth_digest", PINNED)
def test_corpus_content_pinned(tmp_path, monkeypatch, kwargs, media_digest, truth_digest):
    import hashlib
    import json

    import avfeat.data.synth as synth

    media = hashlib.sha256()

    def capture(path, frames, fps, audio, sample_rate, **options):
        media.update(f"{Path(path).name} {frames.shape} {frames.dtype} {fps} {audio.shape} {audio.dtype} {sample_rate} {options}".encode())
        media.update(np.ascontiguousarray(frames).tobytes())
        media.update(np.ascontiguousarray(audio).tobytes())

    monkeypatch.setattr(synth, "write_media", capture)
    make_corpus(tmp_path, **kwargs)
    rows = pq.read_table(tmp_path / "ground_truth.parquet").to_pylist()
    truth = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()
    assert (media.hexdigest(), truth) == (media_digest, truth_digest)
