import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from avfeat.errors import InputError
from avfeat.extract.inputs import list_inputs, video_id


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ["a/one.mp4", "a/b/two.MKV", "a/b/three.webm", "a/notes.txt", "a/b/skip.jpg"]:
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


def test_folder_is_searched_recursively_by_extension(tree):
    names = [p.name for p in list_inputs(str(tree / "a"))]
    assert names == ["three.webm", "two.MKV", "one.mp4"]


def test_glob(tree):
    assert [p.name for p in list_inputs(str(tree / "a" / "**" / "*.webm"))] == ["three.webm"]


def test_list_file_relative_to_itself(tree):
    listing = tree / "list.txt"
    listing.write_text("# a comment\na/one.mp4\n\na/b/three.webm\na/one.mp4\n")
    assert [p.name for p in list_inputs(str(listing))] == ["one.mp4", "three.webm"]


def test_csv_and_parquet_path_column(tree):
    (tree / "l.csv").write_text("path,label\na/one.mp4,1\na/b/two.MKV,2\n")
    assert [p.name for p in list_inputs(str(tree / "l.csv"))] == ["one.mp4", "two.MKV"]
    pq.write_table(pa.table({"path": [str(tree / "a/b/three.webm")]}), tree / "l.parquet")
    assert [p.name for p in list_inputs(str(tree / "l.parquet"))] == ["three.webm"]
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


def test_video_ids_are_stable_unique_and_query_safe(tree):
    one = video_id(tree / "a" / "one.mp4")
    assert one == video_id(str(tree / "a" / "b" / ".." / "one.mp4"))
    assert one.startswith("one-") and "@" not in video_id(tree / "we@ird name.mp4")
    assert video_id(tree / "x" / "one.mp4") != one
