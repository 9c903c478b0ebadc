"""`avfeat extract` / `avfeat info` end to end, through the real command line."""

import json
import shutil
import os
import random
import signal
import subprocess
import sys
import time

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from avfeat.data.cache import Cache
from avfeat.data.synth import make_corpus
from avfeat.testing.runner import TINY_MODELS as TINY
from avfeat.testing.media import make_bad_inputs, make_clip
from avfeat.testing.runner import assert_same_cache
from avfeat.testing.runner import run_avfeat as avfeat


# One torch thread for every extraction here, in this process and in the killed child processes
# alike: the caches are compared bit for bit, and the float sums' order follows the thread count.
THREADS = 1


def extract(src, out, *extra, check=None):
    return avfeat("extract", src, "--out", out, *TINY, "--fps", 2, "--quiet", *extra, check=check, threads=THREADS)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    make_corpus(folder, videos=6, seconds=3.0, classes=3, seed=0, size=96)
    return folder


@pytest.fixture(scope="module")
def reference_cache(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "cache"
    extract(corpus, out, "--shard-size", 2, "--workers", 2, check=0)
    return out


def test_synthetic_videos_end_to_end(corpus, reference_cache):
    cache = Cache(reference_cache)
    truth = pq.read_table(corpus / "ground_truth.parquet").to_pylist()
    rows = cache.records()
    assert len(rows) == len(truth) == 6
    assert {os.path.basename(r.path) for r in rows} == {t["path"] for t in truth}
    for row in rows:
        assert row.status == "ok", row
        assert abs(row.duration - 3.0) < 0.1
        audio = cache.audio_tokens(row.video_id)
        visual = cache.visual_tokens(row.video_id)
        times = cache.frame_times(row.video_id)
        assert audio.shape[1] == cache.config.audio_dim and abs(len(audio) - 150) <= 2  # 50 Hz
        assert visual.shape[1:] == (cache.config.visual_tokens, cache.config.visual_dim)
        assert len(visual) == len(times) == 6  # 2 fps over 3 s
        np.testing.assert_allclose(times, np.arange(6) / 2, atol=0.021)
        assert np.isfinite(audio).all() and np.isfinite(visual).all()
        assert -30 < row.audio_level < -10  # events at RMS 0.2 (-14 dBFS) between quiet noise
    assert len(cache.layout.shards()) == 3  # shard size 2
    assert cache.config.audio_model == "random:hubert-tiny"


def test_info_text_and_json(reference_cache):
    text = avfeat("info", reference_cache, check=0).stdout
    assert "random:hubert-tiny" in text and "ok 6" in text
    report = json.loads(avfeat("info", reference_cache, "--json", check=0).stdout)
    assert report["status_counts"] == {"ok": 6}
    assert report["videos"] == 6 and report["bytes"] > 0 and report["media_hours"] == pytest.approx(18 / 3600, rel=0.05)
    ids = [entry["video_id"] for entry in report["video_list"]]
    listed = avfeat("info", reference_cache, "--videos", check=0).stdout.strip().splitlines()
    assert len(ids) == 6 and [line.split("\t")[0] for line in listed] == ids and all("\tok\t" in line for line in listed)


def test_rerun_skips_everything_and_changed_config_is_refused(corpus, reference_cache):
    before = {p.name: p.stat().st_mtime_ns for p in (reference_cache / "shards").iterdir()}
    result = extract(corpus, reference_cache, "--resume", check=0)
    assert "6 already in the cache" in result.stdout
    # --resume alone takes the cache's own models and settings
    result = avfeat("extract", corpus, "--out", reference_cache, "--resume", "--quiet", check=0)
    assert "6 already in the cache" in result.stdout
    assert {p.name: p.stat().st_mtime_ns for p in (reference_cache / "shards").iterdir()} == before
    without_flag = avfeat("extract", corpus, "--out", reference_cache, "--quiet")
    assert without_flag.returncode == 1 and "pass --resume to continue it or --overwrite to replace it" in without_flag.stderr
    refused = avfeat("extract", corpus, "--out", reference_cache, *TINY, "--fps", 1, "--quiet", "--resume")
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [refused.stderr.strip()]
    assert refused.stderr.startswith("avfeat: error:") and "different config" in refused.stderr
    assert "Traceback" not in refused.stderr


def _parts(out):
    return len(list((out / "manifest").glob("*.parquet"))) if (out / "manifest").is_dir() else 0


def test_kill_at_random_moments_then_resume_gives_identical_cache(corpus, reference_cache, tmp_path):
    out = tmp_path / "cache"
    command = [sys.executable, "-m", "avfeat", "extract", str(corpus), "--out", str(out), *TINY, "--fps", "2", "--quiet", "--shard-size", "2", "--workers", "2", "--resume"]
    rng = random.Random(1234)
    left_behind = []
    for target in range(3):
        # Kill once the cache holds `target` committed shards, after a random delay that lands
        # mid-decode, mid-forward or mid-commit.
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                   env={**os.environ, "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)})
        delay = rng.uniform(0.0, 0.6)
        while process.poll() is None and _parts(out) < target:
            time.sleep(0.02)
        time.sleep(delay)
        if process.poll() is not None:
            break
        os.killpg(process.pid, signal.SIGKILL)  # the job and its decode workers, as a crash would
        process.wait()
        left_behind.append(_parts(out))
    assert len(left_behind) >= 2 and min(left_behind) < 3, left_behind
    extract(corpus, out, "--shard-size", 2, "--workers", 2, "--resume", check=0)
    assert not list(out.rglob("*.tmp"))
    assert_same_cache(out, reference_cache)


def test_bad_inputs_are_recorded_and_the_job_goes_on(tmp_path):
    folder = tmp_path / "in"
    expected = make_bad_inputs(folder)
    make_clip(folder / "good.mp4", seconds=2.0)
    result = extract(folder, tmp_path / "cache", "--workers", 2)
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    by_name = {os.path.basename(r.path): r for r in Cache(tmp_path / "cache").records()}
    assert by_name["good.mp4"].status == "ok"
    for status, path in expected.items():
        row = by_name[os.path.basename(path)]
        assert row.status == status, (path, row)
        if status != "ok":
            assert row.error
    report = json.loads(avfeat("info", tmp_path / "cache", "--json", check=0).stdout)
    assert report["status_counts"]["ok"] >= 1 and sum(report["status_counts"].values()) == len(by_name)


def test_retry_failed_and_limit(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    make_clip(folder / "a.mp4", seconds=1.5)
    (folder / "b.mp4").write_text("not a video")
    make_clip(folder / "c.mp4", seconds=1.5)
    out = tmp_path / "cache"
    extract(folder, out, "--limit", 2, check=3)
    assert Cache(out).status_counts() == {"ok": 1, "unreadable": 1}
    extract(folder, out, "--resume", check=3)  # c is new; b stays failed without --retry-failed
    assert Cache(out).status_counts() == {"ok": 2, "unreadable": 1}
    make_clip(folder / "b.mp4", seconds=1.5)
    extract(folder, out, "--resume", "--retry-failed", check=0)
    assert Cache(out).status_counts() == {"ok": 3}


@pytest.mark.parametrize("args, message", [
    (["/no/such/folder"], "does not exist"),
    (["EMPTY"], "no media files"),
])
def test_unusable_input_is_one_line_error(tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    args = [str(tmp_path / "empty") if a == "EMPTY" else a for a in args]
    result = extract(*args, tmp_path / "cache")
    assert result.returncode == 1
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "cache").exists()


def test_real_clips(media_dir, tmp_path):
    out = tmp_path / "cache"
    extract(media_dir, out, "--workers", 2, check=0)
    cache = Cache(out)
    rows = cache.records()
    assert len(rows) == len(list(media_dir.glob("*.mp4"))) + len(list(media_dir.glob("*.webm")))
    for row in rows:
        assert row.status == "ok", row
        with av.open(row.path) as container:
            container_duration = container.duration / av.time_base
        assert abs(row.duration - container_duration) < 0.1, row.path
        times = cache.frame_times(row.video_id)
        assert len(times) >= 2 and np.all(np.diff(times) > 0)
        assert times[0] >= 0 and times[-1] < row.duration
        assert abs(len(cache.audio_tokens(row.video_id)) - row.duration * 50) < 0.2 * 50


def test_a_bit_flip_is_found_by_verify_and_repaired(corpus, reference_cache, tmp_path):
    out = tmp_path / "cache"
    shutil.copytree(reference_cache, out)
    assert "verified 3 shards" in avfeat("info", out, "--verify", check=0).stdout
    shard = sorted((out / "shards").glob("*.h5"))[1]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    found = avfeat("info", out, "--verify")
    assert found.returncode == 1 and f"damaged  {shard.name}" in found.stdout
    assert found.stderr.strip().splitlines() == [found.stderr.strip()] and "--repair" in found.stderr
    repaired = extract(corpus, out, "--shard-size", 2, "--workers", 2, "--resume", "--repair", check=0)
    assert f"damaged  {shard.name}" in repaired.stderr and "4 already in the cache" in repaired.stdout
    assert "verified 3 shards" in avfeat("info", out, "--verify", check=0).stdout
    assert_same_cache(out, reference_cache, ignore=("shard",))  # the repaired videos sit in a new shard


def test_mixing_compute_dtypes_in_one_cache_is_refused(tmp_path):
    (tmp_path / "in").mkdir()
    make_clip(tmp_path / "in" / "a.mp4", seconds=1.0)
    extract(tmp_path / "in", tmp_path / "cache", "--dtype", "float32", "--workers", 0, check=0)
    make_clip(tmp_path / "in" / "b.mp4", seconds=1.0)
    result = extract(tmp_path / "in", tmp_path / "cache", "--resume", "--dtype", "bfloat16", "--workers", 0, check=1)
    assert "computed in float32, this run would compute bfloat16; pass --dtype float32" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and len(Cache(tmp_path / "cache").records()) == 1
    extract(tmp_path / "in", tmp_path / "cache", "--resume", "--dtype", "float32", "--workers", 0, check=0)
    make_clip(tmp_path / "in" / "c.mp4", seconds=1.0)
    extract(tmp_path / "in", tmp_path / "cache", "--resume", "--dtype", "auto", "--workers", 0, check=0)  # auto keeps the cache's float32
    assert len(Cache(tmp_path / "cache").records()) == 3


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of a chosen size (a full disk, made on purpose); skips where mounting is not allowed."""
    mounted = []

    def mount(kib: int):
        folder = tmp_path / "disk"
        folder.mkdir(exist_ok=True)
        options = f"size={kib}k" if not mounted else f"remount,size={kib}k"
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    if mounted:
        subprocess.run(["umount", str(mounted[0])], check=False)


@pytest.mark.parametrize("room", [0.6, 0.0])  # about half the cache; one 4 KiB page (cache.json cannot be written)
def test_a_full_disk_is_one_line_and_the_same_command_resumes(corpus, reference_cache, small_disk, room):
    size = sum(p.stat().st_size for p in reference_cache.rglob("*") if p.is_file())
    disk = small_disk(max(4, int(size * room) // 1024))
    out = disk / "cache"
    args = ("--shard-size", 2, "--workers", 2, "--resume")
    result = extract(corpus, out, *args, check=1)
    assert "No space left on device" in result.stderr and "run the same command again" in result.stderr
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if not line.startswith("note:")] == [result.stderr.strip().splitlines()[-1]]
    assert not list(out.rglob("*.tmp")) and len(list(out.rglob("*.h5"))) < 3
    if room:
        assert avfeat("info", out, "--verify").returncode == 0  # what was committed is whole
    small_disk(2 * size // 1024)  # space freed
    extract(corpus, out, *args, check=0)
    assert_same_cache(out, reference_cache)


def test_info_flags_a_deleted_and_a_truncated_shard(reference_cache, tmp_path):
    out = tmp_path / "cache"
    shutil.copytree(reference_cache, out)
    (out / "shards" / "shard-00001.h5").unlink()
    with open(out / "shards" / "shard-00002.h5", "r+b") as handle:
        handle.truncate(1000)
    result = avfeat("info", out, check=1)
    assert "shard-00001.h5: missing" in result.stdout and "shard-00002.h5: 1000 bytes" in result.stdout
    assert "2 of 3 shards are missing or truncated" in result.stderr and "--repair" in result.stderr
    assert json.loads(avfeat("info", out, "--json", check=1).stdout)["damaged"][0]["shard"] == "shard-00001.h5"


@pytest.mark.parametrize("config, says", [({}, "is empty"), ({"audio_model": "random:hubert-tiny"}, "lacks audio_layer, audio_dim")])
def test_info_on_a_cache_json_without_the_keys_is_one_line(tmp_path, config, says):
    (tmp_path / "cache.json").write_text(json.dumps(config))
    for extra in ([], ["--json"], ["--videos"]):
        result = avfeat("info", tmp_path, *extra)
        assert result.returncode == 1, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
        assert f"{tmp_path} is not an avfeat cache (its cache.json {says}" in result.stderr


def test_audio_level_is_the_rms_in_dbfs():
    from avfeat.extract.tasks import SILENCE_FLOOR_DB, audio_level

    assert audio_level(np.zeros(16000, np.float32)) == SILENCE_FLOOR_DB == audio_level(np.zeros(0, np.float32))
    sine = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000).astype(np.float32)
    assert abs(audio_level(sine) - 20 * np.log10(np.sqrt(0.5))) < 0.01  # a full-scale sine: -3 dBFS
    assert abs(audio_level(1e-4 * sine) - (audio_level(sine) - 80)) < 0.01
