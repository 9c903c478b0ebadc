"""`avfeat sync` over many videos (files, folders, a cache), its table output, and the repair of
a video by remuxing its audio (`--fix`, ``remux_shifted``).

The heads, cache and corpus are the index tests' session fixtures (tests/index/conftest.py).
Those heads are trained for a few steps only, so the fast tests check the plumbing (rows,
formats, refusals, what the remux does to the packets); the round trip that needs heads which
really sync (estimate, fix, estimate again ≈ 0) uses the index acceptance heads
(tests/index/test_acceptance.py).
"""

from __future__ import annotations

import json
import shutil

import av
import pyarrow.parquet as pq
import pytest

from avfeat.core.errors import InputError, QueryError
from avfeat.extract.media import decode_audio
from avfeat.index.sync import remux_shifted
from avfeat.testing.media import make_bad_inputs, make_clip
from avfeat.testing.runner import run_avfeat as avfeat


def packets(path, kind):
    """[(bytes, start in seconds)] of the file's best stream of ``kind``, in file order."""
    with av.open(str(path)) as container:
        stream = container.streams.best(kind)
        return [(bytes(p), float(p.pts * p.time_base)) for p in container.demux(stream) if p.dts is not None]


def one_line_error(result):
    """The refusal is one line on stderr, non-zero, and no traceback."""
    assert result.returncode != 0, result.stdout
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr, result.stderr
    return result.stderr


# ---- remux_shifted -------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [0.5, -0.3, 0.0])
def test_remux_copies_the_pictures_and_moves_the_audio(tmp_path, offset):
    source, fixed = tmp_path / "late.mp4", tmp_path / "fixed.mp4"
    make_clip(source, seconds=2.0)
    remux_shifted(source, fixed, offset)
    # (a) the pictures are the same packets: byte for byte, at the same times.
    assert packets(fixed, "video") == packets(source, "video")
    # (b) the audio packets are the source's, each moved by -offset; those that would start
    # before the stream did are dropped (only at the front).
    before, after = packets(source, "audio"), packets(fixed, "audio")
    dropped = len(before) - len(after)
    assert dropped >= 0 and (dropped > 0) == (offset > 0)
    assert [data for data, _ in after] == [data for data, _ in before[dropped:]]
    for (_, was), (_, now) in zip(before[dropped:], after):
        assert now == pytest.approx(was - offset, abs=1e-4)
    # What the decoder (and so `avfeat sync`) hears at t in the copy is the source at t + offset.
    heard, start = decode_audio(source, 16000)
    moved, moved_start = decode_audio(fixed, 16000)
    at = int(round((1.0 - start) * 16000)), int(round((1.0 - offset - moved_start) * 16000))
    assert heard[at[0] : at[0] + 4000].tolist() == moved[at[1] : at[1] + 4000].tolist()


def test_remux_refuses_its_own_input_and_a_source_without_audio(tmp_path):
    source = tmp_path / "clip.mp4"
    make_clip(source, seconds=1.0)
    data = source.read_bytes()
    (tmp_path / "link.mp4").symlink_to(source)
    for target in (source, tmp_path / "link.mp4"):
        with pytest.raises(InputError, match="is the input video itself"):
            remux_shifted(source, target, 0.2)
    assert source.read_bytes() == data
    silent = make_bad_inputs(tmp_path / "bad")["no_audio"]
    with pytest.raises(QueryError, match="no audio stream"):
        remux_shifted(silent, tmp_path / "out.mp4", 0.2)
    assert not (tmp_path / "out.mp4").exists() and not list(tmp_path.glob("*.tmp*"))


# ---- many videos ---------------------------------------------------------------------------


def test_sync_a_folder_and_a_missing_file_reports_every_row(heads, corpus, tmp_path):
    missing = tmp_path / "gone.mp4"
    table = tmp_path / "sync.parquet"
    result = avfeat("sync", corpus, missing, "--heads", heads, "--max-offset", 1.0, "--json", "--out", table, "--quiet")
    assert result.returncode == 1
    assert "1 of 9 videos could not be synchronised" in one_line_error(result)
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    videos = sorted(p for p in corpus.iterdir() if p.suffix == ".mp4")
    assert [row["video"] for row in rows] == [str(p) for p in videos] + [str(missing)]
    for row in rows[:-1]:
        assert set(row) == {"video", "offset", "confidence"} and abs(row["offset"]) <= 1.0 and 0 <= row["confidence"] <= 1
    assert rows[-1]["offset"] is None and "does not exist" in rows[-1]["error"]
    written = pq.read_table(table).to_pylist()
    assert [row["video"] for row in written] == [row["video"] for row in rows]
    assert written[0]["error"] is None and written[-1]["error"] == rows[-1]["error"]
    assert written[0]["offset"] == rows[0]["offset"]


def test_sync_several_files_prints_a_table(heads, corpus, tmp_path):
    files = [corpus / "video_00001.mp4", corpus / "video_00002.mp4"]
    result = avfeat("sync", *files, "--heads", heads, "--max-offset", 1.0, "--out", tmp_path / "sync.csv", "--quiet", check=0)
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["offset", "confidence", "direction", "video"] and len(lines) == 3
    assert lines[1].endswith(str(files[0])) and ("audio" in lines[1] or "in sync" in lines[1])
    csv_lines = (tmp_path / "sync.csv").read_text().splitlines()
    assert csv_lines[0] == "video,offset,confidence,error" and len(csv_lines) == 3


