"""Remote inputs and WebDataset shards end to end: `avfeat extract` over a local HTTP server
with Range requests, a local S3 (moto) and tar shards as video2dataset writes them gives the
tensors and ids of the same files extracted from local disk; a 404, a 403, a stalled server
and a shard without media are recorded with named statuses and the job goes on."""

import os
import shutil

import pytest

from avfeat.core.errors import InputError
from avfeat.data.cache import Cache
from avfeat.extract import sources
from avfeat.extract.inputs import expand_braces, list_inputs
from avfeat.extract.sources.remote import stat_from_info
from avfeat.testing.media import make_clip
from avfeat.testing.runner import TINY_MODELS, assert_same_cache, run_avfeat
from avfeat.testing.servers import S3_TEST_ENV, make_shard, serve_http, serve_s3, upload_s3

CLIPS = {"a.mp4": 1.5, "b.mp4": 2.0, "c.mkv": 1.0}  # name: seconds (distinct bytes, two containers)
# The shards: KEY → (clip, its JSON as video2dataset writes it: fields named like manifest
# columns, a nested object, a caption).
SAMPLES = {
    "00000": {"00000000": ("a.mp4", {"caption": "a dog", "status": "success", "yt_meta_dict": {"channel": "x", "views": 3}}),
              "00000001": ("b.mp4", {"caption": "a cat", "status": "success", "yt_meta_dict": {"channel": "y", "views": 5}})},
    "00001": {"00010000": ("c.mkv", {"caption": "a bird", "status": "success", "yt_meta_dict": {"channel": "z", "views": 7}})},
}


@pytest.fixture
def http_ok():
    pytest.importorskip("aiohttp", reason="http:// inputs need avfeat[remote] (aiohttp)")


def extract(src, out, *extra, check=None):
    return run_avfeat("extract", src, "--out", out, *TINY_MODELS, "--fps", 2, "--quiet", "--workers", 0, *extra, check=check)


def tokens(cache, vid):
    store = Cache(cache)
    return store.audio_tokens(vid), store.visual_tokens(vid), store.frame_times(vid)


