"""One writer at a time: ``avfeat.core.lock.writer_lock`` itself, and two concurrent runs of
`extract`, `train-head` and `index` into one output, of which one is refused with the line that
names the holder while the other finishes a complete output.

The concurrency is made deterministic by stopping the first writer (SIGSTOP) as soon as its
holder record exists: it then holds the lock while the second writer runs, whatever the load
of the machine, and is continued (SIGCONT) afterwards.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from avfeat.core.lock import LOCK_NAME, _process_stat, writer_lock
from avfeat.core.outputs import prepare_output
from avfeat.data.shards import open_for_writing
from avfeat.data.synth import make_corpus
from avfeat.core.errors import InputError
from avfeat.testing.runner import TINY_MODELS as TINY
from avfeat.testing.runner import assert_same_cache
from avfeat.testing.runner import run_avfeat as avfeat

HOST = socket.gethostname()
NO_HDF5_LOCKS = {**os.environ, "HDF5_USE_FILE_LOCKING": "FALSE"}  # as on NFS and Lustre
WHEN = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"

# A process that takes a lock, says so, and holds it until its stdin closes; with a second
# argument "noflock" it runs where flock(2) is not offered (ENOLCK), so the record is the lock.
HOLD = """
import errno, fcntl, sys
if sys.argv[2:] == ["noflock"]:
    def flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")
    fcntl.flock = flock
from avfeat.core.lock import writer_lock
lock = writer_lock(sys.argv[1], "cache").acquire()
print("held", flush=True)
sys.stdin.read()
lock.release()
"""


@contextmanager
def held_elsewhere(folder, *extra):
    """Another process holding the lock of ``folder`` for the block."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), *extra], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline() == "held\n"
        yield process
    finally:
        if process.poll() is None:
            process.stdin.close()
            process.wait(timeout=60)


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    result = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    return int(result.stdout)


def lock_files(folder) -> list[str]:
    return sorted(entry.name for entry in Path(folder).iterdir() if LOCK_NAME in entry.name)


def no_flock(monkeypatch):
    import fcntl

    def flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", flock)


# ---- the lock ------------------------------------------------------------------------------


def test_lock_records_its_holder_is_reentrant_and_leaves_nothing(tmp_path):
    out = tmp_path / "new" / "cache"
    with writer_lock(out, "cache") as lock:
        assert lock_files(out) == [".avfeat-lock", ".avfeat-lock.json"]
        holder = lock.holder()
        assert (holder["host"], holder["pid"], holder["kind"]) == (HOST, os.getpid(), "cache")
        assert re.fullmatch(WHEN, holder["started"])
        with writer_lock(out, "cache"):  # a job inside a command that holds it already
            pass
        assert lock.holder() == holder  # still held: only the outer release gives it back
    assert not out.exists()  # the lock made the folder, and nothing else was written there

    existing = tmp_path / "existing"
    existing.mkdir()
    with writer_lock(existing, "cache"):
        (existing / "cache.json").write_text("{}")
    assert sorted(os.listdir(existing)) == ["cache.json"]


def test_second_writer_is_refused_with_one_line_naming_the_holder(tmp_path):
    out = tmp_path / "cache"
    with held_elsewhere(out) as holder:
        with pytest.raises(InputError) as refused:
            writer_lock(out, "cache").acquire()
        message = str(refused.value)
        assert "\n" not in message
        assert re.fullmatch(
            rf"cache {re.escape(str(out))} is being written by pid {holder.pid} on host {re.escape(HOST)} since {WHEN} \(.+\); wait for it or stop it",
            message,
        ), message
    assert not out.exists()
    with writer_lock(out, "cache"):  # given back
        pass


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    out = tmp_path / "cache"
    out.mkdir()
    with held_elsewhere(out) as holder:
        holder.kill()  # kill -9: the record stays, the kernel drops the flock
        holder.wait()
    assert lock_files(out) == [".avfeat-lock", ".avfeat-lock.json"]
    with writer_lock(out, "cache") as lock:
        assert lock.holder()["pid"] == os.getpid()
    assert lock_files(out) == []


