"""`avfeat index` / `search` / `sync` and the Python API, on one tiny synthetic cache."""

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from avfeat.align.checkpoint import load_checkpoint
from avfeat.align.scores import pairwise_scores, pooled_audio, pooled_visual
from avfeat.align.windows import WindowGeometry, video_windows
from avfeat.data.cache import Cache
from avfeat.data.synth_media import write_media
from avfeat.core.errors import InputError, SearchIndexError
from avfeat.index import Searcher
from avfeat.core.values import parse_size
from avfeat.index.build import build_faiss, choose_factory
from avfeat.index.locate import vote
from avfeat.index.hits import Hit
from avfeat.index.sync import sync_cached, sync_tokens
from avfeat.index.thumbs import contact_sheet
from avfeat.index.vectors import audio_window_vectors, frame_summaries, project_audio, project_visual, visual_window_vectors
from tests.index.conftest import train_heads
from avfeat.testing.runner import run_avfeat as avfeat


# ---- automatic FAISS choice -------------------------------------------------------------------


def test_parse_size():
    assert parse_size("4GB") == 4 * 2**30 and parse_size("512m") == 512 * 2**20 and parse_size("1000") == 1000
    with pytest.raises(InputError):
        parse_size("lots")


def test_choose_factory_by_size_and_budget():
    assert choose_factory(50_000, 256) == "Flat"
    assert choose_factory(1_000_000, 256, memory_budget=8 * 2**30) == "IVF1024,Flat"
    assert choose_factory(1_000_000, 256, memory_budget=200 * 2**20).startswith("IVF1024,PQ")
    m = int(choose_factory(1_000_000, 256, memory_budget=100 * 2**20).split("PQ")[1])
    assert 1_000_000 * (m + 8) <= 100 * 2**20 and 256 % m == 0
    with pytest.raises(SearchIndexError):
        choose_factory(1_000_000, 256, memory_budget=2**20)


def _clustered(n, dim, seed):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((64, dim))
    x = centres[rng.integers(64, size=n)] + 0.5 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("factory, knob", [("IVF64,Flat", "nprobe"), ("HNSW16,Flat", "efSearch")])
def test_approximate_index_is_tuned_to_target_recall(factory, knob):
    vectors, queries = _clustered(20_000, 32, 0), _clustered(300, 32, 1)
    built = build_faiss(vectors, factory, queries=queries)
    assert built.index.ntotal == 20_000 and knob in built.params
    assert built.recall_at_10 >= 0.95
    _, ids = built.index.search(vectors[:5], 1)
    assert ids[:, 0].tolist() == [0, 1, 2, 3, 4]  # ids are the rows of the table


def test_flat_is_exact_and_bad_factory_is_an_input_error():
    vectors = _clustered(500, 16, 2)
    built = build_faiss(vectors)
    assert built.factory == "Flat" and built.recall_at_10 is None
    scores, ids = built.index.search(vectors[:3], 2)
    assert ids[:, 0].tolist() == [0, 1, 2] and np.allclose(scores[:, 0], 1.0, atol=1e-5)
    with pytest.raises(InputError):
        build_faiss(vectors, "NoSuchIndex12")


# ---- window vectors ---------------------------------------------------------------------------


def test_window_vectors_are_pooled_projected_windows(cache, heads):
    store, checkpoint = Cache(cache), load_checkpoint(heads)
    row = store.records(status="ok")[0]
    geometry = WindowGeometry.for_cache(store, 1.0)
    windows = video_windows(row, store.frame_times(row.video_id), geometry, 0.4)
    audio = project_audio(checkpoint.heads, store.audio_tokens(row.video_id))
    visual = project_visual(checkpoint.heads, store.visual_tokens(row.video_id))
    got_a = audio_window_vectors(audio, windows, geometry)
    got_v = visual_window_vectors(frame_summaries(checkpoint.heads, store.visual_tokens(row.video_id)), windows, geometry, "max-mean")
    for i, w in enumerate(windows):
        want_a = pooled_audio(audio[w.audio : w.audio + geometry.audio_tokens])
        want_v = pooled_visual(visual[w.frame : w.frame + geometry.frames], "max-mean")
        assert torch.allclose(got_a[i], want_a, atol=1e-5) and torch.allclose(got_v[i], want_v, atol=1e-5)


# ---- avfeat index ------------------------------------------------------------------------------


