"""`avfeat index --update`, metadata columns in index tables and search results, `--where`, and
`Searcher.embed`, on the session's tiny synthetic cache, heads and index (tests/index/conftest.py)."""

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from avfeat.align.checkpoint import load_checkpoint, save_heads
from avfeat.align.windows import WindowGeometry, video_windows
from avfeat.data.cache import Cache
from avfeat.data.records import VideoRecord
from avfeat.data.synth import make_corpus
from avfeat.core.errors import IndexMismatchError, InputError
from avfeat.index import Searcher
from avfeat.index.build import build_faiss
from avfeat.index.update import append_to_index, update_index
from avfeat.index.vector_search import parse_where
from avfeat.index.store import IndexFolder, write_index
from avfeat.testing.runner import TINY_MODELS as TINY
from avfeat.testing.runner import run_avfeat as avfeat


def meta_of(index):
    return json.loads((index / "meta.json").read_text())


def one_line_error(result, *words):
    assert result.returncode == 1, result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


def ok_ids(cache):
    return {record.video_id for record in Cache(cache).records(status="ok")}


# ---- avfeat index --update ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def updated(cache, heads, index, tmp_path_factory):
    """A copy of the session index updated with 2 videos extracted (`--resume`) into a copy of
    its cache: (index, grown cache, the 2 new files, the update's result)."""
    root = tmp_path_factory.mktemp("update")
    grown, out, new = root / "cache", root / "index", root / "new"
    shutil.copytree(cache, grown)
    shutil.copytree(index, out)
    make_corpus(new, videos=2, seconds=3.0, classes=4, seed=1, size=64)
    avfeat("extract", new, "--out", grown, *TINY, "--fps", 5, "--quiet", "--workers", 1, "--resume", check=0)
    assert len(ok_ids(grown) - ok_ids(cache)) == 2
    result = avfeat("index", grown, "--heads", heads, "--out", out, "--update", "--quiet", check=0)
    return out, grown, sorted(new.glob("*.mp4")), result


def test_update_adds_the_new_videos_windows(updated, cache, index):
    out, grown, _, result = updated
    assert "added 2 videos" in result.stdout
    before, after = meta_of(index), meta_of(out)
    store = Cache(grown)
    new_ids = ok_ids(grown) - ok_ids(cache)
    # The new videos' windows, cut as the index cuts them (its window and hop).
    geometry = WindowGeometry(before["window"], before["geometry"]["audio_rate"], before["geometry"]["fps"])
    added = sum(len(video_windows(store.record(v), store.frame_times(v), geometry, before["hop"])) for v in new_ids)
    assert added > 0
    assert after["videos"] == before["videos"] + 2
    assert after["cache"]["fingerprint"] == store.fingerprint() and after["cache"]["path"] == str(grown.resolve())
    assert after["heads"] == before["heads"] and after["window"] == before["window"] and after["hop"] == before["hop"]
    for modality in ("audio", "visual"):
        count = before["modalities"][modality]["count"]
        assert after["modalities"][modality]["count"] == count + added
        assert after["modalities"][modality]["factory"] == before["modalities"][modality]["factory"]
        old, table = IndexFolder(index).table(modality), IndexFolder(out).table(modality)
        assert table.slice(0, count).equals(old)  # the indexed rows stay as they were
        assert table.column("id").to_pylist() == list(range(count + added))
        assert set(table.column("video_id").to_pylist()[count:]) == new_ids
        assert IndexFolder(out).faiss_index(modality).ntotal == count + added
    # Only the files the new meta.json lists remain (the replaced ones are gone).
    listed = {name for m in after["modalities"] for name in (after["modalities"][m]["table"], *after["modalities"][m].get("table_parts", []))}
    listed |= {s["file"] for m in after["modalities"] for s in after["modalities"][m]["shards"]}
    assert {p.name for p in out.iterdir() if p.suffix in (".faiss", ".parquet")} == listed


def test_search_after_update_finds_a_new_video(updated, cache):
    out, grown, files, _ = updated
    store = Cache(grown)
    new_id = next(r.video_id for r in store.records(status="ok") if r.path == str(files[0].resolve()))
    # Each window of the new file, embedded again, finds its own window in the index: the new
    # vectors are in FAISS under the ids of their table rows.
    searcher = Searcher(out)
    for modality in ("audio", "visual"):
        vectors = searcher.embed(files[0], side=modality, windows=True)
        hits = searcher.search_vectors(vectors, modality, k=1)
        assert {row[0].video_id for row in hits} == {new_id}
        assert min(row[0].score for row in hits) > 0.99
    # And `avfeat search --locate` places a piece of it in the new video (cached tokens: the
    # index records the grown cache now).
    found = json.loads(avfeat("search", out, f"{new_id}@0.4-2.4", "--locate", "--json", "-k", 1, check=0).stdout)
    assert found[0]["video_id"] == new_id and found[0]["time"] == pytest.approx(0.4, abs=0.1)