def test_records_of_dead_processes_are_replaced(tmp_path):
    out = tmp_path / "cache"
    out.mkdir()
    record = out / ".avfeat-lock.json"
    parent = os.getppid()  # alive, but started long before the process start recorded below: a reused pid
    for stale in ({"host": HOST, "pid": dead_pid()}, {"host": HOST, "pid": parent, "process_start": 1}):
        record.write_text(json.dumps({**stale, "started": "2026-01-01 00:00:00", "command": "avfeat extract"}))
        with writer_lock(out, "cache") as lock:
            assert lock.holder()["pid"] == os.getpid()
        assert not record.exists()


def test_lock_of_another_host_is_never_taken_over(tmp_path):
    out = tmp_path / "cache"
    out.mkdir()
    record = out / ".avfeat-lock.json"
    text = json.dumps({"host": "gpu-node-7", "pid": 1234, "started": "2026-11-30 18:00:01", "command": "avfeat extract"})
    record.write_text(text)
    with pytest.raises(InputError, match=r"is being written by pid 1234 on host gpu-node-7 since 2026-11-30 18:00:01 \(avfeat extract\); "
                       r"wait for it or stop it\. A lock of another host .* never taken over automatically: if that process is gone, delete .*avfeat-lock\.json"):
        writer_lock(out, "cache").acquire()
    assert record.read_text() == text


def test_without_flock_the_holder_record_is_the_lock(tmp_path, monkeypatch):
    no_flock(monkeypatch)
    out = tmp_path / "cache"
    with held_elsewhere(out, "noflock") as holder:  # a second process, also without flock
        with pytest.raises(InputError, match=rf"is being written by pid {holder.pid} on host "):
            writer_lock(out, "cache").acquire()
    assert not out.exists()
    out.mkdir()
    (out / ".avfeat-lock.json").write_text(json.dumps({"host": HOST, "pid": os.getppid(), "process_start": _process_stat(os.getppid())[1]}))
    with pytest.raises(InputError, match=rf"pid {os.getppid()} on host"):  # alive: kept
        writer_lock(out, "cache").acquire()
    (out / ".avfeat-lock.json").write_text(json.dumps({"host": HOST, "pid": dead_pid()}))
    with writer_lock(out, "cache") as lock:  # dead: taken over
        assert lock.holder()["pid"] == os.getpid()
    assert lock_files(out) == []


# A cache.json as extract writes it for the tiny models (what a reader needs to open it).
TINY_CONFIG = {"audio_model": "random:hubert-tiny", "visual_model": "random:dinov2-tiny", "audio_layer": -1, "visual_layer": -1,
               "audio_dim": 32, "audio_token_rate": 50.0, "visual_dim": 32, "visual_tokens": 65, "fps": 2.0}


def test_output_rule_ignores_the_lock_files(tmp_path):
    out = tmp_path / "out"
    with writer_lock(out, "cache"):
        assert prepare_output(out, marker="cache.json", kind="cache").value == "new"
        open_for_writing(out, TINY_CONFIG)


def test_cache_cleanup_removes_only_temps_of_this_or_dead_processes(tmp_path):
    config = TINY_CONFIG
    layout = open_for_writing(tmp_path, config)
    live = layout.shard_dir / f"shard-00000.h5.{os.getppid()}.tmp"  # a live process's open shard
    gone = [
        layout.shard_dir / f"shard-00001.h5.{os.getpid()}.tmp",
        layout.shard_dir / f"shard-00002.h5.{dead_pid()}.tmp",
        layout.manifest_dir / "part-00003.parquet.tmp",  # an older avfeat's, without a pid
    ]
    for path in (live, *gone):
        path.write_bytes(b"x")
    open_for_writing(tmp_path, config)
    assert live.exists() and not any(path.exists() for path in gone)


# ---- two commands into one output ----------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lock_corpus")
    make_corpus(folder, videos=4, seconds=2.0, classes=2, seed=0, size=64)
    return folder


EXTRACT = ("--fps", 2, "--shard-size", 2, "--workers", 0, "--quiet")


