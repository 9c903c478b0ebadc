"""`avfeat audit` as a user meets it: the table, the report, repair, and bad input (one line each,
nothing overwritten)."""

from __future__ import annotations

import av
import pyarrow.parquet as pq
import pytest

from avfeat.data.cache import Cache
from avfeat.data.audit_table import AuditRow, read_audit, write_audit
from avfeat.index.audit.report import write_report
from avfeat.testing.runner import one_line_error
from avfeat.testing.runner import run_avfeat as avfeat


@pytest.fixture(scope="module")
def audited(cache, heads, tmp_path_factory):
    out = tmp_path_factory.mktemp("audit") / "audit.parquet"
    result = avfeat("audit", cache, "--heads", heads, "--out", out, "--quiet", check=0)
    assert "audited 8 videos" in result.stdout
    return out


def test_the_table_has_a_row_per_video_with_probabilities_and_the_report_is_written(audited, cache):
    with Cache(cache) as store:
        table = read_audit(audited, store)  # made from this cache: accepted
        assert sorted(table.by_video()) == sorted(r.video_id for r in store.records(status="ok"))
    for row in table.rows:
        assert 0.0 <= row.p_match <= 1.0 and 0.0 <= row.p_sync <= 1.0
        assert abs(row.offset) <= 2.0 and row.worst_windows
        assert all(w.end > w.start for w in row.worst_windows)
    assert table.meta["match_calibration"]["null_pairs"] > 0 and table.meta["sync_calibration"]["trials"] > 0
    page = audited.with_suffix(".html").read_text()
    assert "What each cut keeps" in page and "data:image/png;base64," in page


def test_an_existing_table_is_refused_and_kept(audited, cache, heads):
    before = audited.read_bytes()
    one_line_error(avfeat("audit", cache, "--heads", heads, "--out", audited, "--quiet"), "exists", "--overwrite")
    assert audited.read_bytes() == before


@pytest.mark.parametrize("option,value,words", [
    ("--max-offset", "nan", ["--max-offset"]),
    ("--max-offset", "-1", ["--max-offset"]),
    ("--min-confidence", "1.5", ["--min-confidence"]),
    ("--min-confidence", "inf", ["--min-confidence"]),
])
def test_bad_numbers_are_one_line(cache, heads, tmp_path, option, value, words):
    one_line_error(avfeat("audit", cache, "--heads", heads, "--out", tmp_path / "a.parquet", option, value, "--quiet"), *words)
    assert not (tmp_path / "a.parquet").exists()


def test_a_table_of_another_cache_or_of_part_of_it_is_refused(audited, cache, heads, tmp_path):
    import json

    fixed = tmp_path / "fixed"
    table = pq.read_table(audited)
    meta = json.loads(table.schema.metadata[b"avfeat.audit"])
    meta["cache"]["fingerprint"] = "0123456789abcdef"  # as another cache's table records it
    other = tmp_path / "other.parquet"
    pq.write_table(table.replace_schema_metadata({b"avfeat.audit": json.dumps(meta).encode()}), other)
    one_line_error(avfeat("audit", cache, "--heads", heads, "--out", other, "--fix-dir", fixed, "--quiet"), "another cache")
    short = tmp_path / "short.parquet"
    pq.write_table(table.slice(1), short)  # a video of the cache has no row
    one_line_error(avfeat("audit", cache, "--heads", heads, "--out", short, "--fix-dir", fixed, "--quiet"), "lacks 1 videos")
    plain = tmp_path / "plain.parquet"
    pq.write_table(table.replace_schema_metadata({}), plain)
    one_line_error(avfeat("audit", cache, "--heads", heads, "--out", plain, "--fix-dir", fixed, "--quiet"), "not an audit table")
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 not really")
    one_line_error(avfeat("audit", cache, "--heads", heads, "--out", tmp_path / "junk.parquet", "--fix-dir", fixed, "--quiet"), "cannot be read")
    assert not fixed.exists()


def test_fix_dir_remuxes_what_the_table_says_and_never_overwrites(cache, heads, tmp_path):
    with Cache(cache) as store:
        records = store.records(status="ok")
        rows = [{"video_id": r.video_id, "path": r.path, "duration": r.duration, "p_match": 0.9, "correspondence": 0.1,
                 "offset": 0.0, "p_sync": 0.95, "silent": False, "static": False, "worst_windows": []} for r in records]
        rows[0]["offset"] = 0.5  # audio late by half a second: fixed
        rows[1]["offset"], rows[1]["p_sync"] = 0.5, 0.5  # too doubtful for --min-confidence 0.9
        rows[2]["offset"] = 0.08  # within half a step: nothing to fix
        rows[3]["offset"], rows[3]["path"] = -0.5, str(tmp_path / "gone.mp4")  # the file is gone
        table = tmp_path / "audit.parquet"
        write_audit(table, [AuditRow.from_row(row) for row in rows], store, {"heads": {"path": str(heads), "fingerprint": _fingerprint(heads)}})
    fixed = tmp_path / "fixed"
    result = avfeat("audit", cache, "--heads", heads, "--out", table, "--fix-dir", fixed, "--min-confidence", 0.9, "--quiet", check=0)
    assert "fixed 1 videos" in result.stdout and "not a local file" in result.stderr
    made = sorted(p.name for p in fixed.iterdir())
    assert made == [f"{records[0].video_id}.mp4"]
    with av.open(str(fixed / made[0])) as container, av.open(records[0].path) as source:
        assert container.streams.video and container.streams.audio
        assert container.streams.video[0].frames == source.streams.video[0].frames  # pictures copied, not re-encoded away
    before = (fixed / made[0]).read_bytes()
    one_line_error(avfeat("audit", cache, "--heads", heads, "--out", table, "--fix-dir", fixed, "--quiet"), "already holds 1", "--overwrite")
    assert (fixed / made[0]).read_bytes() == before


def _fingerprint(heads) -> str:
    from avfeat.index.store import load_heads

    return load_heads(heads).fingerprint


def test_the_report_escapes_what_comes_from_the_cache(tmp_path):
    hostile = '<script>alert("x")</script>'
    rows = [{"video_id": hostile, "path": f"/nowhere/{hostile}.mp4", "duration": 3.0, "p_match": 0.1, "correspondence": -0.1,
             "offset": 0.0, "p_sync": 0.5, "silent": True, "static": False, "worst_windows": [{"start": 0.0, "end": 1.0, "score": -0.2}]}]
    meta = {"cache": {"path": hostile}, "heads": {"path": hostile}, "match_calibration": {}, "sync_calibration": {}}
    write_report(tmp_path / "r.html", [AuditRow.from_row(row) for row in rows], meta)
    page = (tmp_path / "r.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page and "no picture" in page


def test_the_report_template_ships_with_the_package_and_escapes_the_calibration_too(tmp_path):
    from importlib.resources import files

    assert files("avfeat.index.audit").joinpath("report.html.j2").is_file()
    hostile = "</small><script>alert(1)</script>"
    rows = [AuditRow(video_id="v", path="/nowhere/v.mp4", duration=3.0, p_match=0.9, correspondence=0.1, offset=0.0, p_sync=0.9)]
    meta = {"cache": {"path": "/c"}, "heads": {"path": "/h"}, "match_calibration": {"method": hostile}, "sync_calibration": {}}
    write_report(tmp_path / "r.html", rows, meta)
    page = (tmp_path / "r.html").read_text()
    assert "<script>" not in page and "&lt;/small&gt;&lt;script&gt;" in page
