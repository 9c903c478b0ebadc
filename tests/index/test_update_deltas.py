"""`avfeat index --update` appends delta files: the files already there are kept as they are, a
search over base + deltas answers as a rebuild would, and deltas are compacted as they pile up
(``append_to_index`` on small synthetic indexes)."""

import json

import faiss
import numpy as np
import pyarrow as pa
import pytest

from avfeat.core.errors import SearchIndexError
from avfeat.index import update
from avfeat.index.build import build_faiss, recall_at_k
from avfeat.index.faiss_gpu import set_search_params
from avfeat.index.store import IndexFolder, write_index
from avfeat.index.update import append_to_index

DIM = 16


def clustered(n, seed):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).standard_normal((40, DIM)).astype(np.float32)
    x = centres[rng.integers(40, size=n)] + 0.5 * rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def rows(first, n, label=None):
    ids = np.arange(first, first + n)
    columns = {"id": ids, "video_id": [f"v{i}" for i in ids], "path": ["p"] * n, "start": ids * 0.0, "end": ids * 0.0 + 1}
    return pa.table({**columns, **({"label": [label] * n} if label else {})})


def write(folder, vectors, factory, shards=1):
    built = build_faiss(vectors, factory, shards=shards)
    meta = {"dim": DIM, "cache": {"fingerprint": "c"}, "heads": {"fingerprint": "h"},
            "modalities": {"audio": {"count": len(vectors), **built.describe()}}}
    return write_index(folder, meta, {"audio": built.shards}, {"audio": rows(0, len(vectors))})


def append(folder, vectors, first, label=None):
    opened = IndexFolder(folder, mmap=False)
    return append_to_index(opened, {"audio": vectors}, rows(first, len(vectors), label), opened.meta)


def files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.suffix in (".faiss", ".parquet")}


def search(folder, queries, k=10, nprobe=None):
    index = IndexFolder(folder).faiss_index("audio")
    if nprobe:
        set_search_params(index, {"nprobe": nprobe})
    return index.search(queries, k)


def test_update_adds_a_delta_and_keeps_every_file_as_it_was(tmp_path):
    vectors = clustered(640, 0)
    write(tmp_path / "grown", vectors[:600], "Flat", shards=2)
    before = files(tmp_path / "grown")
    meta = append(tmp_path / "grown", vectors[600:620], 600, label="dog")
    meta = append(tmp_path / "grown", vectors[620:], 620)
    after = files(tmp_path / "grown")
    assert {name: after.get(name) for name in before} == before  # kept byte for byte
    info = meta["modalities"]["audio"]
    assert info["deltas"] == 2 and len(info["shards"]) == 4 and len(info["table_parts"]) == 2
    assert [(s["begin"], s["end"]) for s in info["shards"]] == [(0, 300), (300, 600), (600, 620), (620, 640)]
    assert set(after) == {info["table"], *info["table_parts"], *(s["file"] for s in info["shards"])}
    table = IndexFolder(tmp_path / "grown").table("audio")
    assert table.column("id").to_pylist() == list(range(640))
    assert table.column("label").to_pylist() == [None] * 600 + ["dog"] * 20 + [None] * 20
    # Exact search over base + deltas equals a rebuild's: same ids, same scores.
    write(tmp_path / "rebuilt", vectors, "Flat")
    queries = clustered(50, 1)
    (scores, ids), (scores_rebuilt, ids_rebuilt) = search(tmp_path / "grown", queries), search(tmp_path / "rebuilt", queries)
    assert (ids == ids_rebuilt).all()
    np.testing.assert_allclose(scores, scores_rebuilt, atol=1e-5)


def test_an_ivf_delta_shares_the_quantizer_and_recall_matches_a_rebuild(tmp_path):
    vectors, queries = clustered(4000, 0), clustered(200, 1)
    write(tmp_path / "grown", vectors[:3600], "IVF32,Flat")
    before = files(tmp_path / "grown")
    for first in range(3600, 4000, 40):  # +1% ten times (the last ones compacted)
        append(tmp_path / "grown", vectors[first : first + 40], first)
    after = files(tmp_path / "grown")
    assert [after.get(name) for name in before if name.endswith(".faiss")] == [v for n, v in before.items() if n.endswith(".faiss")]
    exact = faiss.IndexFlatIP(DIM)
    exact.add(vectors)
    _, truth = exact.search(queries, 10)
    write(tmp_path / "rebuilt", vectors, "IVF32,Flat")
    grown = recall_at_k(search(tmp_path / "grown", queries, nprobe=4)[1], truth)
    rebuilt = recall_at_k(search(tmp_path / "rebuilt", queries, nprobe=4)[1], truth)
    assert grown >= rebuilt - 0.01, (grown, rebuilt)
    # Every vector is in the list its quantizer assigns: it finds itself under its row id.
    _, ids = search(tmp_path / "grown", vectors[[0, 3600, 3999]], k=1)
    assert ids[:, 0].tolist() == [0, 3600, 3999]


