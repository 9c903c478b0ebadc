"""Replacing an index folder is atomic: a crash at any step of `write_index` leaves the old index
or the new one whole, and nothing but avfeat's own index files is ever deleted."""

import json
import os

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from avfeat.core.errors import InputError, SearchIndexError
from avfeat.index.build import build_index
from avfeat.core.outputs import OWNER_FILE
from avfeat.index.store import MARKER_FILE, META_FILE, IndexFolder, is_unfinished, write_index

MODALITIES = ("audio", "visual")
DIM = 8


class Crash(BaseException):
    """A stand-in for the process dying: no ``except Exception`` (or OSError) may absorb it."""


class Version:
    """One index's content: per modality a table of ``rows`` windows and their vectors."""

    def __init__(self, tag: str, rows: int, shards: int = 1):
        rng = np.random.default_rng(len(tag) * 100 + rows)
        self.tag, self.rows, self.shards = tag, rows, shards
        self.vectors = {m: rng.standard_normal((rows, DIM)).astype(np.float32) for m in MODALITIES}
        self.table = pa.table({
            "id": pa.array(np.arange(rows, dtype=np.int64)),
            "video_id": pa.array([f"{tag}-{i // 3}" for i in range(rows)], pa.string()),
            "path": pa.array([f"/videos/{tag}-{i // 3}.mp4" for i in range(rows)], pa.string()),
            "start": pa.array(np.arange(rows) * 0.5, pa.float64()),
            "end": pa.array(np.arange(rows) * 0.5 + 1.0, pa.float64()),
        })

    def parts(self, modality: str) -> list:
        """The FAISS shards over contiguous rows, ids global (as `build_faiss` makes them)."""
        bounds = np.linspace(0, self.rows, self.shards + 1).astype(int)
        parts = []
        for begin, end in zip(bounds, bounds[1:]):
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
            index.add_with_ids(self.vectors[modality][begin:end], np.arange(begin, end, dtype=np.int64))
            parts.append(index)
        return parts

    def meta(self) -> dict:
        return {
            "cache": {"fingerprint": f"cache-{self.tag}"}, "heads": {"fingerprint": f"heads-{self.tag}"},
            "modalities": {m: {"count": self.rows, "factory": "Flat", "params": {}} for m in MODALITIES},
        }

    def write(self, out) -> dict:
        return write_index(out, self.meta(), {m: self.parts(m) for m in MODALITIES}, {m: self.table for m in MODALITIES})

    def held_by(self, folder: IndexFolder) -> bool:
        """Whether ``folder`` holds this version entirely: meta, tables and vectors."""
        if folder.meta["heads"]["fingerprint"] != f"heads-{self.tag}":
            return False
        for modality in MODALITIES:
            assert folder.table(modality).equals(self.table)
            assert folder.faiss_index(modality).ntotal == self.rows  # all shards load, as one
            stored = []
            for entry in folder.shards(modality):  # IndexIDMap2 keeps each vector by its id
                shard = faiss.read_index(str(folder.path / entry["file"]))
                stored += [shard.reconstruct(i) for i in range(entry["begin"], entry["end"])]
            np.testing.assert_array_equal(np.stack(stored), self.vectors[modality])
        return True


def write_legacy(out, version: Version, fmt: int) -> None:
    """A folder as avfeat wrote it before format 3: fixed names, format 1 or (sharded) 2."""
    out.mkdir(parents=True)
    meta = version.meta()
    meta["format"] = fmt
    for modality in MODALITIES:
        parts = version.parts(modality)
        if fmt == 1:
            faiss.write_index(parts[0], str(out / f"{modality}.faiss"))
        else:
            listed, begin = [], 0
            for number, part in enumerate(parts):
                name = f"{modality}-{number:05d}.faiss"
                faiss.write_index(part, str(out / name))
                listed.append({"file": name, "begin": begin, "end": begin + part.ntotal, "bytes": (out / name).stat().st_size})
                begin += part.ntotal
            meta["modalities"][modality]["shards"] = listed
        pq.write_table(version.table, out / f"{modality}.parquet")
    (out / META_FILE).write_text(json.dumps(meta))


