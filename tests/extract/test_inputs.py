import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from avfeat.core.errors import InputError
from avfeat.data.records import VideoRecord
from avfeat.extract.inputs import ids as input_ids
from avfeat.extract.inputs import MediaInput, assign_ids, list_inputs, video_id


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ["a/one.mp4", "a/b/two.MKV", "a/b/three.webm", "a/notes.txt", "a/b/skip.jpg"]:
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


def test_folder_is_searched_recursively_by_extension(tree):
    names = [i.path.name for i in list_inputs(str(tree / "a"))]
    assert names == ["three.webm", "two.MKV", "one.mp4"]


def test_glob(tree):
    assert [i.path.name for i in list_inputs(str(tree / "a" / "**" / "*.webm"))] == ["three.webm"]


def test_list_file_relative_to_itself(tree):
    listing = tree / "list.txt"
    listing.write_text("# a comment\na/one.mp4\n\na/b/three.webm\na/one.mp4\n")
    assert [i.path.name for i in list_inputs(str(listing))] == ["one.mp4", "three.webm"]


def test_csv_and_parquet_path_column(tree):
    (tree / "l.csv").write_text("path,label\na/one.mp4,1\na/b/two.MKV,2\n")
    assert [i.path.name for i in list_inputs(str(tree / "l.csv"))] == ["one.mp4", "two.MKV"]
    pq.write_table(pa.table({"path": [str(tree / "a/b/three.webm")]}), tree / "l.parquet")
    assert [i.path.name for i in list_inputs(str(tree / "l.parquet"))] == ["three.webm"]
    (tree / "bad.csv").write_text("file\nx.mp4\n")
    with pytest.raises(InputError, match="no 'path' column"):
        list_inputs(str(tree / "bad.csv"))


