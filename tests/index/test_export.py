"""`avfeat export`: unit-norm vectors with ids, times and the manifest's metadata, as Parquet or
npy, read back by pyarrow and duckdb; existing files refused unless --overwrite."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from avfeat.core.errors import InputError
from avfeat.index.export import export, video_vectors
from avfeat.testing.runner import run_avfeat as avfeat
from tests.labelled_cache import labelled_setup


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return labelled_setup(tmp_path_factory)


def manifest_metadata() -> bool:
    from avfeat.data.records import VideoRecord

    return bool(VideoRecord.from_row({"video_id": "x", "path": "p", "label": "dog"}).metadata)


def window_count(setup) -> int:
    from avfeat.align.checkpoint import load_checkpoint
    from avfeat.align.windows import WindowGeometry, cache_windows
    from avfeat.data.cache import Cache

    checkpoint, cache = load_checkpoint(setup.heads), Cache(setup.cache)
    return len(cache_windows(cache, WindowGeometry.for_cache(cache, checkpoint.window), checkpoint.hop))


def test_video_level_parquet_loads_in_pyarrow_and_duckdb(setup, tmp_path):
    import duckdb

    out = tmp_path / "sub" / "vectors.parquet"  # a missing folder is created
    result = avfeat("export", setup.labelled, "--heads", setup.heads, "--out", out, "--json", "--quiet", check=0)
    summary = json.loads(result.stdout)
    assert summary["rows"] == 8 and summary["dim"] == 32 and summary["files"] == [str(out)]
    table = pq.read_table(out)
    assert table.num_rows == 8
    assert set(table.column("video_id").to_pylist()) == {r.video_id for r in setup.records}
    assert table.column("path").to_pylist() == [{r.video_id: r.path for r in setup.records}[v] for v in table.column("video_id").to_pylist()]
    for modality in ("audio", "visual"):
        column = table.schema.field(f"{modality}_embedding").type
        assert column.list_size == 32 and str(column.value_type) == "float"  # fixed-size list<float32>
        vectors = np.stack(table.column(f"{modality}_embedding").to_numpy(zero_copy_only=False))
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert not any(name.endswith(".tmp") for name in (p.name for p in out.parent.iterdir()))
    # duckdb reads it with plain SQL: counts, norms, metadata
    db = duckdb.connect()
    count, norm_min, norm_max = db.execute(
        f"select count(*), min(sqrt(list_dot_product(audio_embedding::float[], audio_embedding::float[]))), "
        f"max(sqrt(list_dot_product(visual_embedding::float[], visual_embedding::float[]))) from '{out}'"
    ).fetchone()
    assert count == 8 and abs(norm_min - 1) < 1e-4 and abs(norm_max - 1) < 1e-4
    if not manifest_metadata():
        pytest.skip("VideoRecord.from_row does not yet keep an input table's columns in .metadata")
    # every metadata column, typed as the manifest holds it
    assert {"label", "tags", "score"} <= set(table.column_names)
    tags, score = table.schema.field("tags").type, table.schema.field("score").type
    assert pa.types.is_list(tags) and pa.types.is_string(tags.value_type) and pa.types.is_float64(score)
    rows = db.execute(f"select video_id, label, tags from '{out}' order by video_id").fetchall()
    assert rows == sorted((vid, name, [name, "synthetic"]) for vid, name in setup.names.items())
    by_class = db.execute(f"select label, count(*) from '{out}' group by label").fetchall()
    assert sum(n for _, n in by_class) == 8 and len(by_class) == 4


def test_window_level_npy_rows_match_the_table(setup, tmp_path):
    out = tmp_path / "windows.parquet"
    avfeat("export", setup.labelled, "--heads", setup.heads, "--out", out, "--level", "window", "--format", "npy", "--quiet", check=0)
    table = pq.read_table(out)
    audio, visual = np.load(tmp_path / "windows.audio.npy"), np.load(tmp_path / "windows.visual.npy", mmap_mode="r")
    assert len(table) == len(audio) == len(visual) == window_count(setup)
    assert audio.dtype == np.float32 and audio.shape[1] == 32
    assert np.allclose(np.linalg.norm(audio, axis=1), 1, atol=1e-5) and np.allclose(np.linalg.norm(visual, axis=1), 1, atol=1e-5)
    assert {"video_id", "path", "start", "end"} <= set(table.column_names) and "audio_embedding" not in table.column_names
    start, end = table.column("start").to_numpy(), table.column("end").to_numpy()
    assert np.allclose(end - start, 1.0)  # the heads' 1 s windows
    # the video-level vector is the normalised mean of a video's window rows, in the same order
    ids = np.array(table.column("video_id").to_pylist(), dtype=object)
    order, means, counts = video_vectors(ids, audio)
    assert counts.sum() == len(table) and len(order) == 8
    first = ids == order[0]
    mean = audio[first].mean(0)
    assert np.allclose(means[0], mean / np.linalg.norm(mean), atol=1e-5)
    if manifest_metadata():
        labels = dict(zip(table.column("video_id").to_pylist(), table.column("label").to_pylist()))
        assert labels == setup.names


def test_existing_files_need_overwrite_and_are_replaced_whole(setup, tmp_path):
    out = tmp_path / "vectors.parquet"
    out.write_bytes(b"old")
    with pytest.raises(InputError, match="exists; pass --overwrite"):
        export(setup.cache, setup.heads, out)
    assert out.read_bytes() == b"old"
    # npy: a vector file in the way is refused too, before any work
    (tmp_path / "other.audio.npy").write_bytes(b"old")
    result = avfeat("export", setup.cache, "--heads", setup.heads, "--out", tmp_path / "other.parquet", "--format", "npy")
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1 and "other.audio.npy exists; pass --overwrite" in result.stderr
    assert not (tmp_path / "other.parquet").exists()
    summary = export(setup.cache, setup.heads, out, overwrite=True)
    assert summary["rows"] == 8 and pq.read_table(out).num_rows == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.audio.npy", "vectors.parquet"]  # no temp left


def test_bad_options_are_refused(setup, tmp_path):
    with pytest.raises(InputError, match="--level must be one of video, window"):
        export(setup.cache, setup.heads, tmp_path / "x.parquet", level="frame")
    with pytest.raises(InputError, match="--format must be one of parquet, npy"):
        export(setup.cache, setup.heads, tmp_path / "x.parquet", fmt="csv")
    (tmp_path / "folder.parquet").mkdir()
    with pytest.raises(InputError, match="is a folder"):
        export(setup.cache, setup.heads, tmp_path / "folder.parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.parquet"]


def test_an_export_never_writes_into_what_it_reads_nor_under_another_format(setup, tmp_path):
    """`--out cache/manifest/part-00000.parquet --overwrite` would replace a manifest part of the
    cache being read; `x.csv` or `video.mp4` would get Parquet bytes under a misleading name."""
    cache_files = {p: p.read_bytes() for p in sorted(setup.cache.rglob("*")) if p.is_file()}
    part = sorted((setup.cache / "manifest").iterdir())[0]
    for out in (part, setup.cache / "cache.json", setup.cache / "vectors.parquet", setup.heads / "v.parquet"):
        result = avfeat("export", setup.cache, "--heads", setup.heads, "--out", out, "--overwrite")
        assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr, result.stderr
    assert {p: p.read_bytes() for p in sorted(setup.cache.rglob("*")) if p.is_file()} == cache_files
    for name in ("x.csv", "video.mp4", "vectors"):
        result = avfeat("export", setup.cache, "--heads", setup.heads, "--out", tmp_path / name)
        assert result.returncode == 1 and "must name a .parquet file" in result.stderr
    assert not list(tmp_path.iterdir())


def test_progress_bar_says_export(setup, tmp_path):
    result = avfeat("export", setup.labelled, "--heads", setup.heads, "--out", tmp_path / "v.parquet", check=0)
    assert "export:" in result.stderr and "index:" not in result.stderr, result.stderr