def only_listed_files(out) -> bool:
    """The folder holds meta.json, the marker and the files meta.json lists, nothing else of avfeat's."""
    meta = json.loads((out / META_FILE).read_text())
    listed = {name for info in meta["modalities"].values() for name in (info["table"], *(s["file"] for s in info["shards"]))}
    return {p.name for p in out.iterdir()} == {META_FILE, MARKER_FILE, OWNER_FILE, *listed}


@pytest.fixture
def crash_at(monkeypatch):
    """``crash_at(k)`` arms the file operations of a write: the k-th call (from 0) raises Crash;
    ``crash_at(None)`` disarms them. Returns a dict whose "calls" counts the calls made."""
    state = {"at": None, "calls": 0}

    def armed(function):
        def wrapper(*args, **kwargs):
            if state["at"] is not None:
                if state["calls"] == state["at"]:
                    state["at"] = None  # the process is gone: what follows is no longer counted
                    raise Crash(f"crash at call {state['calls']} ({function.__name__})")
                state["calls"] += 1
            return function(*args, **kwargs)
        return wrapper

    for owner, name in ((faiss, "write_index"), (pq, "write_table"), (os, "fsync"), (os, "replace"), (os, "unlink"), (os, "rename")):
        monkeypatch.setattr(owner, name, armed(getattr(owner, name)))

    def arm(k):
        state["at"] = k
        if k is not None:
            state["calls"] = 0
        return state

    return arm


def replace_with_crashes(tmp_path, crash_at, make_old, new: Version) -> list[str]:
    """For k = 0, 1, ...: make the old folder, write ``new`` over it crashing at the k-th file
    operation, and check what is left; until a write completes. Returns which version each
    crash left ("old" or "new")."""
    left = []
    for k in range(1000):
        out = tmp_path / f"k{k}" / "index"
        old = make_old(out)
        state = crash_at(k)
        try:
            new.write(out)
        except Crash:
            crash_at(None)
            folder = IndexFolder(out)  # loads: the old index or the new one, whole
            held = [v.tag for v in (old, new) if v.held_by(folder)]
            assert len(held) == 1, f"crash at call {k}: the folder holds {held}"
            left.append(held[0])
            new.write(out)  # a rerun replaces whatever the crash left, and clears it away
            assert new.held_by(IndexFolder(out)) and only_listed_files(out)
            continue
        crash_at(None)
        assert state["calls"] == k and new.held_by(IndexFolder(out)) and only_listed_files(out)
        return left
    raise AssertionError("the write never completed")


@pytest.mark.parametrize("old_shards, new_shards", [(1, 1), (1, 2), (2, 1)])
def test_a_crash_at_any_step_leaves_the_old_or_the_new_index(tmp_path, crash_at, old_shards, new_shards):
    old, new = Version("old", 7, old_shards), Version("new", 10, new_shards)

    def make_old(out):
        old.write(out)
        return old

    left = replace_with_crashes(tmp_path, crash_at, make_old, new)
    assert "old" in left and "new" in left  # crashes before and after the commit were both tried
    assert left == sorted(left, key=["old", "new"].index)  # one commit point: old until it, new after


@pytest.mark.parametrize("fmt, shards", [(1, 1), (2, 3)])
def test_a_crash_replacing_an_older_format_leaves_it_readable(tmp_path, crash_at, fmt, shards):
    old, new = Version("legacy", 9, shards), Version("new", 5, 1)

    def make_old(out):
        write_legacy(out, old, fmt)
        assert old.held_by(IndexFolder(out))
        return old

    left = replace_with_crashes(tmp_path, crash_at, make_old, new)
    assert "legacy" in left and "new" in left