def test_index_writes_tables_and_meta(index, cache, heads):
    meta = json.loads((index / "meta.json").read_text())
    store = Cache(cache)
    assert meta["cache"]["fingerprint"] == store.fingerprint()
    assert meta["heads"]["fingerprint"] == load_checkpoint(heads).fingerprint
    assert meta["window"] == 1.0 and meta["hop"] == 0.2 and meta["dim"] == 32
    assert not list(index.parent.glob("*.tmp"))
    for modality in ("audio", "visual"):
        table = pq.read_table(index / meta["modalities"][modality]["table"])
        assert table.column_names == ["id", "video_id", "path", "start", "end"]
        assert table.num_rows == meta["modalities"][modality]["count"] > 0
        assert meta["modalities"][modality]["factory"] == "Flat"
        assert set(table.column("video_id").to_pylist()) == {r.video_id for r in store.records(status="ok")}
        ends = np.array(table.column("end")) - np.array(table.column("start"))
        assert np.allclose(ends, 1.0)


def test_index_refuses_to_overwrite_a_folder_that_is_not_an_index(cache, heads, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = avfeat("index", cache, "--heads", heads, "--out", tmp_path, "--quiet")
    assert result.returncode == 1 and "not an avfeat index" in result.stderr
    assert (tmp_path / "notes.txt").read_text() == "mine"


# ---- avfeat search -----------------------------------------------------------------------------


def test_search_file_json_table_and_thumbs(index, corpus, tmp_path):
    query = corpus / "video_00000.mp4"
    hits = json.loads(avfeat("search", index, query, "-k", 4, "--json", "--thumbs", tmp_path / "hits.png", check=0).stdout)
    assert [h["rank"] for h in hits] == [1, 2, 3, 4]
    assert set(hits[0]) == {"rank", "score", "video_id", "path", "start", "end", "metadata"}
    assert all(a["score"] >= b["score"] for a, b in zip(hits, hits[1:]))
    assert (tmp_path / "hits.png").stat().st_size > 0
    table = avfeat("search", index, query, "-k", 2, check=0).stdout.splitlines()
    assert table[0].split() == ["rank", "score", "video_id", "start", "end", "path"] and len(table) == 3


def test_audio_file_and_image_queries(index, corpus, tmp_path):
    from avfeat.data.synth_video import make_video

    frames, audio, _ = make_video(np.random.default_rng(5), 1, seconds=2.0, offset=0.0, size=64, fps=25.0, sample_rate=16000)
    write_media(tmp_path / "q.wav", None, 25, audio, 16000, audio_codec="pcm_s16le")
    from PIL import Image

    Image.fromarray(frames[len(frames) // 2]).save(tmp_path / "q.png")
    searcher = Searcher(index)
    wav = searcher.tokens(tmp_path / "q.wav")
    assert wav.kind == "audio" and wav.visual is None and wav.default_side() == "audio"
    png = searcher.tokens(tmp_path / "q.png")
    assert png.kind == "image" and png.audio is None and png.default_side() == "visual"
    for query in ("q.wav", "q.png"):
        hits = json.loads(avfeat("search", index, tmp_path / query, "-k", 3, "--json", check=0).stdout)
        assert len(hits) == 3


def test_cached_id_query_and_rerank_scores_are_max_mean(index, cache):
    store = Cache(cache)
    video = store.records(status="ok")[1].video_id
    searcher = Searcher(index)
    plain = searcher.search(f"{video}@0.0-2.0", k=3)
    reranked = searcher.search(f"{video}@0.0-2.0", k=3, rerank=6)
    assert len(plain) == len(reranked) == 3
    heads = searcher.heads
    query = project_audio(heads, store.audio_tokens(video, 0.0, 2.0))[None]
    for hit in reranked:
        visual = project_visual(heads, store.visual_tokens(hit.video_id, hit.start, hit.end))[None]
        assert hit.score == pytest.approx(float(pairwise_scores(query, visual)[0, 0]), abs=1e-5)
    assert all(a.score >= b.score for a, b in zip(reranked, reranked[1:]))
    cli = json.loads(avfeat("search", index, f"{video}@0.0-2.0", "--from", "visual", "--json", "-k", 2, check=0).stdout)
    assert len(cli) == 2


def test_search_vectors(index):
    searcher = Searcher(index)
    table = searcher.folder.table("visual")
    vectors = searcher.folder.faiss_index("visual").reconstruct(3)  # IndexIDMap2 keeps vectors by id
    hits = searcher.search_vectors(vectors[None], "visual", k=1)
    assert hits[0][0].video_id == table.column("video_id")[3].as_py() and hits[0][0].score == pytest.approx(1.0, abs=1e-4)


def test_other_heads_or_cache_are_refused(index, cache, tmp_path):
    other_heads = train_heads(cache, tmp_path / "other_heads", seed=1, steps=2)
    result = avfeat("search", index, "x@0-1", "--heads", other_heads)
    assert result.returncode == 1 and "other heads" in result.stderr
    # the query is checked first: a missing file is refused before anything loads
    missing = avfeat("search", index, "anything.wav", "--heads", other_heads)
    assert missing.returncode == 1 and "neither a file nor VIDEO_ID@START-END" in missing.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    other_cache = tmp_path / "other_cache"
    shutil.copytree(cache, other_cache)
    sorted((other_cache / "manifest").glob("*.parquet"))[-1].unlink()
    result = avfeat("search", index, "x@0-1", "--cache", other_cache)
    assert result.returncode == 1 and "another cache" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("make", ["missing", "text", "bad_id"])
def test_unusable_query_is_one_line_error(index, tmp_path, make):
    query = {"missing": str(tmp_path / "gone.mp4"), "text": str(tmp_path / "notes.mp4"), "bad_id": "no_such_video@0-1"}[make]
    (tmp_path / "notes.mp4").write_text("not a video\n")
    result = avfeat("search", index, query)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("avfeat: error:") and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_contact_sheet_has_placeholder_for_missing_file(corpus, tmp_path):
    from PIL import Image

    hits = [Hit(1, 0.5, "a", str(corpus / "video_00000.mp4"), 1.0, 2.0), Hit(2, 0.4, "b", str(tmp_path / "gone.mp4"), 0.0, 1.0)]
    contact_sheet(hits, tmp_path / "sheet.png", columns=2)
    sheet = np.asarray(Image.open(tmp_path / "sheet.png"))
    assert sheet.shape[1] == 320
    assert (sheet[60, 240] == (90, 90, 90)).all()  # the grey placeholder tile
    assert not (sheet[60, 80] == (90, 90, 90)).all()


# ---- locate ------------------------------------------------------------------------------------


def test_vote_bins_offsets_and_suppresses_neighbours():
    matches = [("a", "a.mp4", 1.19), ("a", "a.mp4", 1.21), ("a", "a.mp4", 1.4), ("b", "b.mp4", 0.0), ("a", "a.mp4", 3.0)]
    best = vote(matches, fps=5, k=3)
    assert best[0].video_id == "a" and best[0].votes == 3 and best[0].time == pytest.approx(1.2)
    assert [c.video_id for c in best[1:]] in (["a", "b"], ["b", "a"])


@pytest.mark.acceptance
def test_locate_clip_cut_from_an_indexed_video(index, cache, tmp_path):
    import av

    store = Cache(cache)
    row = store.records(status="ok")[2]
    start, length = 0.6, 1.6
    with av.open(row.path) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0) if start - 1e-6 <= f.time < start + length - 1e-6])
    with av.open(row.path) as container:
        audio = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    write_media(tmp_path / "clip.mp4", frames, 25, audio[int(start * 16000) : int((start + length) * 16000)].astype(np.float32), 16000)
    found = json.loads(avfeat("search", index, tmp_path / "clip.mp4", "--locate", "--json", "-k", 2, check=0).stdout)
    assert set(found[0]) == {"video_id", "path", "time", "votes", "score"}
    assert found[0]["video_id"] == row.video_id and abs(found[0]["time"] - start) <= 0.2
    best = Searcher(index).locate(f"{row.video_id}@1.0-2.6", k=1)[0]
    assert best.video_id == row.video_id and abs(best.time - 1.0) <= 0.2