@pytest.fixture(scope="module")
def reference_cache(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("lock_reference") / "cache"
    avfeat("extract", corpus, "--out", out, *TINY, *EXTRACT, check=0)
    return out


TRAIN = ("--window", 1.0, "--steps", 4, "--batch-size", 2, "--val-fraction", 0.25, "--workers", 0, "--quiet")


@pytest.fixture(scope="module")
def heads(reference_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("lock_heads") / "heads"
    avfeat("train-head", reference_cache, "--out", out, "--dim", 16, *TRAIN, check=0)
    return out


def start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "avfeat", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=NO_HDF5_LOCKS, start_new_session=True)


def wait_until_locked(process: subprocess.Popen, record: Path, timeout: float = 300) -> None:
    """Wait for ``process`` to create its holder record (an event, not a guess at a duration)."""
    deadline = time.monotonic() + timeout
    while not record.exists():
        if process.poll() is not None:
            pytest.fail(f"the first writer ended before it took the lock: {process.communicate()[1][-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"the first writer did not take the lock within {timeout:g} s")
        time.sleep(0.01)


@contextmanager
def first_writer(args, record: Path):
    """Start ``avfeat ARGS`` and stop it once it holds the lock; continue it after the block.
    Yields the process; its ``result`` (exit status, stderr) is set after the block."""
    process = start(*args)
    try:
        wait_until_locked(process, record)
        os.kill(process.pid, signal.SIGSTOP)
        assert json.loads(record.read_text())["pid"] == process.pid
        yield process
        os.kill(process.pid, signal.SIGCONT)
        _, stderr = process.communicate(timeout=600)
        process.result = (process.returncode, stderr)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def assert_refused(result, kind: str, out: Path, holder: int, command: str) -> None:
    assert result.returncode == 1, result.stderr
    line = (f"avfeat: error: {kind} {re.escape(str(out))} is being written by pid {holder} on host {re.escape(HOST)} "
            rf"since {WHEN} \(avfeat {command}\); wait for it or stop it\n")
    assert re.fullmatch(line, result.stderr), result.stderr


def test_two_extract_runs_into_one_cache(corpus, reference_cache, tmp_path):
    out = tmp_path / "cache"
    args = ("extract", corpus, "--out", out, *TINY, *EXTRACT, "--resume")  # --resume: each would continue the other's cache
    with first_writer(args, out / ".avfeat-lock.json") as first:
        second = avfeat(*args)
    assert_refused(second, "cache", out, first.pid, "extract")
    assert first.result[0] == 0, first.result[1]
    assert_same_cache(out, reference_cache)
    assert not list(out.rglob("*.tmp")) and lock_files(out) == []


@pytest.mark.slow  # the lock of a killed process is taken over fast in test_lock_of_a_killed_process_is_taken_over
def test_killed_extract_leaves_a_lock_the_next_run_takes_over(corpus, reference_cache, tmp_path):
    out = tmp_path / "cache"
    args = ("extract", corpus, "--out", out, *TINY, *EXTRACT, "--resume")
    process = start(*args)
    try:
        wait_until_locked(process, out / ".avfeat-lock.json")
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # as a crash or an OOM kill would
        process.wait()
    assert lock_files(out) == [".avfeat-lock", ".avfeat-lock.json"]
    avfeat(*args, check=0)
    assert_same_cache(out, reference_cache)
    assert lock_files(out) == []


def test_two_train_head_runs_into_one_checkpoint(reference_cache, tmp_path):
    from avfeat.align.checkpoint import load_checkpoint

    out = tmp_path / "heads"
    with first_writer(("train-head", reference_cache, "--out", out, "--dim", 16, *TRAIN), out / ".avfeat-lock.json") as first:
        second = avfeat("train-head", reference_cache, "--out", out, "--dim", 32, *TRAIN, "--overwrite")
    assert_refused(second, "heads checkpoint", out, first.pid, "train-head")
    assert first.result[0] == 0, first.result[1]
    checkpoint = load_checkpoint(out)  # config and weights of one run: the first
    assert checkpoint.config.training["dim"] == checkpoint.heads.config.dim == 16
    assert lock_files(out) == []


def test_two_index_runs_into_one_folder(reference_cache, heads, tmp_path):
    from avfeat.index.store import IndexFolder

    out = tmp_path / "index"
    args = ("index", reference_cache, "--heads", heads, "--out", out, "--quiet")
    with first_writer(args, tmp_path / "index.avfeat-lock.json") as first:
        second = avfeat(*args, "--overwrite")
    assert_refused(second, "index", out, first.pid, "index")
    assert first.result[0] == 0, first.result[1]
    index = IndexFolder(out)
    for modality in ("audio", "visual"):
        assert index.faiss_index(modality).ntotal == index.count(modality) == index.table(modality).num_rows > 0
    assert sorted(os.listdir(tmp_path)) == ["index"]  # no index.tmp, index.old or lock files beside it