def test_sync_a_cache_uses_its_tokens(heads, cache, tmp_path):
    result = avfeat("sync", "--cache", cache, "--heads", heads, "--max-offset", 1.0, "--json", "--out", tmp_path / "sync.jsonl", "--quiet", check=0)
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 8 and all(set(row) == {"video", "video_id", "offset", "confidence"} for row in rows)
    written = [json.loads(line) for line in (tmp_path / "sync.jsonl").read_text().splitlines()]
    assert [row["video_id"] for row in written] == [row["video_id"] for row in rows]
    assert all(row["error"] is None for row in written)


def test_fix_writes_a_copy_moved_by_the_estimate(heads, corpus, tmp_path):
    source, fixed = corpus / "video_00003.mp4", tmp_path / "fixed" / "video.mp4"
    # These heads are barely trained (low confidence): --min-confidence 0 asks for the copy anyway.
    result = avfeat("sync", source, "--heads", heads, "--max-offset", 1.0, "--json", "--fix", fixed, "--min-confidence", 0, check=0)
    offset = json.loads(result.stdout)["offset"]  # stdout stays the one JSON object; the note goes to stderr
    assert f"wrote {fixed}" in result.stderr
    assert packets(fixed, "video") == packets(source, "video")
    before, after = packets(source, "audio"), packets(fixed, "audio")
    # The estimate is rounded to 0.1 ms in the JSON; the shift to the audio time base.
    assert after[-1][1] == pytest.approx(before[-1][1] - offset, abs=1e-3) and after[-1][0] == before[-1][0]


def test_fix_below_the_confidence_threshold_writes_nothing_and_says_why(heads, corpus, tmp_path):
    source, fixed = corpus / "video_00003.mp4", tmp_path / "fixed.mp4"
    result = avfeat("sync", source, "--heads", heads, "--max-offset", 1.0, "--json", "--fix", fixed)
    confidence = json.loads(result.stdout)["confidence"]
    assert confidence < 0.3  # barely trained heads: the default threshold holds the fix back
    assert result.returncode == 3 and not fixed.exists()
    assert "not fixed" in result.stderr and "--min-confidence" in result.stderr and "Traceback" not in result.stderr
    result = avfeat("sync", source, "--heads", heads, "--max-offset", 1.0, "--fix", fixed, "--min-confidence", confidence + 0.01)
    assert result.returncode == 3 and not fixed.exists()


# ---- refusals: one line, non-zero, nothing overwritten -------------------------------------


@pytest.mark.parametrize("option, value", [("--max-offset", "nan"), ("--max-offset", "inf"), ("--min-confidence", "nan"),
                                           ("--min-confidence", "-inf"), ("--min-confidence", "1.5")])
def test_non_finite_or_out_of_range_numbers_are_refused(heads, corpus, tmp_path, option, value):
    result = avfeat("sync", corpus / "video_00001.mp4", "--heads", heads, option, value, "--fix", tmp_path / "f.mp4")
    assert "finite number" in one_line_error(result) and option in result.stderr and not result.stdout


def test_a_fix_suffix_no_container_fits_is_refused_before_the_models_run(heads, corpus, tmp_path):
    for name in ("fixed.txt", "fixed"):
        result = avfeat("sync", corpus / "video_00001.mp4", "--heads", heads, "--fix", tmp_path / name)
        assert "--fix" in one_line_error(result) and not result.stdout  # no estimate printed: nothing ran
    assert list(tmp_path.iterdir()) == []  # no temp file left


def test_fix_refuses_an_existing_file_and_the_input_itself(heads, corpus, tmp_path):
    source = tmp_path / "video.mp4"
    shutil.copy(corpus / "video_00001.mp4", source)
    data = source.read_bytes()
    taken = tmp_path / "taken.mp4"
    taken.write_bytes(b"keep me")
    assert "--overwrite" in one_line_error(avfeat("sync", source, "--heads", heads, "--fix", taken))
    assert taken.read_bytes() == b"keep me"
    (tmp_path / "link.mp4").symlink_to(source)
    for target in (source, tmp_path / "link.mp4"):
        assert "input video itself" in one_line_error(avfeat("sync", source, "--heads", heads, "--fix", target, "--overwrite"))
    assert source.read_bytes() == data


def test_refusals_with_several_videos_and_an_existing_out(heads, corpus, tmp_path):
    files = [corpus / "video_00001.mp4", corpus / "video_00002.mp4"]
    assert "audit" in one_line_error(avfeat("sync", *files, "--heads", heads, "--fix", tmp_path / "f.mp4"))
    assert "single VIDEO" in one_line_error(avfeat("sync", *files, "--heads", heads, "--plot", tmp_path / "p.png"))
    assert not (tmp_path / "f.mp4").exists() and not (tmp_path / "p.png").exists()
    table = tmp_path / "sync.csv"
    table.write_text("keep me")
    assert "--overwrite" in one_line_error(avfeat("sync", *files, "--heads", heads, "--out", table))
    assert "suffix" in one_line_error(avfeat("sync", *files, "--heads", heads, "--out", tmp_path / "sync.txt"))
    assert table.read_text() == "keep me"
    assert "not both" in one_line_error(avfeat("sync", files[0], "--cache", corpus, "--heads", heads))


def test_a_cache_of_other_backbones_is_refused(heads, cache, tmp_path):
    other = tmp_path / "cache"
    shutil.copytree(cache, other)
    config = json.loads((other / "cache.json").read_text())
    config["audio_model"] = "random:hubert-base"
    (other / "cache.json").write_text(json.dumps(config))
    assert "different backbones" in one_line_error(avfeat("sync", "--cache", other, "--heads", heads, "--out", tmp_path / "t.csv"))
    assert not (tmp_path / "t.csv").exists()