# ---- sync --------------------------------------------------------------------------------------


def _identity_heads(dim):
    """Heads that map audio and visual tokens the same way, so equal tokens have cosine 1."""
    from avfeat.align.heads import AVHeads, HeadConfig

    heads = AVHeads(HeadConfig(audio_dim=dim, visual_dim=dim, dim=dim))
    with torch.no_grad():
        for head in (heads.audio, heads.visual):
            head.proj.weight.copy_(torch.eye(dim))
            head.proj.bias.zero_()
    return heads.eval()


@pytest.mark.parametrize("offset", [0.46, -0.74, 0.0])
def test_sync_recovers_a_known_offset(offset):
    """Pictures change every 0.2 s among a few states; the sound of a state is heard ``offset``
    seconds after it is shown (positive = audio late). Frames sit mid-state."""
    rng = np.random.default_rng(0)
    dim, seconds, fps, rate = 16, 8.0, 5.0, 50.0
    states = rng.standard_normal((6, dim)).astype(np.float32)
    blocks = rng.integers(6, size=int(seconds * fps))
    frame_times = (np.arange(len(blocks)) + 0.5) / fps
    visual = rng.standard_normal((len(blocks), 5, dim)).astype(np.float32)  # CLS + 4 patches of noise
    visual[:, 2] = states[blocks]  # one patch shows the state
    token_times = np.arange(int(seconds * rate)) / rate
    shown = np.floor((token_times - offset) * fps).astype(int)  # the state shown when this sound started
    audio = rng.standard_normal((len(token_times), dim)).astype(np.float32)
    inside = (shown >= 0) & (shown < len(blocks))
    audio[inside] = states[blocks[shown[inside]]]
    result = sync_tokens(_identity_heads(dim), audio, 0.0, rate, visual, frame_times, fps, max_offset=2.0)
    assert result.offset == pytest.approx(offset, abs=0.021)
    assert result.confidence > 0.3
    assert result.lags[0] == pytest.approx(-2.0) and len(result.lags) == 201


