import json

import numpy as np
import pytest

from avfeat.data.cache import Cache
from avfeat.data.layout import CacheLayout
from avfeat.data.manifest import read_manifest
from avfeat.data.shards import ShardWriter, new_record, open_for_writing
from avfeat.core.errors import CacheError

# A cache.json as extract writes it (the tokens below: 4 audio dims, 3 tokens of 2 dims per frame).
CONFIG = {"audio_model": "random:hubert-tiny", "visual_model": "random:dinov2-tiny", "audio_layer": -1, "visual_layer": -1,
          "audio_dim": 4, "audio_token_rate": 50.0, "visual_dim": 2, "visual_tokens": 3, "fps": 2.0}


def _write_shard(root, index, videos, failures=()):
    layout = open_for_writing(root, CONFIG)
    with ShardWriter(layout, index, audio_dim=4, visual_tokens_per_frame=3, visual_dim=2, attrs={"spec": "x"}) as writer:
        for vid, frames, tokens in videos:
            record = new_record(vid, f"/videos/{vid}.mp4", 10, 1.0).with_(audio_start=0.5, audio_rate=50.0, duration=frames / 2)
            audio = np.arange(tokens * 4, dtype=np.float32).reshape(tokens, 4) + index
            visual = np.full((frames, 3, 2), len(vid), dtype=np.float32)
            writer.add(record, audio, visual, np.arange(frames) / 2.0)
        for vid, status in failures:
            writer.add_failure(new_record(vid, f"/videos/{vid}.mp4", 0, 0.0), status, "broken")
    return layout


def test_round_trip_and_time_windows(tmp_path):
    _write_shard(tmp_path, 0, [("a", 4, 100), ("bb", 6, 150)], failures=[("c", "unreadable")])
    cache = Cache(tmp_path)
    assert [v.video_id for v in cache.records()] == ["a", "bb", "c"]
    assert cache.status_counts() == {"ok": 2, "unreadable": 1}
    assert cache.audio_tokens("bb").shape == (150, 4)
    assert cache.visual_tokens("bb").shape == (6, 3, 2)
    assert cache.visual_tokens("bb").dtype == np.float16
    np.testing.assert_array_equal(cache.frame_times("bb"), np.arange(6) / 2.0)
    # audio tokens start at 0.5 s at 50 Hz: [1.0, 1.5) holds tokens 25..49
    window = cache.audio_tokens("a", 1.0, 1.5)
    np.testing.assert_array_equal(window, np.arange(100 * 4).reshape(100, 4)[25:50].astype(np.float16))
    assert cache.visual_tokens("bb", 0.5, 1.5).shape[0] == 2  # frames at 0.5 and 1.0
    with pytest.raises(CacheError, match="no tokens"):
        cache.audio_tokens("c")
    with pytest.raises(CacheError, match="not in the cache"):
        cache.audio_tokens("zzz")
    with pytest.raises(CacheError, match="did you mean bb"):
        cache.audio_tokens("b")


def test_a_failing_writer_block_leaves_no_shard(tmp_path):
    layout = _write_shard(tmp_path, 0, [("a", 2, 10)])
    with pytest.raises(RuntimeError):
        with ShardWriter(layout, 1, audio_dim=4, visual_tokens_per_frame=3, visual_dim=2, attrs={}) as writer:
            writer.add(new_record("b", "/videos/b.mp4", 1, 1.0).with_(audio_rate=50.0), np.zeros((3, 4)), np.zeros((1, 3, 2)), [0.0])
            raise RuntimeError("stop")
    assert sorted(p.name for p in layout.shard_dir.iterdir()) == ["shard-00000.h5"]
    assert [r.video_id for r in Cache(tmp_path).records()] == ["a"]


def test_latest_record_wins(tmp_path):
    _write_shard(tmp_path, 0, [("a", 2, 10)], failures=[("b", "timeout")])
    _write_shard(tmp_path, 1, [("b", 3, 20)])
    cache = Cache(tmp_path)
    assert cache.status_counts() == {"ok": 2}
    assert cache.record("b").shard == 1 and cache.visual_tokens("b").shape[0] == 3


def test_uncommitted_shards_and_temp_files_are_removed(tmp_path):
    layout = _write_shard(tmp_path, 0, [("a", 2, 10)])
    orphan = layout.shard_dir / "shard-00001.h5"
    orphan.write_bytes(b"half written")
    (layout.shard_dir / "shard-00002.h5.123.tmp").write_bytes(b"x")
    (layout.manifest_dir / "part-00002.parquet.tmp").write_bytes(b"x")
    open_for_writing(tmp_path, CONFIG)
    assert sorted(p.name for p in layout.shard_dir.iterdir()) == ["shard-00000.h5"]
    assert sorted(p.name for p in layout.manifest_dir.iterdir()) == ["part-00000.parquet"]
    assert read_manifest(tmp_path).num_rows == 1


def test_changed_config_is_refused(tmp_path):
    open_for_writing(tmp_path, CONFIG)
    with pytest.raises(CacheError, match="different config.*fps"):
        open_for_writing(tmp_path, {**CONFIG, "fps": 1.0})
    assert json.loads(CacheLayout(tmp_path).config_path.read_text())["fps"] == 2.0


