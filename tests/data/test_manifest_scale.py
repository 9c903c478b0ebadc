"""A cache of a million videos opens, summarises and plans a resume in seconds: none of these
builds a VideoRecord per row (benchmarks/manifest.py times them at a million rows)."""

import pytest

from avfeat.data.cache import Cache
from avfeat.data.records import VideoRecord
from avfeat.data.summary import cache_summary
from avfeat.data.shards import ShardWriter, new_record, open_for_writing
from avfeat.extract.inputs.items import MediaInput
from avfeat.extract.job import RunOptions, plan_run
from avfeat.extract.sources.remote import Stat

CONFIG = {"audio_model": "random:hubert-tiny", "visual_model": "random:dinov2-tiny", "audio_layer": -1, "visual_layer": -1,
          "audio_dim": 4, "audio_token_rate": 50.0, "visual_dim": 2, "visual_tokens": 3, "fps": 2.0}


@pytest.fixture
def cache(tmp_path):
    layout = open_for_writing(tmp_path / "cache", CONFIG)
    for index in range(3):
        with ShardWriter(layout, index, audio_dim=4, visual_tokens_per_frame=3, visual_dim=2, attrs={}) as writer:
            for n in range(4):
                vid = f"v{index}{n}"
                writer.add_failure(new_record(vid, str(tmp_path / f"{vid}.mp4"), 10 + n, 1.0 + n), "decode_error", "broken")
    return layout


@pytest.fixture
def built(monkeypatch):
    calls = []
    original = VideoRecord.from_row.__func__
    monkeypatch.setattr(VideoRecord, "from_row", classmethod(lambda cls, row: calls.append(row) or original(cls, row)))
    return calls


def test_opening_and_summarising_build_no_record_per_row(cache, built):
    store = Cache(cache.root)
    assert len(store) == 12 and "v21" in store and store.status_counts() == {"decode_error": 12}
    assert not built
    report = cache_summary(cache.root, videos=False)
    assert report["videos"] == 12 and len(report["failures"]) == 12 and not built
    assert store.record("v21").size == 11 and len(built) == 1  # one asked for, one built


def test_planning_a_resume_builds_no_record_per_row(cache, built, tmp_path):
    inputs = [MediaInput(tmp_path / f"v{i}{n}.mp4", stat=Stat(10 + n, 1.0 + n)) for i in range(3) for n in range(4)]
    summary, todo = plan_run(cache, inputs, RunOptions())
    assert summary.skipped == 12 and summary.failed_before == 12 and todo == [] and not built


def test_a_part_in_the_current_schema_is_read_as_it_is(cache):
    """A part as this avfeat writes it needs no cast (a thousand of them cost a second); one of
    an older avfeat, lacking a column, is still conformed."""
    import pyarrow.parquet as pq

    from avfeat.data.manifest import _conform, manifest_schema

    part = pq.read_table(sorted(cache.parts().values())[0])
    assert _conform(part) is part
    older = _conform(part.drop_columns(["shard_bytes"]))
    assert older.schema.equals(manifest_schema()) and older.column("shard_bytes").null_count == part.num_rows


def test_planning_a_resume_holds_off_the_cycle_collector(cache, tmp_path, monkeypatch):
    """The collector would walk the million records and inputs again every few thousand new
    objects; it is paused for the plan and on again after it."""
    import gc

    from avfeat.extract import job

    seen = []
    assign = job.assign_ids
    monkeypatch.setattr(job, "assign_ids", lambda *args, **kwargs: seen.append(gc.isenabled()) or assign(*args, **kwargs))
    inputs = [MediaInput(tmp_path / "v00.mp4", stat=Stat(10, 1.0))]
    summary, _ = plan_run(cache, inputs, RunOptions())
    assert seen == [False] and gc.isenabled() and summary.skipped == 1


def test_reading_some_columns_reads_only_those_and_keeps_the_latest_records(cache, monkeypatch):
    """A resume plan reads a third of the manifest's bytes: the columns it decides with, from
    parts of an older avfeat too, with a retried video's latest record as a full read keeps it."""
    import pyarrow.parquet as pq

    from avfeat.data.manifest import read_manifest

    with ShardWriter(cache, 3, audio_dim=4, visual_tokens_per_frame=3, visual_dim=2, attrs={}) as writer:
        writer.add_failure(new_record("v01", "/elsewhere/v01.mp4", 99, 9.0), "missing", "gone")  # retried later
    first = sorted(cache.parts().values())[0]
    pq.write_table(pq.read_table(first).drop_columns(["segment_start"]), first)  # as an older avfeat wrote it
    full = read_manifest(cache.root)
    asked = []
    read = pq.ParquetFile.read
    monkeypatch.setattr(pq.ParquetFile, "read", lambda self, columns=None, **kw: asked.append(columns) or read(self, columns=columns, **kw))
    some = read_manifest(cache.root, ["path", "size", "segment_start"])
    assert some.column_names == ["video_id", "path", "size", "status", "segment_start"]  # the schema's order
    assert some.to_pylist() == full.select(some.column_names).to_pylist() and some.num_rows == 12
    assert dict(zip(some.column("video_id").to_pylist(), some.column("path").to_pylist()))["v01"] == "/elsewhere/v01.mp4"
    assert len(asked) == 4 and all(set(columns) <= set(some.column_names) for columns in asked)
    assert read_manifest(cache.root / "none", ["path"]).column_names == ["video_id", "path", "status"]


def test_a_changed_files_retired_record_is_written_whole(cache, tmp_path):
    """The plan reads only some columns, but the record it retires for a changed file (--refresh)
    is the whole recorded one: its shard, sizes and the input table's columns."""
    from avfeat.data.cache import Cache
    from avfeat.data.records import Status

    with ShardWriter(cache, 3, audio_dim=4, visual_tokens_per_frame=3, visual_dim=2, attrs={}) as writer:
        writer.add_failure(new_record("w", str(tmp_path / "w.mp4"), 5, 1.0).with_(metadata={"label": "cat"}), "decode_error", "broken")
    summary, todo = plan_run(cache, [MediaInput(tmp_path / "w.mp4", stat=Stat(6, 2.0))], RunOptions(refresh=True))
    recorded = Cache(cache.root).record("w")
    assert [record.status for record in todo] == [Status.SUPERSEDED, Status.OK] and todo[1].video_id != "w"
    assert todo[0] == recorded.with_(status=Status.SUPERSEDED, error=todo[0].error) and todo[0].shard == 3
    assert todo[0].metadata == {"label": "cat"} and recorded.shard_bytes


def test_planning_over_a_damaged_part_says_which_one(cache, tmp_path):
    """The plan reads the parts on another thread while it resolves the inputs' paths: a damaged
    part still stops it with its one-line error, and a plan after the part is back runs."""
    from avfeat.core.errors import CacheError

    part = sorted(cache.parts().values())[1]
    kept = part.read_bytes()
    part.write_bytes(b"not parquet")
    inputs = [MediaInput(tmp_path / "v00.mp4", stat=Stat(10, 1.0))]
    with pytest.raises(CacheError, match=r"part-00001\.parquet is damaged") as error:
        plan_run(cache, inputs, RunOptions())
    assert "\n" not in str(error.value)
    part.write_bytes(kept)
    assert plan_run(cache, inputs, RunOptions())[0].skipped == 1
