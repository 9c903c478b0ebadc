"""Input tables end to end: segments of long files with their own ids and labels, the
published VGGSound and AudioSet layouts, and the bad cases of a table."""

import json

import pytest

from avfeat.data.cache import Cache
from avfeat.extract.media import DecodeSpec, decode
from avfeat.testing.runner import TINY_MODELS as TINY
from avfeat.testing.media import make_clip
from avfeat.testing.runner import run_avfeat as avfeat


def extract(src, out, *extra, check=None):
    return avfeat("extract", src, "--out", out, *TINY, "--fps", 2, "--quiet", "--workers", 0, *extra, check=check)


@pytest.fixture(scope="module")
def long_videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("long")
    for name in ("aaa", "bbb"):
        make_clip(folder / f"{name}.mp4", seconds=8.0, size=(64, 64))
    return folder


def test_a_segment_decodes_to_the_whole_files_frames_and_audio(long_videos):
    spec = DecodeSpec(fps=2.0, shortest_edge=32, crop=(32, 32))
    whole = decode(long_videos / "aaa.mp4", spec)
    part = decode(long_videos / "aaa.mp4", spec, start=2.5, end=5.0)
    # the frames on screen at the targets 2.5, 3.0, 3.5, 4.0, 4.5 (each frame's own timestamp)
    assert len(part.frame_times) == 5 and 2.0 < part.frame_times[0] <= 2.5 and part.frame_times[-1] < 5.0
    assert abs(part.duration - 2.5) < 1e-6
    first = int(list(whole.frame_times).index(part.frame_times[0]))
    assert (whole.frame_times[first : first + 5] == part.frame_times).all()
    assert (whole.frames[first : first + 5] == part.frames).all()
    offset = int(round((part.audio_start - whole.audio_start) * 16000))
    assert part.audio_start >= 2.5 - 1e-6 and len(part.audio) == int(round((5.0 - part.audio_start) * 16000))
    assert (whole.audio[offset : offset + len(part.audio)] == part.audio).all()


def test_a_table_of_segments_keeps_ids_labels_and_spans(long_videos, tmp_path):
    table = tmp_path / "segments.csv"
    table.write_text(
        "path,start,end,label,split,score\n"
        f"{long_videos / 'aaa.mp4'},0,3,dog,train,1.5\n"
        f"{long_videos / 'aaa.mp4'},4,7.5,cat,test,2\n"
        f"{long_videos / 'bbb.mp4'},1,4,dog,train,\n"
    )
    cache = tmp_path / "cache"
    extract(table, cache, check=0)
    records = sorted(Cache(cache).records(), key=lambda r: (r.path, r.segment_start))
    assert [(r.segment_start, r.segment_end) for r in records] == [(0, 3), (4, 7.5), (1, 4)]
    assert len({r.video_id for r in records}) == 3 and records[1].video_id.endswith("_4-7.5")
    assert [r.metadata["label"] for r in records] == ["dog", "cat", "dog"]
    assert records[0].metadata["score"] == 1.5 and records[2].metadata["score"] is None  # typed: a float column
    assert [round(r.duration, 3) for r in records] == [3.0, 3.5, 3.0]
    times = Cache(cache).frame_times(records[1])
    assert 3.5 < times[0] <= 4 and times[-1] < 7.5 and len(times) == 7  # targets 4.0, 4.5, ..., 7.0
    result = extract(table, cache, "--resume", check=0)
    assert "0 processed now, 3 already" in result.stdout


def test_published_layouts(long_videos, tmp_path):
    (tmp_path / "vggsound.csv").write_text("aaa,1,playing drums,train\nbbb,0,dog barking,test\nccc,0,missing video,test\n")
    cache = tmp_path / "vgg"
    extract(tmp_path / "vggsound.csv", cache, "--layout", "vggsound", "--media-dir", long_videos, check=3)
    by_id = {r.video_id: r for r in Cache(cache).records()}
    assert set(by_id) == {"aaa_1-11", "bbb_0-10", "ccc_0-10"} and by_id["ccc_0-10"].status == "missing"
    assert by_id["aaa_1-11"].metadata == {"label": "playing drums", "split": "train"}
    assert abs(by_id["aaa_1-11"].duration - 7.0) < 0.1  # the file ends before the clip would
    (tmp_path / "audioset.csv").write_text(
        "# Segments csv created Sun Mar  5 10:54:31 2017\n# num_ytids=2\n# YTID, start_seconds, end_seconds, positive_labels\n"
        'aaa, 2.000, 6.000, "/m/09x0r,/t/dd00088"\nbbb, 0.000, 4.000, "/m/04rlf"\n'
    )
    cache = tmp_path / "audioset"
    extract(tmp_path / "audioset.csv", cache, "--layout", "audioset", "--media-dir", long_videos, check=0)
    by_id = {r.video_id: r for r in Cache(cache).records()}
    assert by_id["aaa_2-6"].metadata["labels"] == ["/m/09x0r", "/t/dd00088"]


@pytest.mark.parametrize("content, message", [
    ("file,label\nx.mp4,dog\n", "no 'path' column"),
    ("path,start,end\nx.mp4,abc,3\n", "start 'abc' is not a number"),
    ("path,start,end\nx.mp4,4,3\n", "end 3 is not after start 4"),
    ("path,start\nx.mp4,-1\n", "must be a finite number of seconds >= 0"),
    ("path,status\nx.mp4,good\n", "names the manifest uses"),
])
def test_bad_tables_are_one_line(tmp_path, content, message):
    (tmp_path / "t.csv").write_text(content)
    result = extract(tmp_path / "t.csv", tmp_path / "cache", check=1)
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "cache").exists()


def test_jsonl_table(long_videos, tmp_path):
    lines = [{"path": str(long_videos / "bbb.mp4"), "id": "clip-b", "start": 0, "end": 2, "tags": ["x", "y"]}]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    extract(tmp_path / "t.jsonl", tmp_path / "cache", check=0)
    record = Cache(tmp_path / "cache").record("clip-b")
    assert record.metadata == {"tags": ["x", "y"]} and record.segment_end == 2