def test_not_a_cache(tmp_path):
    with pytest.raises(CacheError, match="not an avfeat cache"):
        Cache(tmp_path)
    (tmp_path / "something.txt").write_text("x")
    with pytest.raises(CacheError, match="non-empty folder"):
        open_for_writing(tmp_path, CONFIG)


def test_non_finite_tokens_are_recorded_not_written(tmp_path):
    layout = open_for_writing(tmp_path, CONFIG)
    with ShardWriter(layout, 0, audio_dim=4, visual_tokens_per_frame=3, visual_dim=2, attrs={}) as writer:
        record = new_record("a", "/videos/a.mp4", 1, 1.0).with_(audio_rate=50.0, duration=1.0)
        writer.add(record, np.full((5, 4), 1e6, dtype=np.float32), np.zeros((2, 3, 2)), [0.0, 0.5])  # overflows float16
        writer.add(record.with_(video_id="b"), np.zeros((5, 4)), np.full((2, 3, 2), np.nan), [0.0, 0.5])
        writer.add(record.with_(video_id="c"), np.zeros((5, 4)), np.zeros((2, 3, 2)), [0.0, 0.5])
    cache = Cache(tmp_path)
    assert cache.status_counts() == {"non_finite": 2, "ok": 1}
    assert "audio backbone" in cache.record("a").error and "visual backbone" in cache.record("b").error
    assert cache.audio_tokens("c").shape == (5, 4)


@pytest.mark.parametrize("damage, message", [
    ("config", "cannot read"), ("config_list", "not an avfeat cache config"), ("part", "manifest part"),
])
def test_damaged_state_is_one_line_naming_the_file(tmp_path, damage, message):
    from avfeat.testing.runner import run_avfeat

    layout = _write_shard(tmp_path, 0, [("a", 2, 10)])
    if damage == "config":
        layout.config_path.write_text("{ not json")
    elif damage == "config_list":
        layout.config_path.write_text("[1, 2]")
    else:
        (layout.manifest_dir / "part-00000.parquet").write_bytes(b"PAR1 flipped bytes")
    with pytest.raises(CacheError, match=message):
        Cache(tmp_path)
    result = run_avfeat("info", tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr


def test_flipped_bytes_are_found_and_named(tmp_path):
    from avfeat.data.shards import remove_damaged

    layout = _write_shard(tmp_path, 0, [("a", 2, 10), ("bb", 3, 20)])
    _write_shard(tmp_path, 1, [("c", 2, 10)])
    assert Cache(tmp_path).verify() == []
    shard = layout.shard_dir / "shard-00000.h5"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit pattern, size unchanged
    shard.write_bytes(bytes(data))
    (damage,) = Cache(tmp_path).verify()
    assert damage.path == shard and damage.video_ids == ["a", "bb"] and "SHA-256" in damage.problem
    shard.write_bytes(bytes(data[:1000]))  # truncated: readers refuse it on open
    with pytest.raises(CacheError, match="truncated or replaced"):
        Cache(tmp_path).audio_tokens("a")
    remove_damaged(layout, Cache(tmp_path).verify())
    cache = Cache(tmp_path)
    assert [r.video_id for r in cache.records()] == ["c"] and cache.verify() == []


def test_a_config_no_reader_could_open_is_never_written(tmp_path):
    with pytest.raises(CacheError, match="lacks visual_tokens"):
        open_for_writing(tmp_path / "cache", {k: v for k, v in CONFIG.items() if k != "visual_tokens"})
    assert not (tmp_path / "cache").exists()


def test_a_video_is_named_by_its_id_path_file_name_or_stem():
    from avfeat.data.cache import UnknownVideoName, resolve_video_name

    paths = {"clip-0123456789abcdef": "/v/clip.mp4", "song-aaaa000011112222": "/v/music/song.webm",
             "song-bbbb000011112222": "/w/song.mp4", "long-1": "/v/long.mp4", "long-2": "/v/long.mp4"}
    for name in ("clip-0123456789abcdef", "clip", "clip.mp4", "/v/clip.mp4", "/v/../v/clip.mp4"):
        assert resolve_video_name(name, paths, "listing") == "clip-0123456789abcdef", name
    assert resolve_video_name("song.webm", paths, "listing") == "song-aaaa000011112222"
    with pytest.raises(UnknownVideoName, match=r"'song' names 2 videos \(song-aaaa000011112222, song-bbbb000011112222\)"):
        resolve_video_name("song", paths, "listing")  # one stem, two files
    with pytest.raises(UnknownVideoName, match=r"'long.mp4' names 2 videos \(long-1, long-2\)"):
        resolve_video_name("long.mp4", paths, "listing")  # two segments of one file
    with pytest.raises(UnknownVideoName, match="did you mean clip-0123456789abcdef"):
        resolve_video_name("clp", paths, "listing")
    with pytest.raises(UnknownVideoName, match="no video 'zzzzzzzz'; listing$"):
        resolve_video_name("zzzzzzzz", paths, "listing")
    with pytest.raises(UnknownVideoName, match="no video has a name of 10000000 characters"):
        resolve_video_name("x" * 10_000_000, paths, "listing")  # neither compared nor echoed