def test_deltas_beyond_the_limit_are_merged_into_one(tmp_path, monkeypatch):
    monkeypatch.setattr(update, "MAX_DELTAS", 2)
    vectors = clustered(1030, 0)
    write(tmp_path, vectors[:1000], "IVF16,Flat")
    base = json.loads((tmp_path / "meta.json").read_text())["modalities"]["audio"]
    for first in range(1000, 1030, 10):
        meta = append(tmp_path, vectors[first : first + 10], first)
    info = meta["modalities"]["audio"]
    assert info["deltas"] == 1 and len(info["shards"]) == 2 and info["shards"][0] == base["shards"][0]
    assert info["shards"][1]["begin"] == 1000 and info["shards"][1]["end"] == 1030 and len(info["table_parts"]) == 1
    assert set(files(tmp_path)) == {info["table"], *info["table_parts"], *(s["file"] for s in info["shards"])}
    folder = IndexFolder(tmp_path)
    assert folder.table("audio").column("id").to_pylist() == list(range(1030))
    _, ids = folder.faiss_index("audio").search(vectors[[5, 1005, 1029]], 1)
    assert ids[:, 0].tolist() == [5, 1005, 1029]


def test_deltas_past_a_share_of_the_base_are_folded_into_it(tmp_path):
    vectors = clustered(1300, 0)
    write(tmp_path, vectors[:1000], "Flat")
    meta = append(tmp_path, vectors[1000:1100], 1000)  # 10%: a delta
    assert meta["modalities"]["audio"]["deltas"] == 1
    meta = append(tmp_path, vectors[1100:], 1100)  # 30% in all: folded
    info = meta["modalities"]["audio"]
    assert info["deltas"] == 0 and [(s["begin"], s["end"]) for s in info["shards"]] == [(0, 1300)] and "table_parts" not in info
    assert set(files(tmp_path)) == {info["table"], info["shards"][0]["file"]}
    folder = IndexFolder(tmp_path)
    assert folder.table("audio").column("id").to_pylist() == list(range(1300))
    _, ids = folder.faiss_index("audio").search(vectors[[0, 1050, 1299]], 1)
    assert ids[:, 0].tolist() == [0, 1050, 1299]


def test_a_crash_before_the_commit_leaves_the_old_index_and_the_next_update_cleans_up(tmp_path, monkeypatch):
    vectors = clustered(620, 0)
    write(tmp_path, vectors[:600], "Flat")
    meta_before = (tmp_path / "meta.json").read_bytes()

    class Crash(BaseException):
        pass

    def crash(*args, **kwargs):
        raise Crash()

    monkeypatch.setattr("avfeat.index.store.write_atomic", crash)
    with pytest.raises(Crash):
        append(tmp_path, vectors[600:], 600)
    monkeypatch.undo()
    assert (tmp_path / "meta.json").read_bytes() == meta_before
    assert IndexFolder(tmp_path).faiss_index("audio").ntotal == 600 and IndexFolder(tmp_path).table("audio").num_rows == 600
    info = append(tmp_path, vectors[600:], 600)["modalities"]["audio"]
    assert set(files(tmp_path)) == {info["table"], *info["table_parts"], *(s["file"] for s in info["shards"])}


def test_new_rows_that_do_not_fit_the_table_are_refused(tmp_path):
    vectors = clustered(620, 0)
    write(tmp_path, vectors[:600], "Flat")
    append(tmp_path, vectors[600:610], 600, label="dog")
    before = files(tmp_path)
    opened = IndexFolder(tmp_path)
    clash = rows(610, 10).append_column("label", pa.array([[1]] * 10))  # a list where the table has text
    with pytest.raises(SearchIndexError, match="does not fit"):
        append_to_index(opened, {"audio": vectors[610:]}, clash, opened.meta)
    assert files(tmp_path) == before