def assert_same_tokens(cache, vid, reference, ref_vid):
    for got, want in zip(tokens(cache, vid), tokens(reference, ref_vid)):
        assert (got == want).all(), vid


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Local clips, their cache, and a web root serving them, shards and bad cases."""
    root = tmp_path_factory.mktemp("remote")
    local = root / "local"
    local.mkdir()
    for name, seconds in CLIPS.items():
        make_clip(local / name, seconds=seconds)
    cache = root / "local_cache"
    extract(local, cache, check=0)
    ids = {os.path.basename(r.path): r.video_id for r in Cache(cache).records()}
    web = root / "web"
    shutil.copytree(local, web / "clips")
    shutil.copy(local / "a.mp4", web / "forbidden.mp4")
    shutil.copy(local / "b.mp4", web / "stalled.mp4")
    (web / "shards").mkdir()
    for shard, samples in SAMPLES.items():
        make_shard(web / "shards" / f"{shard}.tar", {key: (local / clip, meta) for key, (clip, meta) in samples.items()})
    (web / "shards" / "only.json").write_text("{}")
    make_shard(web / "shards" / "00002.tar", {})  # a shard whose downloads all failed: no media
    return {"root": root, "local": local, "cache": cache, "ids": ids, "web": web}


def test_brace_patterns_expand_like_a_shell():
    assert expand_braces("s/{00008..00011}.tar") == ["s/00008.tar", "s/00009.tar", "s/00010.tar", "s/00011.tar"]
    assert expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]
    assert expand_braces("x{3..1}") == ["x3", "x2", "x1"] and expand_braces("{x}.tar") == ["{x}.tar"]
    assert expand_braces("{a,{b,c}}/{0..1}") == ["a/0", "a/1", "b/0", "b/1", "c/0", "c/1"]
    assert expand_braces("{a,a,b}") == ["a", "b"] and expand_braces("{-01..1}") == ["-01", "000", "001"]


def test_unbalanced_and_huge_brace_patterns_are_one_line_errors(tmp_path):
    # Unbalanced braces used to expand partly (into paths recorded as missing); now one line.
    with pytest.raises(InputError, match=r"unbalanced braces") as error:
        list_inputs(str(tmp_path / "{a,b}}.tar"))
    assert "\n" not in str(error.value)
    with pytest.raises(InputError, match=r"\{0\.\.1000000\} names more than 1,000,000 inputs"):
        expand_braces("s/{0..1000000}.tar")


def test_paths_keep_their_urls_and_members():
    assert sources.resolve("s3://bucket/a b/clip.mp4") == "s3://bucket/a b/clip.mp4"  # never Path("s3://") → "s3:/"
    assert sources.split_member("https://h/s/00001.tar#00010000.mkv") == ("https://h/s/00001.tar", "00010000.mkv")
    assert sources.name("https://h/v/clip.mp4?X-Sig=1") == "clip.mp4" and sources.suffix("s3://b/x.TAR") == ".tar"
    assert sources.join("s3://b/lists", "../clips/a.mp4") == "s3://b/clips/a.mp4"


def test_remote_stats_and_failures_say_what_the_server_said():
    from datetime import datetime, timezone

    when = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)
    s3 = stat_from_info({"size": 10, "LastModified": when, "ETag": '"abc"'})
    http = stat_from_info({"size": 10, "Last-Modified": "Fri, 02 Jan 2026 03:04:05 GMT"})
    assert s3 == http == (10, float(int(when.timestamp())))  # whole seconds: a listing and a HEAD agree
    etag = stat_from_info({"size": 10, "ETag": '"abc"'})
    assert etag.mtime != stat_from_info({"size": 10, "ETag": '"abd"'}).mtime and etag.mtime > 0
    wrapped = FileNotFoundError("http://h/x.mp4")
    wrapped.__cause__ = TimeoutError()
    assert sources.status_of(wrapped) == "remote_timeout"  # fsspec's HTTP info wraps every failure
    wrapped.__cause__ = ConnectionRefusedError("refused")
    assert sources.status_of(wrapped) == "unreadable" and sources.status_of(PermissionError()) == "access_denied"


def test_sample_metadata_keeps_one_type_per_field(tmp_path):
    clip = make_clip(tmp_path / "v.mp4", seconds=1.0)
    make_shard(tmp_path / "s.tar", {"k1": (clip, {"score": 1, "tags": {}, "width": 64}), "k2": (clip, {"score": "high"}), "k3": (clip, None)})
    items = list_inputs(str(tmp_path / "s.tar"))
    assert [i.user_id for i in items] == ["k1", "k2", "k3"]
    assert [i.metadata for i in items] == [{"score": "1", "tags": None, "json_width": 64}, {"score": '"high"'}, {}]


def test_http_inputs_equal_local_files_and_bad_urls_are_recorded(corpus, tmp_path, monkeypatch, http_ok):
    monkeypatch.setenv(sources.TIMEOUT_ENV, "1")  # the stalled server fails in 1 s, not 60
    with serve_http(corpus["web"], forbidden={"/forbidden.mp4"}, stalled={"/stalled.mp4"}) as http:
        # a folder URL lists its index page, as fsspec reads one
        assert [os.path.basename(i.path) for i in list_inputs(f"{http.url}/clips/")] == sorted(CLIPS)
        listing = tmp_path / "urls.txt"
        names = [f"clips/{name}" for name in CLIPS] + ["nope.mp4", "forbidden.mp4", "stalled.mp4"]
        listing.write_text("".join(f"{http.url}/{name}\n" for name in names))
        cache = tmp_path / "cache"
        result = extract(listing, cache, check=3)
        assert "videos: 3 ok, failed: access_denied 1, missing 1, remote_timeout 1" in result.stdout, result.stdout
        assert "Traceback" not in result.stderr
        records = {os.path.basename(r.path): r for r in Cache(cache).records()}
        for name in CLIPS:
            record = records[name]
            assert record.path == f"{http.url}/clips/{name}" and record.video_id == corpus["ids"][name]
            assert record.size == os.path.getsize(corpus["local"] / name)
            assert_same_tokens(cache, record.video_id, corpus["cache"], corpus["ids"][name])
        assert records["nope.mp4"].status == "missing" and "404" in records["nope.mp4"].error
        assert records["forbidden.mp4"].status == "access_denied" and "403" in records["forbidden.mp4"].error
        assert records["stalled.mp4"].status == "remote_timeout" and sources.TIMEOUT_ENV in records["stalled.mp4"].error
        # read with range requests, never fetched whole without one
        assert all(ranged for method, path, ranged in http.requests if method == "GET" and path.startswith("/clips/") and path != "/clips/")


@pytest.fixture
def s3(monkeypatch):
    pytest.importorskip("s3fs", reason="s3:// inputs need avfeat[remote] (s3fs)")
    pytest.importorskip("moto.server", reason="the local S3 needs moto[s3], flask and flask-cors (the dev extra)")
    for key, value in S3_TEST_ENV.items():
        monkeypatch.setenv(key, value)
    with serve_s3() as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)  # s3fs and the avfeat child process find it here
        yield endpoint


def test_s3_prefix_equals_local_extraction_and_resumes(corpus, tmp_path, s3):
    upload_s3(s3, "avfeat-test", {f"videos/{name}": corpus["local"] / name for name in CLIPS} | {"videos/notes.txt": corpus["web"] / "shards" / "only.json"})
    cache = tmp_path / "cache"
    extract("s3://avfeat-test/videos", cache, check=0)
    assert_same_cache(cache, corpus["cache"], ignore=("path", "mtime", "shard_sha256", "shard_bytes"))
    assert sorted(r.path for r in Cache(cache).records()) == sorted(f"s3://avfeat-test/videos/{name}" for name in CLIPS)
    # the listing's LastModified is the record's mtime: nothing is changed, nothing is read again
    result = extract("s3://avfeat-test/videos/*.m*", cache, "--resume", check=0)
    assert "0 processed now, 3 already in the cache" in result.stdout and "changed" not in result.stdout
    result = extract("s3://avfeat-test/videos/gone.mp4", tmp_path / "other", check=1)
    assert result.stderr.strip().splitlines()[-1] == "avfeat: error: input s3://avfeat-test/videos/gone.mp4 does not exist"


@pytest.fixture(scope="module")
def wds_cache(corpus):
    shards = corpus["web"] / "shards"
    cache = corpus["root"] / "wds"
    extract(f"{shards}/{{00000..00001}}.tar", cache, check=0)
    return cache


def test_webdataset_shards_give_key_ids_json_metadata_and_the_local_tensors(corpus, wds_cache):
    shards = corpus["web"] / "shards"
    records = {r.video_id: r for r in Cache(wds_cache).records()}
    assert sorted(records) == sorted(key for samples in SAMPLES.values() for key in samples)
    for shard, samples in SAMPLES.items():
        for key, (clip, meta) in samples.items():
            record = records[key]
            member = f"{key}{os.path.splitext(clip)[1]}"
            assert record.path == f"{shards / shard}.tar#{member}" and record.size == os.path.getsize(corpus["local"] / clip)
            assert record.metadata["caption"] == meta["caption"] and record.metadata["json_status"] == "success"
            assert record.metadata["yt_meta_dict"] == meta["yt_meta_dict"]  # nested, as given
            assert_same_tokens(wds_cache, key, corpus["cache"], corpus["ids"][clip])


def test_a_shard_without_media_is_one_line_alone_and_recorded_in_a_pattern(corpus, tmp_path):
    result = extract(corpus["web"] / "shards" / "00002.tar", tmp_path / "none", check=1)
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("avfeat: error: ") and "holds no media samples" in lines[-1] and "Traceback" not in result.stderr
    items = list_inputs(f"{corpus['web']}/shards/{{00001..00003}}.tar")
    assert [(os.path.basename(str(i.path)), i.problem and i.problem[0]) for i in items] == [
        ("00001.tar#00010000.mkv", None), ("00002.tar", "no_media"), ("00003.tar", None)]  # 00003: recorded as missing


def test_webdataset_shards_over_http_equal_local_shards(corpus, wds_cache, tmp_path, http_ok):
    with serve_http(corpus["web"]) as http:
        remote = tmp_path / "wds_http"
        result = extract(f"{http.url}/shards/{{00000..00002}}.tar", remote, check=3)
        assert "videos: 3 ok, failed: no_media 1" in result.stdout, result.stdout
        records = Cache(remote).records()
        assert [(r.path, r.status) for r in records if not r.ok] == [(f"{http.url}/shards/00002.tar", "no_media")]
        for record in (r for r in records if r.ok):
            assert record.path.startswith(f"{http.url}/shards/0000") and "#" in record.path
            assert record.metadata == Cache(wds_cache).record(record.video_id).metadata
            assert_same_tokens(remote, record.video_id, wds_cache, record.video_id)


def _cut_at_a_header(tar, member_index):
    """Cut a tar where member ``member_index``'s header starts, as a failed copy leaves it."""
    import tarfile

    with tarfile.open(tar) as archive:
        cut = archive.getmembers()[member_index].offset
    os.truncate(tar, cut)
    return cut