def test_a_crash_in_the_first_write_leaves_a_folder_a_rerun_takes(tmp_path, crash_at):
    new = Version("new", 6, 2)
    for k in range(1000):
        out = tmp_path / f"k{k}" / "index"
        crash_at(k)
        try:
            new.write(out)
        except Crash:
            crash_at(None)
            assert not out.exists() or not any(out.iterdir()) or (out / MARKER_FILE).is_file()
            new.write(out)
            assert new.held_by(IndexFolder(out)) and only_listed_files(out)
            continue
        crash_at(None)
        break
    assert k > 3


def test_user_files_beside_and_inside_survive_a_rewrite(tmp_path):
    out = tmp_path / "index"
    mine = {tmp_path / "index.tmp" / "draft.txt": "beside", tmp_path / "index.old" / "keep.txt": "beside too",
            tmp_path / "index.old.txt": "a file", out / "notes.txt": "inside"}
    Version("one", 5).write(out)
    for path, text in mine.items():
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    (out / "audio.backup.parquet").write_text("not avfeat's name")  # close to avfeat's names, but not one
    stale = out / "visual-00003.0badc0de.faiss"  # avfeat's own name, left by a crashed write
    stale.write_bytes(b"x")
    for version in (Version("two", 8, 2), Version("three", 4)):
        version.write(out)
        assert version.held_by(IndexFolder(out))
    assert all(path.read_text() == text for path, text in mine.items())
    assert (out / "audio.backup.parquet").is_file() and not stale.exists()


def test_only_an_index_or_an_empty_or_marked_folder_is_written(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(SearchIndexError, match="not an avfeat index"):
        Version("a", 4).write(foreign)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]

    crashed = tmp_path / "crashed"  # a first write that died before its meta.json
    crashed.mkdir()
    (crashed / MARKER_FILE).write_text("")
    (crashed / "audio.0123abcd.faiss").write_bytes(b"half")
    assert is_unfinished(crashed) and not is_unfinished(foreign)
    Version("a", 4).write(crashed)
    assert Version("a", 4).held_by(IndexFolder(crashed)) and only_listed_files(crashed) and not is_unfinished(crashed)


def test_build_index_takes_an_unfinished_folder_without_overwrite(tmp_path, monkeypatch):
    """`avfeat index` into a folder a crashed first write left goes on (there is no index to
    protect); into a finished index it still needs --overwrite."""
    calls = []

    class Stop(Exception):
        pass

    def check_count(count):
        calls.append(count)
        raise Stop  # past the output checks: enough for this test

    monkeypatch.setattr("avfeat.index.shards.check_count", check_count)
    from types import SimpleNamespace

    # Stand-ins past the checks that read them: a cache and heads elsewhere (not on disk).
    cache, heads = SimpleNamespace(layout=SimpleNamespace(root=tmp_path / "cache")), SimpleNamespace(path=tmp_path / "heads")
    out = tmp_path / "index"
    out.mkdir()
    (out / MARKER_FILE).write_text("")
    with pytest.raises(Stop):
        build_index(cache, heads, out)
    Version("a", 4).write(out)
    with pytest.raises(InputError, match="already holds an avfeat index"):
        build_index(cache, heads, out)
    with pytest.raises(Stop):
        build_index(cache, heads, out, overwrite=True)
    assert calls == [1, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]  # the lock beside is gone


@pytest.mark.parametrize("edit", [
    lambda info: info.update(table="../elsewhere.parquet"),
    lambda info: info.update(table="/etc/passwd"),
    lambda info: info["shards"][0].update(file="../x.faiss"),
])
def test_meta_json_names_no_file_outside_the_folder(tmp_path, edit):
    out = tmp_path / "index"
    Version("a", 4).write(out)
    meta = json.loads((out / META_FILE).read_text())
    edit(meta["modalities"]["visual"])
    (out / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(SearchIndexError, match="outside the index folder"):
        IndexFolder(out)


def test_format_3_without_its_file_lists_is_damaged(tmp_path):
    out = tmp_path / "index"
    Version("a", 4).write(out)
    meta = json.loads((out / META_FILE).read_text())
    del meta["modalities"]["audio"]["table"]
    (out / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(SearchIndexError, match="is damaged"):
        IndexFolder(out)