def test_missing_and_empty_inputs(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        list_inputs(str(tmp_path / "nope"))
    with pytest.raises(InputError, match="no media files"):
        list_inputs(str(tmp_path))
    with pytest.raises(InputError, match="no media files"):
        list_inputs(str(tmp_path / "*.mp4"))


def test_video_ids_follow_the_bytes_not_the_mount(tree, tmp_path):
    one = video_id(tree / "a" / "one.mp4")
    assert one == video_id(str(tree / "a" / "b" / ".." / "one.mp4"))
    assert one.startswith("one-") and "@" not in video_id(tree / "we@ird name.mp4")
    moved = tmp_path / "elsewhere" / "one.mp4"
    moved.parent.mkdir()
    shutil.copy(tree / "a" / "one.mp4", moved)
    assert video_id(moved) == one  # moved, copied or remounted: the same id
    moved.write_bytes(b"y")
    assert video_id(moved) != one  # same name, other bytes: another id
    assert video_id(tree / "x" / "gone.mp4") != video_id(tree / "y" / "gone.mp4")  # unreadable: by path


def test_csv_with_byte_order_mark_and_id_column(tree):
    (tree / "bom.csv").write_text("\ufeffpath,id,label\na/one.mp4,clip-1,dog\na/b/two.MKV,,cat\n", encoding="utf-8")
    items = list_inputs(str(tree / "bom.csv"))
    assert [(i.path.name, i.user_id) for i in items] == [("one.mp4", "clip-1"), ("two.MKV", None)]


@pytest.mark.parametrize("rows, message", [
    ({"path": [1, 2]}, "'path' must be text"),
    ({"path": ["a/one.mp4", "a/b/two.MKV"], "id": ["same", "same"]}, "given to two rows"),
    ({"path": ["a/one.mp4"], "id": ["x@1"]}, "has a space, '@'"),
])
def test_bad_input_tables_are_one_line(tree, rows, message):
    pq.write_table(pa.table(rows), tree / "t.parquet")
    with pytest.raises(InputError, match=message):
        list_inputs(str(tree / "t.parquet"))


def test_globs_do_not_follow_folder_links_out_of_their_root(tree, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.mp4").write_bytes(b"x")
    (tree / "a" / "link").symlink_to(outside, target_is_directory=True)
    assert [i.path.name for i in list_inputs(str(tree / "a" / "**" / "*.mp4"))] == ["one.mp4"]
    assert "secret.mp4" not in [i.path.name for i in list_inputs(str(tree / "a"))]


def _record(vid, path, status="ok"):
    stat = os.stat(path) if os.path.exists(path) else None
    return VideoRecord(video_id=vid, path=str(Path(path).resolve()), size=stat.st_size if stat else 0,
                       mtime=stat.st_mtime if stat else 0.0, status=status)


def test_same_bytes_are_duplicates_and_an_id_collision_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(input_ids, "_SAMPLE_BYTES", 4)  # the ends hashed: 4 bytes, so a collision is easy to make
    monkeypatch.setattr(input_ids, "_WHOLE_BYTES", 0)  # no file hashed whole,
    monkeypatch.setattr(input_ids, "_MIDDLE_BLOCKS", 0)  # nor its middle sampled
    for folder, middle in (("a", b"one"), ("b", b"two"), ("c", b"one")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "clip.mp4").write_bytes(b"HEAD" + middle + b"TAIL")
    items = [MediaInput(tmp_path / f / "clip.mp4") for f in "abc"]
    plan = assign_ids(items, {})
    assert [i.path.parent.name for i, _ in plan.ids] == ["a"]
    assert plan.collisions == [(items[1].path, items[0].path, plan.ids[0][1])]
    assert plan.duplicates == [(items[2].path, items[0].path)]
    # against the cache: a recorded file elsewhere with other bytes is a collision, not "done"
    plan = assign_ids(items[1:2], {plan.ids[0][1]: _record(plan.ids[0][1], items[0].path)})
    assert not plan.ids and len(plan.collisions) == 1


def test_a_moved_dataset_keeps_its_ids_and_a_changed_file_needs_refresh(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "clip.mp4").write_bytes(b"first")
    vid = video_id(tmp_path / "old" / "clip.mp4")
    recorded = {vid: _record(vid, tmp_path / "old" / "clip.mp4")}
    (tmp_path / "old").rename(tmp_path / "new")
    plan = assign_ids([MediaInput(tmp_path / "new" / "clip.mp4")], recorded)
    assert plan.ids[0][1] == vid and not plan.collisions  # moved: the same video
    recorded = {vid: _record(vid, tmp_path / "new" / "clip.mp4")}
    (tmp_path / "new" / "clip.mp4").write_bytes(b"second, longer")
    item = MediaInput(tmp_path / "new" / "clip.mp4")
    plan = assign_ids([item], recorded)
    assert plan.changed == [(item.path, vid)] and not plan.ids
    plan = assign_ids([item], recorded, refresh=True)
    new = plan.ids[0][1]
    assert new != vid and plan.superseded == {new: vid} and new in plan.again


def test_same_size_and_ends_but_another_middle_is_another_video(tmp_path):
    """The key hashed only the size and the first and last 256 KiB: another file with those,
    after the recorded one was gone, was taken as already extracted."""
    rng = np.random.default_rng(0)
    ends = 256 * 1024
    for size in (3 * 2**20, 9 * 2**20):  # hashed whole; sampled (ends and middle blocks)
        head, tail = rng.bytes(ends), rng.bytes(ends)
        (tmp_path / "old").mkdir(exist_ok=True)
        (tmp_path / "new").mkdir(exist_ok=True)
        first, second = tmp_path / "old" / f"clip{size}.mp4", tmp_path / "new" / f"clip{size}.mp4"
        first.write_bytes(head + rng.bytes(size - 2 * ends) + tail)
        second.write_bytes(head + rng.bytes(size - 2 * ends) + tail)
        vid = video_id(first)
        assert video_id(second) != vid
        recorded = {vid: _record(vid, first)}
        first.unlink()  # the recorded file is gone: nothing to compare the bytes with
        plan = assign_ids([MediaInput(second)], recorded)
        assert [v for _, v in plan.ids] == [video_id(second)] and video_id(second) not in recorded  # extracted
        if size <= input_ids._WHOLE_BYTES:  # a file hashed whole: one byte in the middle is another key
            changed = bytearray(second.read_bytes())
            changed[size // 2] ^= 1
            (tmp_path / "one.mp4").write_bytes(bytes(changed))
            assert input_ids.content_key(tmp_path / "one.mp4") != input_ids.content_key(second)


def test_a_fifo_in_a_list_is_a_failed_video_not_a_hang(tmp_path):
    """Opening a FIFO waits for a writer forever; its id and its decode refuse it instead."""
    from avfeat.data.synth import make_corpus
    from avfeat.testing.runner import TINY_MODELS, run_avfeat_process

    make_corpus(tmp_path / "v", videos=2, seconds=2.0, classes=2, seed=0, size=64)
    os.mkfifo(tmp_path / "pipe.mp4")
    listing = tmp_path / "list.txt"
    listing.write_text("v/video_00000.mp4\nv/video_00001.mp4\npipe.mp4\n")
    result = run_avfeat_process("extract", listing, "--out", tmp_path / "cache", *TINY_MODELS, "--fps", 2, "--quiet", "--workers", 1, timeout=180)
    assert result.returncode == 3, result.stderr  # some videos failed
    assert "2 ok, failed: unreadable 1" in result.stdout


@pytest.mark.parametrize("rows, message", [
    ({"path": ["a/one.mp4"], "start": [1e300]}, r"row 1: start 1e\+300 must be a finite number of seconds >= 0 and at most"),
    ({"path": ["a/one.mp4"], "start": [True]}, "row 1: start True is not a number"),
    ({"path": ["a/one.mp4"], "end": [0.0]}, "row 1: end 0 is not after start 0"),
    ({"path": ["a/one.mp4", "a/one.mp4"], "start": [1.0, 1.0], "end": [2.0, 2.0]}, "rows 1 and 2 both name the segment 1-2 of"),
    ({"path": ["a/one.mp4", "a/one.mp4"], "id": ["x", "y"]}, "rows 1 and 2 both name the whole file"),
    ({"path": ["a/one.mp4"], "id": ["ab\u202ecd"]}, r"id 'ab\\u202ecd' .* control or bidi"),
    ({"path": ["a/one.mp4"], "id": ["a\u2066b"]}, "control or bidi"),
    ({"path": ["a/one.mp4"], "id": ["x" * 300]}, "has 300 characters, more than 256"),
])
def test_times_repeats_and_ids_a_table_may_not_hold(tree, rows, message):
    """start 1e300 was a decode_error with an OverflowError, a repeated row was merged silently,
    an id with a bidi override or of any length was taken."""
    pq.write_table(pa.table(rows), tree / "t.parquet")
    with pytest.raises(InputError, match=message):
        list_inputs(str(tree / "t.parquet"))


@pytest.mark.parametrize("cell", ["nan", "NaN", "inf", "-inf", "1e300"])
def test_csv_times_meet_the_rule_parquet_and_jsonl_do(tree, cell):
    """A CSV 'nan' was read as an empty cell (the whole file) where Parquet and JSONL refuse NaN."""
    (tree / "t.csv").write_text(f"path,start,end\na/one.mp4,1,{cell}\n")
    with pytest.raises(InputError, match="t.csv row 1: end .* must be a finite number of seconds"):
        list_inputs(str(tree / "t.csv"))
    (tree / "t.jsonl").write_text('{"path": "a/one.mp4", "start": 1, "end": NaN}\n')
    with pytest.raises(InputError, match="t.jsonl row 1: end nan must be a finite number"):
        list_inputs(str(tree / "t.jsonl"))


def test_a_file_name_with_a_bidi_override_is_refused(tree):
    (tree / "a" / "x\u202e4pm.mp4").write_bytes(b"x")
    with pytest.raises(InputError, match=r"file name '.*x\\u202e4pm.mp4' has control or bidi characters"):
        list_inputs(str(tree / "a"))


def test_a_folder_listing_says_which_files_are_no_links(tree, tmp_path):
    """A folder's files are listed with ``link=False`` (their resolve on resume needs no lstat);
    a link to a file is listed without it and still resolves to its target, a dangling one not at all."""
    from avfeat.extract import sources

    (tmp_path / "elsewhere.mp4").write_bytes(b"y")
    (tree / "a" / "alias.mp4").symlink_to(tmp_path / "elsewhere.mp4")
    (tree / "a" / "gone.mp4").symlink_to(tmp_path / "nothing.mp4")
    found = {item.path.name: item for item in list_inputs(str(tree / "a"))}
    assert sorted(found) == ["alias.mp4", "one.mp4", "three.webm", "two.MKV"]
    assert found["one.mp4"].link is False and found["alias.mp4"].link is None
    resolve = sources.resolver()
    assert [resolve(item.path, item.link) for item in found.values()] == [sources.resolve(item.path) for item in found.values()]
    assert resolve(found["alias.mp4"].path, found["alias.mp4"].link) == str(tmp_path / "elsewhere.mp4")


def test_records_by_path_the_same_with_or_without_segments():
    """A cache without segments is indexed by path in one call; one segment (starting at 0.0,
    which is falsy) sends it through the record-by-record split, with the same answers."""
    from avfeat.data.manifest import Recorded
    from avfeat.extract.inputs.ids import _by_path

    whole = {f"v{n}": Recorded(f"v{n}", f"/d/{n % 3}.mp4", 1, 1.0, "ok", 1.0, None, None) for n in range(5)}
    expected = {"/d/0.mp4": whole["v3"], "/d/1.mp4": whole["v4"], "/d/2.mp4": whole["v2"]}  # the later record wins
    assert _by_path(whole) == (expected, {})
    segment = Recorded("s", "/d/0.mp4", 1, 1.0, "ok", 1.0, 0.0, None)
    assert _by_path({**whole, "s": segment}) == (expected, {("/d/0.mp4", 0.0, None): segment})


def test_listing_a_folder_resolves_each_folder_once(tmp_path, monkeypatch):
    """Telling a folder's files apart by their real paths resolves each folder once, not each
    file (a million files, a million resolves); the listing is the same."""
    for folder in ("a", "b"):
        (tmp_path / "in" / folder).mkdir(parents=True)
        for n in range(3):
            (tmp_path / "in" / folder / f"{n}.mp4").write_bytes(b"x")
    (tmp_path / "in" / "b" / "link.mp4").symlink_to(tmp_path / "in" / "a" / "0.mp4")  # the same file twice
    resolved = []
    resolve = Path.resolve
    monkeypatch.setattr(Path, "resolve", lambda self, *args, **kwargs: resolved.append(self) or resolve(self, *args, **kwargs))
    found = list_inputs(str(tmp_path / "in"))
    assert [item.path.relative_to(tmp_path / "in").as_posix() for item in found] == ["a/0.mp4", "a/1.mp4", "a/2.mp4", "b/0.mp4", "b/1.mp4", "b/2.mp4"]
    assert len(resolved) <= 3, resolved  # the two folders (and the link's target)