def test_sync_cached_matches_sync_on_the_same_tokens(cache, heads):
    store, checkpoint = Cache(cache), load_checkpoint(heads)
    row = store.records(status="ok")[0]
    vid = row.video_id
    direct = sync_tokens(checkpoint.heads, store.audio_tokens(vid), row.audio_start, row.audio_rate, store.visual_tokens(vid), store.frame_times(vid), row.fps, 1.0)
    cached = sync_cached(store, vid, checkpoint.heads, max_offset=1.0)
    assert cached.offset == pytest.approx(direct.offset) and np.isfinite(cached.offset)
    assert 0.0 <= cached.confidence <= 1.0


def test_sync_cli_json_and_plot(heads, corpus, tmp_path):
    out = avfeat("sync", corpus / "video_00001.mp4", "--heads", heads, "--json", "--plot", tmp_path / "curve.png", "--max-offset", 1.0, check=0)
    result = json.loads(out.stdout)
    assert set(result) == {"offset", "confidence"} and abs(result["offset"]) <= 1.0 and 0 <= result["confidence"] <= 1
    assert (tmp_path / "curve.png").stat().st_size > 0
    text = avfeat("sync", corpus / "video_00001.mp4", "--heads", heads, check=0).stdout
    assert text.startswith("offset ")
    missing = avfeat("sync", tmp_path / "gone.mp4", "--heads", heads)
    assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("edit, message", [
    (lambda meta: meta["modalities"]["audio"].pop("count"), "is damaged"),
    (lambda meta: meta.pop("heads"), "is damaged"),
    (lambda meta: meta["modalities"]["audio"].update(shards=[{"file": "../../etc/passwd", "begin": 0, "end": 1}]), "outside the index folder"),
])
def test_a_damaged_meta_json_is_one_line(index, tmp_path, edit, message):
    copy = tmp_path / "index"
    shutil.copytree(index, copy)
    meta = json.loads((copy / "meta.json").read_text())
    edit(meta)
    (copy / "meta.json").write_text(json.dumps(meta))
    result = avfeat("search", copy, "x@0-1")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and message in lines[0], result.stderr


def test_an_image_bomb_is_a_one_line_error(index, tmp_path):
    """A PNG whose header claims 20000 x 20000 pixels (400M: PIL refuses past about 179M)."""
    import struct
    import zlib

    from PIL import Image

    Image.new("RGB", (1, 1)).save(tmp_path / "bomb.png")
    data = bytearray((tmp_path / "bomb.png").read_bytes())
    ihdr = data[12:29]  # "IHDR" + width, height, depth, colour, compression, filter, interlace
    ihdr[4:12] = struct.pack(">II", 20000, 20000)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    (tmp_path / "bomb.png").write_bytes(bytes(data))
    result = avfeat("search", index, tmp_path / "bomb.png")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "image too large" in result.stderr