def test_a_shard_cut_at_a_header_boundary_is_truncated_not_complete(corpus, tmp_path):
    """Python's tarfile stops silently at EOF on a header boundary: 2 of 4 samples were lost
    while the job said "2 ok, failed: none" and exited 0."""
    local = corpus["local"]
    shards = tmp_path / "shards"
    shards.mkdir()
    four = {f"k{i}": (local / "a.mp4", {"i": i}) for i in range(4)}
    make_shard(shards / "00000.tar", four)
    make_shard(shards / "00001.tar", {"k9": (local / "b.mp4", {"i": 9})})
    _cut_at_a_header(shards / "00000.tar", 4)  # members: k0.json k0.mp4 k1.json k1.mp4 | k2.json ...
    with pytest.raises(InputError, match=r"00000\.tar is truncated: it has no tar end-of-archive marker") as error:
        list_inputs(str(shards / "00000.tar"))
    assert "\n" not in str(error.value)
    result = extract(shards / "00000.tar", tmp_path / "alone", check=1)
    assert "truncated" in result.stderr and "Traceback" not in result.stderr
    result = extract(str(shards / "{00000..00001}.tar"), tmp_path / "cache", check=3)
    assert "videos: 1 ok, failed: truncated 1" in result.stdout, result.stdout
    records = Cache(tmp_path / "cache").records()
    assert [(r.path, r.status) for r in records if not r.ok] == [(str(shards / "00000.tar"), "truncated")]
    assert [r.video_id for r in records if r.ok] == ["k9"]
    complete = shards / "whole.tar"
    make_shard(complete, four)
    assert len(list_inputs(str(complete))) == 4  # a whole shard still reads (its end: two zero blocks)


