"""Unusable output paths (`search --thumbs`, `attention-map --out`, `sync --plot`) and damaged
index folders are one line and exit 1, never a traceback; missing output folders are created."""

import json
import shutil

import faiss
import numpy as np
import pytest

from avfeat.core.io import prepare_output_file
from avfeat.data.cache import Cache
from avfeat.core.errors import InputError, SearchIndexError
from avfeat.index import Searcher
from avfeat.testing.runner import run_avfeat as avfeat


def _one_line_error(result, *parts):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1 and lines[0].startswith("avfeat: error:"), result.stderr
    assert all(part in lines[0] for part in parts), result.stderr
    return lines[0]


def _is_png(path):
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- output files --------------------------------------------------------------------------


def test_thumbs_creates_missing_folders(index, corpus, tmp_path):
    out = tmp_path / "a" / "b" / "hits.png"
    avfeat("search", index, corpus / "video_00000.mp4", "-k", 2, "--thumbs", out, check=0)
    assert _is_png(out)


@pytest.mark.parametrize("make", ["under_a_file", "a_folder"])
def test_unusable_thumbs_path_is_one_line(index, corpus, tmp_path, make):
    (tmp_path / "notes.txt").write_text("mine\n")
    (tmp_path / "sheets").mkdir()
    out = {"under_a_file": tmp_path / "notes.txt" / "hits.png", "a_folder": tmp_path / "sheets"}[make]
    result = avfeat("search", index, corpus / "video_00000.mp4", "-k", 2, "--thumbs", out)
    _one_line_error(result, "--thumbs", str(out))
    assert (tmp_path / "notes.txt").read_text() == "mine\n" and not any((tmp_path / "sheets").iterdir())


def test_attention_map_creates_missing_folders(cache, heads, tmp_path):
    video = Cache(cache).records(status="ok")[0].video_id
    out = tmp_path / "some" / "missing" / "dir" / "map.png"
    avfeat("attention-map", cache, video, "--heads", heads, "--time", 0.5, "--out", out, check=0)
    assert _is_png(out)


@pytest.mark.parametrize("make", ["under_a_file", "a_folder"])
def test_unusable_attention_map_out_is_refused_first(cache, tmp_path, make):
    # --heads names nothing: the --out path is checked before any checkpoint or cache is read.
    (tmp_path / "notes.txt").write_text("mine\n")
    (tmp_path / "maps").mkdir()
    out = {"under_a_file": tmp_path / "notes.txt" / "map.png", "a_folder": tmp_path / "maps"}[make]
    result = avfeat("attention-map", cache, "any_video", "--heads", tmp_path / "no_heads", "--time", 0.5, "--out", out)
    _one_line_error(result, "--out", str(out))


def test_sync_plot_creates_missing_folders(heads, corpus, tmp_path):
    out = tmp_path / "x" / "y" / "curve"  # no suffix: written as a PNG under exactly this name
    avfeat("sync", corpus / "video_00001.mp4", "--heads", heads, "--max-offset", 1.0, "--plot", out, check=0)
    assert _is_png(out)


def test_an_unwritable_output_folder_is_one_line(tmp_path, monkeypatch):
    # As root every folder is writable, so the permission test asks os.access.
    monkeypatch.setattr("avfeat.core.io.os.access", lambda path, mode: False)
    with pytest.raises(InputError, match="permission denied"):
        prepare_output_file(tmp_path / "hits.png", "--thumbs")


# ---- damaged index folders -----------------------------------------------------------------


def _damaged_copy(index, tmp_path):
    copy = tmp_path / "index"
    shutil.copytree(index, copy)
    return copy


def _only(folder, pattern):
    found = sorted(folder.glob(pattern))
    assert len(found) == 1, found
    return found[0]


