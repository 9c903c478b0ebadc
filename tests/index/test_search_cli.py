"""`avfeat search` with several queries (one load), `--queries`, and `--locate` scores, k,
"not found", times and thumbnails, on the session's tiny synthetic index (tests/index/conftest.py)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from avfeat.data.cache import Cache
from avfeat.data.synth import cut_clip
from avfeat.data.synth_media import write_media
from avfeat.data.synth_video import make_video
from avfeat.index.hits import Hit
from avfeat.index.thumbs import contact_sheet
from avfeat.testing.media import clip_frames, frame_level
from avfeat.testing.runner import run_avfeat as avfeat


def _video_ids(cache):
    return [r.video_id for r in Cache(cache).records(status="ok")]


def test_several_queries_print_one_block_each(index, corpus, cache):
    video = _video_ids(cache)[1]
    queries = [str(corpus / "video_00000.mp4"), f"{video}@0.0-2.0"]
    text = avfeat("search", index, *queries, "-k", 2, check=0).stdout.splitlines()
    headers = [i for i, line in enumerate(text) if line.startswith("== ")]
    assert len(headers) == 2 and queries[0] in text[headers[0]] and queries[1] in text[headers[1]]
    for i in headers:  # each header is followed by its own table: a column line and k rows
        assert text[i + 1].split() == ["rank", "score", "video_id", "start", "end", "path"]
        assert text[i + 2].split()[0] == "1" and text[i + 3].split()[0] == "2"
    lines = avfeat("search", index, *queries, "-k", 3, "--json", check=0).stdout.splitlines()
    blocks = [json.loads(line) for line in lines]  # JSON Lines: one object per query
    assert [b["query"] for b in blocks] == queries
    assert all(b["side"] == "audio" and [h["rank"] for h in b["hits"]] == [1, 2, 3] for b in blocks)


def test_queries_file_skips_comments_and_reads_paths_from_its_folder(index, corpus, cache, tmp_path):
    video = _video_ids(cache)[2]
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "q.mp4").write_bytes((corpus / "video_00003.mp4").read_bytes())
    listing = tmp_path / "lists" / "queries.txt"
    listing.write_text(f"# two queries\nq.mp4\n\n  # indented comment\n{video}@0.5-2.5\n")
    lines = avfeat("search", index, "--queries", listing, "-k", 2, "--json", check=0).stdout.splitlines()
    blocks = [json.loads(line) for line in lines]
    assert [b["query"] for b in blocks] == [str(tmp_path / "lists" / "q.mp4"), f"{video}@0.5-2.5"]
    assert all(len(b["hits"]) == 2 for b in blocks)


def test_an_unreadable_query_of_a_list_is_reported_and_the_others_answered(index, corpus, tmp_path):
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all" * 50)
    (tmp_path / "late.png").write_bytes(b"\x89PNG but not one")
    listing = tmp_path / "queries.txt"
    listing.write_text(f"broken.mp4\n{corpus / 'video_00001.mp4'}\nlate.png\n{corpus / 'video_00002.mp4'}\n")
    result = avfeat("search", index, "--queries", listing, "-k", 2, "--json")
    assert result.returncode == 3, result.stderr  # the convention of extract's "some failed"
    blocks = [json.loads(line) for line in result.stdout.splitlines()]
    assert [b["query"].rsplit("/", 1)[-1] for b in blocks] == ["broken.mp4", "video_00001.mp4", "late.png", "video_00002.mp4"]
    assert [len(b.get("hits", [])) for b in blocks] == [0, 2, 0, 2] and "error" in blocks[0] and "error" in blocks[2]
    errors = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr and len(errors) == 3
    assert "broken.mp4" in errors[0] and "late.png" in errors[1] and "2 queries failed" in errors[2]
    table = avfeat("search", index, "--queries", listing, "-k", 2)
    assert table.returncode == 3 and table.stdout.count("== ") == 2  # the two answered blocks


def test_a_missing_query_fails_fast_before_anything_loads(index, corpus, tmp_path):
    # Heads that do not exist: an error about the query (not the heads) shows the queries were
    # checked before anything loaded.
    args = ("search", index, corpus / "video_00000.mp4", tmp_path / "gone.wav", "--heads", tmp_path / "no_heads")
    began = time.monotonic()
    result = avfeat(*args, check=1)
    elapsed = time.monotonic() - began
    assert result.stderr.startswith("avfeat: error:") and len(result.stderr.strip().splitlines()) == 1
    assert "gone.wav" in result.stderr and result.stdout == ""
    assert elapsed < 5.0, elapsed  # loading heads and backbones takes longer
    listing = tmp_path / "list.txt"
    listing.write_text(f"{corpus / 'video_00000.mp4'}\nmissing.mp4\n")
    result = avfeat("search", index, "--queries", listing, "--heads", tmp_path / "no_heads", check=1)
    assert "missing.mp4" in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.acceptance
def test_locate_scores_k_distinct_placements_and_no_negative_times(index, cache, tmp_path):
    store = Cache(cache)
    row = store.records(status="ok")[3]
    cut_clip(row.path, tmp_path / "clip.mp4", 0.0, 1.6)  # from the very start: refinement must not try t < 0
    found = json.loads(avfeat("search", index, tmp_path / "clip.mp4", "--locate", "--json", "-k", 4, check=0).stdout)
    assert len(found) == 4  # the index holds 8 videos: 4 distinct placements exist
    assert found[0]["video_id"] == row.video_id and abs(found[0]["time"]) <= 0.2
    assert all(c["time"] >= 0 for c in found)
    assert all(a["score"] >= b["score"] for a, b in zip(found, found[1:])) and found[0]["score"] > 0.9
    for i, a in enumerate(found):  # one video never twice for overlapping spans
        assert not any(a["video_id"] == b["video_id"] and abs(a["time"] - b["time"]) < 1.6 for b in found[i + 1 :])
    exact = json.loads(avfeat("search", index, f"{row.video_id}@1.0-2.6", "--locate", "--json", "-k", 6, check=0).stdout)
    assert len(exact) == 6 and exact[0]["score"] == pytest.approx(1.0, abs=1e-3) and abs(exact[0]["time"] - 1.0) <= 0.1
    assert len({c["video_id"] for c in exact}) == 6


@pytest.mark.acceptance
def test_unrelated_sounds_and_clips_are_not_found(index, tmp_path):
    rate = 16000
    t = np.arange(2 * rate) / rate
    write_media(tmp_path / "tone.wav", None, 25, (0.4 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32), rate, audio_codec="pcm_s16le")
    # Class 9 of the synthetic catalogue: the corpus holds classes 0-3 only.
    frames, audio, _ = make_video(np.random.default_rng(7), 9, seconds=2.0, offset=0.0, size=64, fps=25.0, sample_rate=rate)
    write_media(tmp_path / "unseen.mp4", frames, 25, audio, rate)
    text = avfeat("search", index, tmp_path / "tone.wav", "--locate", check=0).stdout
    assert text.startswith("not found:") and len(text.strip().splitlines()) == 1
    result = avfeat("search", index, tmp_path / "tone.wav", tmp_path / "unseen.mp4", "--locate", "--json", check=0)
    blocks = [json.loads(line) for line in result.stdout.splitlines()]
    assert [b["candidates"] for b in blocks] == [[], []]
    assert all(0 < b["threshold"] < 1 for b in blocks)
    single = avfeat("search", index, tmp_path / "unseen.mp4", "--locate", "--json", check=0)
    assert json.loads(single.stdout) == [] and "not found" in single.stderr


def test_thumbs_with_locate_draws_the_candidates(index, cache, tmp_path):
    video = _video_ids(cache)[4]
    out = tmp_path / "sheets" / "located.png"
    avfeat("search", index, f"{video}@0.5-2.0", "--locate", "-k", 2, "--thumbs", out, check=0)
    from PIL import Image

    assert out.read_bytes().startswith(b"\x89PNG")
    sheet = np.asarray(Image.open(out).convert("RGB"))
    assert sheet.shape[1] == 5 * 160
    assert sheet[:120, :320].std() > 0  # two drawn tiles, not a blank sheet


def test_contact_sheet_shows_the_frame_mid_window(tmp_path):
    from PIL import Image

    frames = clip_frames(2.0, size=(64, 64), fps=25)  # frame i: background grey frame_level(i)
    write_media(tmp_path / "ramp.mp4", frames, 25, np.zeros(32000, np.float32), 16000)
    contact_sheet([Hit(1, 0.5, "ramp", str(tmp_path / "ramp.mp4"), 0.0, 2.0)], tmp_path / "sheet.png", columns=1)
    tile = np.asarray(Image.open(tmp_path / "sheet.png").convert("L")).astype(float)
    grey = np.median(tile[80:90, 52:108])  # the 64 px picture sits at (48, 28) of its tile; below the square
    assert abs(grey - frame_level(25)) < abs(grey - frame_level(0)) and abs(grey - frame_level(25)) <= 4  # 1.0 s, not 0.0 s


def test_one_hit_per_video_and_an_excluded_video(index, cache):
    from avfeat.data.cache import Cache

    own = Cache(cache).records()[0].video_id
    query = f"{own}@0-1"
    plain = json.loads(avfeat("search", index, query, "-k", 6, "--json", check=0).stdout)
    assert len({hit["video_id"] for hit in plain}) < len(plain)  # windows of one video crowd the top
    hits = json.loads(avfeat("search", index, query, "-k", 4, "--per-video", "--exclude-video", own, "--json", check=0).stdout)
    assert len(hits) == 4 and len({hit["video_id"] for hit in hits}) == 4 and own not in {hit["video_id"] for hit in hits}
    assert [hit["rank"] for hit in hits] == [1, 2, 3, 4]


def test_queries_compute_their_tokens_as_the_cache_did(index, heads):
    """A query file is embedded in the cache's compute dtype and decode mode (which the index and
    the heads record), not in what `--dtype auto` would pick on this CPU."""
    from avfeat.data.configs import TrainedOn
    from avfeat.index.query import Backbones, query_dtype

    meta = json.loads((index / "meta.json").read_text())
    config = json.loads((heads / "config.json").read_text())
    for recorded in (meta["cache"], config["cache"]):
        assert recorded["compute_dtype"] == "float32" and recorded["decode_mode"] == "exact"
    encoder = Backbones(TrainedOn.from_dict({**meta["cache"], "decode_mode": "keyframes"}), device="cpu").encoder
    assert encoder.dtype == "float32" and encoder.spec.mode == "keyframes"
    assert query_dtype("bfloat16", "cpu") == "bfloat16" and query_dtype("int8", "cpu") == "int8"
    assert query_dtype("int8", "cuda:0") == "auto" and query_dtype(None, "cpu") == "auto"


def test_a_keyframes_cache_is_queried_with_keyframes(corpus, tmp_path):
    """An index over a `--decode-mode keyframes` cache embeds a query file as that cache did:
    the indexed video, given as a query, gets its cached frames and their tokens back (exact
    decoding gives other frames)."""
    from avfeat.data.configs import TrainedOn
    from avfeat.index.query import Backbones
    from avfeat.index.search import Searcher

    from .conftest import TINY, train_heads

    cache = tmp_path / "cache"
    avfeat("extract", corpus, "--out", cache, *TINY, "--fps", 5, "--decode-mode", "keyframes", "--quiet", "--workers", 1, check=0)
    heads = train_heads(cache, tmp_path / "heads", steps=2)
    avfeat("index", cache, "--heads", heads, "--out", tmp_path / "index", "--quiet", check=0)
    searcher = Searcher(tmp_path / "index")
    assert searcher.meta["cache"]["decode_mode"] == "keyframes" and searcher.checkpoint.config.cache.decode_mode == "keyframes"
    record = Cache(cache).records(status="ok")[0]
    cached = Cache(cache).read_frames(record).astype(np.float32)
    query = searcher.tokens(record.path)
    np.testing.assert_array_equal(query.frame_times, Cache(cache).frame_times(record))
    np.testing.assert_allclose(query.visual, cached, atol=1e-2)  # the cache stores float16
    exact = Backbones(TrainedOn.from_dict({**searcher.meta["cache"], "decode_mode": "exact"}), device="cpu").encode(record.path)
    assert exact.visual.shape != cached.shape or np.abs(exact.visual - cached).max() > 0.1  # 15 frames against 7 keyframes here


def test_a_video_is_named_by_its_stem_or_file_name(index, cache):
    from pathlib import Path

    from avfeat.testing.runner import one_line_error

    record = Cache(cache).records(status="ok")[1]
    stem, own = Path(record.path).stem, record.video_id
    by_id = json.loads(avfeat("search", index, f"{own}@1-3", "-k", 4, "--json", check=0).stdout)
    for name in (stem, Path(record.path).name):  # `avfeat search INDEX STEM@1-3`
        assert json.loads(avfeat("search", index, f"{name}@1-3", "-k", 4, "--json", check=0).stdout) == by_id
    hits = json.loads(avfeat("search", index, f"{stem}@1-3", "-k", 4, "--per-video", "--exclude-video", stem, "--json", check=0).stdout)
    assert hits and own not in {hit["video_id"] for hit in hits}
    typo = stem.replace("i", "", 1)  # vdeo_00001: closest to its own id
    one_line_error(avfeat("search", index, f"{typo}@1-3"), f"no video {typo!r}; did you mean {own}")