def test_a_truncated_remote_shard_is_refused(corpus, tmp_path, http_ok):
    make_shard(tmp_path / "s.tar", {f"k{i}": (corpus["local"] / "a.mp4", None) for i in range(3)})
    _cut_at_a_header(tmp_path / "s.tar", 2)
    with serve_http(tmp_path) as http:
        with pytest.raises(InputError, match=r"s\.tar is truncated"):
            list_inputs(f"{http.url}/s.tar")
        items = list_inputs(f"{http.url}/{{s,t}}.tar")
        assert [i.problem and i.problem[0] for i in items] == ["truncated", "missing"]


def test_urls_that_failed_to_read_are_failed_before_not_changed(corpus, tmp_path, http_ok):
    """After an outage left URLs unread, --resume called them all "changed" ("0 ok, failed:
    none", exit 0) and --retry-failed counted each twice (its retired record too)."""
    down = {"/clips/a.mp4", "/clips/b.mp4"}
    with serve_http(corpus["web"], forbidden=down) as http:
        listing = tmp_path / "urls.txt"
        listing.write_text("".join(f"{http.url}/clips/{name}\n" for name in CLIPS))
        cache = tmp_path / "cache"
        result = extract(listing, cache, check=3)
        assert "videos: 1 ok, failed: access_denied 2 (3 processed now, 0 already in the cache)" in result.stdout, result.stdout
        down.clear()  # the outage is over
        result = extract(listing, cache, "--resume", check=3)
        assert "videos: 1 ok, failed: access_denied 2 (0 processed now, 3 already in the cache)" in result.stdout, result.stdout
        assert "2 inputs failed in an earlier run and were not tried again (--retry-failed" in result.stdout
        assert "changed" not in result.stdout
        result = extract(listing, cache, "--resume", "--retry-failed", check=0)
        assert "videos: 3 ok, failed: none (2 processed now, 1 already in the cache)" in result.stdout, result.stdout
        records = {os.path.basename(r.path): r for r in Cache(cache).records()}
        for name in CLIPS:  # the ids of the bytes, as a first run without the outage gives
            assert records[name].ok and records[name].video_id == corpus["ids"][name]


def test_a_sample_with_an_empty_key_or_bad_json_is_a_failed_input(tmp_path):
    """A member named only '.mp4' and a KEY.json that is not a JSON object were dropped silently."""
    import io
    import tarfile

    clip = make_clip(tmp_path / "v.mp4", seconds=1.0)
    shard = tmp_path / "s.tar"
    make_shard(shard, {"good": (clip, {"a": 1}), "list": (clip, [1, 2]), ".": (clip, None)})
    media = open(clip, "rb").read()
    with tarfile.open(shard, "a") as tar:
        for name, data in (("broken.json", b"{not json"), ("broken.mp4", media), (".mp4", media)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    items = {i.path.rpartition("#")[2]: i for i in list_inputs(str(shard))}
    assert set(items) == {"good.mp4", "list.mp4", "..mp4", "broken.mp4", ".mp4"}
    assert items["good.mp4"].problem is None and items["good.mp4"].metadata == {"a": 1}
    for member, reason in (("list.mp4", "list.json holds a list, not an object"), ("broken.mp4", "broken.json is not valid JSON"),
                           ("..mp4", "key is empty"), (".mp4", "key is empty")):
        assert items[member].problem[0] == "bad_sample" and reason in items[member].problem[1], items[member].problem
    result = extract(shard, tmp_path / "cache", check=3)
    assert "videos: 1 ok, failed: bad_sample 4 (5 processed now" in result.stdout, result.stdout
