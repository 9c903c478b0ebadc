"""`avfeat extract --ray`: the Ray Data pipeline writes the local job's cache and resumes like it."""

import subprocess
import sys

import pytest

from avfeat.data.cache import Cache
from avfeat.data.synth import make_corpus
from avfeat.cli.extract import expand_ray_flag
from avfeat.extract.ray_job import plan_placement
from avfeat.testing.runner import TINY_MODELS as TINY
from avfeat.testing.runner import assert_same_cache
from avfeat.testing.runner import run_avfeat_process as avfeat

needs_ray = pytest.mark.skipif(
    subprocess.run([sys.executable, "-c", "import ray.data"], capture_output=True).returncode != 0,
    reason="Ray is not installed (pip install 'ray[data]'); CI installs it",
)


# Both paths run torch with one intra-op thread. The caches are compared bit for bit, and
# the thread count can change the order of float sums (a reduction split across threads), so
# it must be the same on both sides: by default the local job uses every core while Ray gives
# each actor OMP_NUM_THREADS = its CPU share (1 on a 2-core machine); issue 10 saw that make 2
# of 3,264 float16 values differ by one unit in the last place (~4e-6). Ray keeps an
# OMP_NUM_THREADS it inherits from the driver, so one setting reaches the actors too.
THREADS = 1