def test_ids_outside_the_table_are_a_damaged_index(index, corpus, tmp_path):
    copy = _damaged_copy(index, tmp_path)
    path = _only(copy, "visual*.faiss")
    old = faiss.read_index(str(path))
    vectors = np.stack([old.reconstruct(i) for i in range(old.ntotal)])
    # Same vectors and count, but ids past the table's rows (as a hand-made IndexIDMap might have).
    replaced = faiss.IndexIDMap2(faiss.IndexFlatIP(old.d))
    replaced.add_with_ids(vectors, np.arange(old.ntotal, dtype=np.int64) + 1000)
    faiss.write_index(replaced, str(path))
    meta = json.loads((copy / "meta.json").read_text())
    for entry in meta["modalities"]["visual"].get("shards") or []:  # sizes are recorded: match them
        if entry["file"] == path.name and "bytes" in entry:
            entry["bytes"] = path.stat().st_size
    (copy / "meta.json").write_text(json.dumps(meta))
    for extra in ([], ["--locate"]):
        result = avfeat("search", copy, corpus / "video_00000.mp4", "-k", 3, *extra)
        _one_line_error(result, "is damaged", "avfeat index --overwrite")


class _Labels:
    """A FAISS index stand-in that returns fixed labels."""

    def __init__(self, ids):
        self.ids = np.array([ids], dtype=np.int64)

    def search(self, vectors, k):
        return np.linspace(1, 0, self.ids.shape[1], dtype=np.float32)[None], self.ids


def test_no_result_labels_are_dropped_and_negative_ids_refused(index, monkeypatch):
    searcher = Searcher(index)
    table = searcher.folder.table("visual")
    query = np.ones((1, searcher.meta["dim"]), dtype=np.float32)
    monkeypatch.setattr(searcher.folder, "faiss_index", lambda modality: _Labels([2, 0, -1, -1]))
    hits = searcher.search_vectors(query, "visual", k=4)[0]
    assert [h.video_id for h in hits] == [table.column("video_id")[i].as_py() for i in (2, 0)]
    monkeypatch.setattr(searcher.folder, "faiss_index", lambda modality: _Labels([2, -5]))
    with pytest.raises(SearchIndexError, match="is damaged"):  # -5 would silently pick a row from the end
        searcher.search_vectors(query, "visual", k=2)


@pytest.mark.parametrize("damage", ["truncated_faiss", "deleted_table"])
def test_a_broken_index_file_is_one_line(index, corpus, tmp_path, damage):
    copy = _damaged_copy(index, tmp_path)
    if damage == "truncated_faiss":
        path = _only(copy, "visual*.faiss")
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path = _only(copy, "visual*.parquet")
        path.unlink()
    result = avfeat("search", copy, corpus / "video_00000.mp4", "-k", 3)
    _one_line_error(result, path.name)


def test_an_output_file_named_for_another_format_is_refused_before_any_work(index, cache, heads, corpus, tmp_path):
    # Bytes of one format under another's name mislead every reader: a PNG named .csv, a Parquet
    # table named .csv, an HTML page named .json. Refused before a model or the cache is read.
    video = Cache(cache).records(status="ok")[0].video_id
    for args, option in (
        (("search", index, corpus / "video_00000.mp4", "-k", 2, "--thumbs", tmp_path / "hits.csv"), "--thumbs"),
        (("attention-map", cache, video, "--heads", heads, "--time", 0.5, "--out", tmp_path / "map.parquet"), "--out"),
        (("sync", corpus / "video_00001.mp4", "--heads", heads, "--plot", tmp_path / "curve.txt"), "--plot"),
        (("audit", cache, "--heads", heads, "--out", tmp_path / "audit.csv"), "--out"),
        (("audit", cache, "--heads", heads, "--out", tmp_path / "a.parquet", "--report", tmp_path / "r.json"), "--report"),
    ):
        _one_line_error(avfeat(*args), option, "must name a")
    assert not list(tmp_path.iterdir())


def test_pictures_keep_the_formats_they_had(cache, heads, tmp_path):
    video = Cache(cache).records(status="ok")[0].video_id
    for name in ("map.svg", "map.jpg", "MAP.PNG"):
        avfeat("attention-map", cache, video, "--heads", heads, "--time", 0.5, "--out", tmp_path / name, check=0)
        assert (tmp_path / name).stat().st_size > 0