def test_update_with_nothing_new_changes_nothing(cache, heads, index, tmp_path):
    out = tmp_path / "index"
    shutil.copytree(index, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    result = avfeat("index", cache, "--heads", heads, "--out", out, "--update", "--quiet", check=0)
    assert "nothing to add" in result.stdout
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_update_refuses_other_heads(cache, heads, index, tmp_path):
    other = tmp_path / "other_heads"
    shutil.copytree(heads, other)
    checkpoint = load_checkpoint(other)
    with torch.no_grad():
        next(checkpoint.heads.parameters()).add_(0.01)  # other weights, same config
    save_heads(other, checkpoint.heads, checkpoint.config.to_dict())
    out = tmp_path / "index"
    shutil.copytree(index, out)
    before = (out / "meta.json").read_bytes()
    one_line_error(avfeat("index", cache, "--heads", other, "--out", out, "--update", "--quiet"), "other heads")
    assert (out / "meta.json").read_bytes() == before
    # Options that an update would not apply are refused (checked before anything loads).
    one_line_error(avfeat("index", cache, "--heads", other, "--out", out, "--update", "--hop", 0.5), "--update keeps", "--hop")


def test_update_refuses_a_cache_without_or_with_changed_indexed_videos(cache, heads, index, tmp_path):
    out = tmp_path / "index"
    shutil.copytree(index, out)
    before = (out / "meta.json").read_bytes()
    checkpoint = load_checkpoint(heads)
    fewer = tmp_path / "fewer"
    shutil.copytree(cache, fewer)
    sorted((fewer / "manifest").glob("*.parquet"))[-1].unlink()
    with pytest.raises(IndexMismatchError, match="lacks"):
        update_index(Cache(fewer), checkpoint, out)
    # One video's record rewritten as a re-extraction would leave it (same id, other tokens).
    changed = tmp_path / "changed"
    shutil.copytree(cache, changed)
    part = sorted((changed / "manifest").glob("*.parquet"))[0]
    table = pq.read_table(part)
    lengths = table.column("audio_length").to_pylist()
    lengths[0] -= 1
    pq.write_table(table.set_column(table.column_names.index("audio_length"), "audio_length", pa.array(lengths, pa.int64())), part)
    with pytest.raises(IndexMismatchError, match="extracted again"):
        update_index(Cache(changed), checkpoint, out)
    assert (out / "meta.json").read_bytes() == before


def test_append_to_a_sharded_ivf_index_keeps_its_shards_and_adds_a_delta(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((630, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)

    def rows(first, n):
        ids = np.arange(first, first + n)
        return pa.table({"id": ids, "video_id": [f"v{i}" for i in ids], "path": ["p"] * n, "start": ids * 0.0, "end": ids * 0.0 + 1})

    built = build_faiss(vectors[:600], "IVF8,Flat", shards=3)
    meta = {"dim": 16, "cache": {"fingerprint": "c"}, "heads": {"fingerprint": "h"}, "modalities": {"audio": {"count": 600, **built.describe()}}}
    write_index(tmp_path, meta, {"audio": built.shards}, {"audio": rows(0, 600)})
    before = IndexFolder(tmp_path).shards("audio")
    opened = IndexFolder(tmp_path)
    append_to_index(opened, {"audio": vectors[600:]}, rows(0, 30), opened.meta)
    folder = IndexFolder(tmp_path)
    after = folder.shards("audio")
    assert after[:3] == before[:3] and after[3]["file"] not in {entry["file"] for entry in before}  # shards kept as they were
    assert (after[3]["begin"], after[3]["end"]) == (600, 630) and folder.count("audio") == 630
    assert all((tmp_path / entry["file"]).exists() for entry in before)
    assert folder.table("audio").column("id").to_pylist() == list(range(630))
    assert folder.table("audio").column("video_id").to_pylist()[600:] == [f"v{i}" for i in range(30)]
    # A vector's nearest IVF list is the one it was added to, so it finds itself under its row id.
    _, ids = folder.faiss_index("audio").search(vectors[[0, 300, 600, 629]], 1)
    assert ids[:, 0].tolist() == [0, 300, 600, 629]


# ---- metadata columns and --where --------------------------------------------------------------


@pytest.fixture(scope="module")
def labelled(cache, heads, tmp_path_factory):
    """An index of a copy of the cache whose manifest carries metadata columns: ``label`` (text,
    every video) and ``take`` (int, the first 3 videos only): (index, labels, takes)."""
    if not VideoRecord.from_row({"video_id": "x", "path": "p", "label": "dog"}).metadata:
        pytest.skip("VideoRecord.from_row keeps no metadata columns yet (data/records.py is being changed to)")
    root = tmp_path_factory.mktemp("labelled")
    copy = root / "cache"
    shutil.copytree(cache, copy)
    ids = sorted(ok_ids(cache))
    labels = {video_id: "dog" if i % 2 else "cat" for i, video_id in enumerate(ids)}
    takes = {video_id: i + 1 for i, video_id in enumerate(ids[:3])}
    for part in (copy / "manifest").glob("part-*.parquet"):
        table = pq.read_table(part)
        videos = table.column("video_id").to_pylist()
        table = table.append_column("label", pa.array([labels.get(v) for v in videos], pa.string()))
        table = table.append_column("take", pa.array([takes.get(v) for v in videos], pa.int64()))
        pq.write_table(table, part, write_page_checksum=True)
    assert Cache(copy).record(ids[0]).metadata == {"label": "cat", "take": 1}
    out = root / "index"
    avfeat("index", copy, "--heads", heads, "--out", out, "--quiet", check=0)
    return out, labels, takes


def test_tables_carry_typed_metadata_columns(labelled):
    out, labels, takes = labelled
    for modality in ("audio", "visual"):
        table = IndexFolder(out).table(modality)
        assert table.column_names == ["id", "video_id", "path", "start", "end", "label", "take"]
        assert table.schema.field("label").type == pa.string() and table.schema.field("take").type == pa.int64()
        videos = table.column("video_id").to_pylist()
        assert table.column("label").to_pylist() == [labels[v] for v in videos]
        assert table.column("take").to_pylist() == [takes.get(v) for v in videos]  # null where a video has none


def test_json_hits_carry_metadata_and_where_filters_before_top_k(labelled):
    out, labels, takes = labelled
    query = f"{sorted(labels)[0]}@0.0-2.0"
    # --rerank 0: the plain ranking, as Searcher.search gives it below (the CLI reranks by default)
    hits = json.loads(avfeat("search", out, query, "--json", "-k", 4, "--where", "label=dog", "--rerank", 0, check=0).stdout)
    assert len(hits) == 4 and [h["rank"] for h in hits] == [1, 2, 3, 4]
    for hit in hits:
        assert hit["metadata"] == {"label": "dog", "take": takes.get(hit["video_id"])} and labels[hit["video_id"]] == "dog"
    # The filtered top 4 are the first 4 matches of the whole ranking (filtered, then cut).
    searcher = Searcher(out)
    ranking = searcher.search(query, k=searcher.folder.count("visual"))
    matches = [h for h in ranking if h.metadata["label"] == "dog"][:4]
    assert [(h["video_id"], h["start"]) for h in hits] == [(h.video_id, h.start) for h in matches]
    assert [h["score"] for h in hits] == pytest.approx([h.score for h in matches], abs=1e-5)
    # Several conditions all hold; numbers are compared by value; null matches nothing.
    both = searcher.search(query, k=50, where=["label=cat", "take=1.0"])
    assert both and {(h.metadata["label"], h.metadata["take"]) for h in both} == {("cat", 1)}
    assert searcher.search(query, k=5, where={"label": "bird"}) == []


def test_text_table_shows_video_id_and_metadata(labelled):
    out, labels, _ = labelled
    lines = avfeat("search", out, f"{sorted(labels)[1]}@0.0-2.0", "-k", 3, "--where", "take=2", check=0).stdout.splitlines()
    assert lines[0].split() == ["rank", "score", "video_id", "start", "end", "path", "metadata"] and len(lines) == 4
    video = sorted(labels)[1]
    assert all(line.split()[2] == video and line.endswith(f"label={labels[video]} take=2") for line in lines[1:])


def test_where_with_an_unknown_column_is_one_line(labelled):
    out, labels, _ = labelled
    result = avfeat("search", out, f"{sorted(labels)[0]}@0.0-2.0", "--where", "colour=red")
    one_line_error(result, "colour", "label", "take", "video_id")
    with pytest.raises(InputError, match="COLUMN=VALUE"):
        parse_where(["label"])
    assert parse_where(["label=a=b", ("take", 2)]) == [("label", "a=b"), ("take", "2")]


def test_index_without_metadata_has_empty_hit_metadata(index, cache):
    video = sorted(ok_ids(cache))[0]
    hits = Searcher(index).search(f"{video}@0.0-2.0", k=3, where={"video_id": video})
    assert len(hits) == 3 and all(h.video_id == video and h.metadata == {} for h in hits)


# ---- Searcher.embed ----------------------------------------------------------------------------


def test_embed_returns_the_unit_vectors_search_uses(index, cache):
    searcher = Searcher(index)
    query = f"{sorted(ok_ids(cache))[2]}@0.0-2.0"
    dim = searcher.meta["dim"]
    for side, searched in (("audio", "visual"), ("visual", "audio")):
        vector = searcher.embed(query, side=side)
        assert vector.shape == (1, dim) and vector.dtype == np.float32
        assert np.linalg.norm(vector, axis=1) == pytest.approx([1.0], abs=1e-5)
        by_vector = searcher.search_vectors(vector, searched, k=5)[0]
        assert [(h.video_id, h.start) for h in by_vector] == [(h.video_id, h.start) for h in searcher.search(query, side=side, k=5)]
    windows = searcher.embed(query, windows=True)  # default side: audio; 2 s at 5 fps, 1 s windows
    assert windows.shape[1] == dim and windows.shape[0] > 1
    assert np.allclose(np.linalg.norm(windows, axis=1), 1.0, atol=1e-5)