def extract(src, out, *extra, check=None):
    return avfeat(
        "extract", src, "--out", out, *TINY, "--fps", 2, "--shard-size", 3, "--quiet", *extra, check=check, threads=THREADS
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    make_corpus(folder, videos=7, seconds=2.0, classes=3, seed=1, size=96)
    (folder / "broken.mp4").write_text("not a video")  # recorded as failed by both paths
    return folder


@pytest.fixture(scope="module")
def local_cache(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "cache"
    extract(corpus, out, check=3)
    return out


@pytest.mark.slow  # a local Ray starts in each run: about a minute
@needs_ray
@pytest.mark.usefixtures("one_ray_at_a_time")
def test_ray_cache_equals_local_and_resumes(corpus, local_cache, tmp_path):
    out = tmp_path / "cache"
    result = extract(corpus, out, "--ray", check=3)  # a local Ray on this machine's CPUs
    assert "Traceback" not in result.stderr
    assert "7 ok, failed: unreadable 1" in result.stdout
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["shard-00000.h5", "shard-00001.h5", "shard-00002.h5"]
    assert_same_cache(out, local_cache)
    attrs = Cache(out).shard_attrs()
    assert attrs["compute_device"] == "cpu" and attrs["audio_model"] == "random:hubert-tiny"

    # A writer that died before its commit: its part and shard are missing, a temp file is left.
    (out / "manifest" / "part-00001.parquet").unlink()
    (out / "shards" / "shard-00001.h5").rename(out / "shards" / "shard-00001.h5.tmp")
    resumed = extract(corpus, out, "--ray", "--resume", check=3)
    assert "(3 processed now, 5 already in the cache)" in resumed.stdout
    assert not list(out.rglob("*.tmp"))
    assert sorted(p.name for p in (out / "manifest").iterdir()) == ["part-00000.parquet", "part-00002.parquet", "part-00003.parquet"]
    assert_same_cache(out, local_cache, ignore=("shard",))  # the redone shard is numbered after the last one

    again = extract(corpus, out, "--ray", "--resume", check=3)
    assert "(0 processed now, 8 already in the cache)" in again.stdout


def test_ray_missing_says_how_to_install(corpus, tmp_path):
    code = (
        "import sys; sys.modules['ray'] = None\n"  # as if Ray were not installed
        "from avfeat.cli import main\n"
        f"sys.argv = ['avfeat', 'extract', {str(corpus)!r}, '--out', {str(tmp_path / 'cache')!r}, '--ray']\n"
        "main()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip() == "avfeat: error: --ray needs Ray, which is not installed: pip install 'ray[data]' (the ray extra of avfeat's wheel)"


@pytest.mark.parametrize("args, expected", [
    (["extract", "in", "--ray"], ["extract", "in", "--ray", "local"]),
    (["extract", "--ray", "in", "--out", "c"], ["extract", "--ray", "local", "in", "--out", "c"]),
    (["extract", "--ray", "-q", "in"], ["extract", "--ray", "local", "-q", "in"]),
    (["extract", "in", "--ray", "auto"], ["extract", "in", "--ray", "auto"]),
    (["extract", "in", "--ray", "10.0.0.5:6379"], ["extract", "in", "--ray", "10.0.0.5:6379"]),
    (["extract", "in", "--ray", "ray://head:10001"], ["extract", "in", "--ray", "ray://head:10001"]),
    (["extract", "in"], ["extract", "in"]),
])
def test_ray_flag_takes_an_optional_address(args, expected):
    assert expand_ray_flag(args) == expected


def test_placement_shares_each_gpu_between_the_backbones():
    on_gpus = plan_placement({"CPU": 64, "GPU": 8}, device="auto")
    assert (on_gpus.actors, on_gpus.actor_gpus) == (8, 0.5)
    forced_cpu = plan_placement({"CPU": 64, "GPU": 8}, device="cpu")
    assert forced_cpu.actor_gpus == 0 and forced_cpu.actors == 1
    small = plan_placement({"CPU": 2}, device="auto")
    assert small.actor_gpus == 0 and 2 * small.actor_cpus <= 2
    assert small.decode_cpus != small.actor_cpus  # keeps Ray Data from fusing decoding into an actor


@pytest.mark.slow  # a local Ray starts in each run: about a minute
@needs_ray
@pytest.mark.usefixtures("one_ray_at_a_time")
def test_a_failing_stage_is_one_line_and_keeps_the_cache(corpus, tmp_path):
    out = tmp_path / "cache"
    code = (
        "import sys\n"
        "import avfeat.extract.ray_job as ray_job\n"
        "def disk_full(item, writer_args):\n"  # shipped to the Ray workers by value
        "    raise OSError('disk full')\n"
        "ray_job._write_shard = disk_full\n"
        "from avfeat.cli import main\n"
        f"sys.argv = ['avfeat', 'extract', {str(corpus)!r}, '--out', {str(out)!r}, '--quiet', '--ray', "
        + ", ".join(repr(str(a)) for a in TINY)
        + "]\n"
        "main()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("avfeat: error:")]
    assert errors == ["avfeat: error: the Ray pipeline stopped (OSError: disk full); committed shards are kept, run again to resume"]
    assert "Traceback" not in result.stderr
    assert (out / "cache.json").is_file() and not list((out / "manifest").iterdir())


def test_placement_fits_every_stage_on_the_smallest_node():
    # Three 1-CPU nodes: once one is lost, its actor must fit beside the decode and write tasks
    # on a node left (an actor of 0.75 CPU and decoding of 1 CPU left the job waiting for ever).
    plan = plan_placement({"CPU": 3}, device="auto", node_cpus=1)
    assert plan.actor_cpus + plan.decode_cpus + plan.write_cpus <= 1
    assert plan.decode_cpus != plan.actor_cpus
    assert plan_placement({"CPU": 40}, device="auto", node_cpus=4).actor_cpus <= 1  # not a quarter of the cluster
    assert plan_placement({"CPU": 64}, device="auto") == plan_placement({"CPU": 64}, device="auto", node_cpus=64)


def test_a_pipeline_without_progress_stops_in_one_line():
    import threading

    from avfeat.extract.ray_job import RayJobError, _watched

    release = threading.Event()

    def rows():
        yield {"index": 0}
        release.wait(30)  # a job whose next shard never comes
        yield {"index": 1}

    watched = _watched(rows(), stall=0.2)
    assert next(watched) == {"index": 0}
    with pytest.raises(RayJobError, match=r"no progress for 0.2 s .* run again to resume") as caught:
        next(watched)
    release.set()
    assert "\n" not in str(caught.value)
    assert list(_watched(iter([1, 2]), stall=5)) == [1, 2]


def test_stall_setting_must_be_a_positive_number(monkeypatch):
    from avfeat.core.errors import InputError
    from avfeat.extract.ray_job import STALL_ENV, stall_seconds

    monkeypatch.setenv(STALL_ENV, "soon")
    with pytest.raises(InputError, match="AVFEAT_RAY_STALL_SECONDS must be a positive number of seconds, got 'soon'"):
        stall_seconds()
    monkeypatch.setenv(STALL_ENV, "30")
    assert stall_seconds() == 30
