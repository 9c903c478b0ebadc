"""Tests for avfeat.extract.workers.DecodePool: order, timeouts, crashes, errors, cleanup."""

from __future__ import annotations

import functools
import multiprocessing
import os
import random
import time

import numpy as np
import pytest

from avfeat.extract.media import DecodeSpec, MediaError, decode
from avfeat.data.records import Status
from avfeat.extract.workers import DecodePool
from avfeat.extract import workers
from avfeat.testing.media import BAD_INPUT_STATUS
from avfeat.testing.workers import SlowStart, big_array, dispatch, echo

pytestmark = pytest.mark.timeout(60)


def _gone(pids, within=5.0) -> bool:
    """True once none of ``pids`` exists any more (reaped, not zombies)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                os.kill(pid, 0)
                alive.append(pid)
            except ProcessLookupError:
                pass
        if not alive:
            return True
        time.sleep(0.05)
    return False


def test_results_in_input_order_under_random_delays():
    rng = random.Random(0)
    items = [("sleepy", rng.uniform(0, 0.08)) for _ in range(24)]
    items[0] = ("sleepy", 0.3)  # the head finishes last: everything behind it must wait
    with DecodePool(dispatch, workers=3, timeout=None) as pool:
        out = list(pool.imap(items))
    assert [item for item, _ in out] == items
    assert [result for _, result in out] == [seconds for _, seconds in items]


def test_prefetch_bounds_items_in_flight():
    read = []

    def source():
        for i in range(20):
            read.append(i)
            yield ("echo", i)

    with DecodePool(dispatch, workers=2, timeout=None, prefetch=3) as pool:
        for (_, i), result in pool.imap(source()):
            assert result == i
            assert len(read) <= i + 1 + 3  # never more than prefetch items ahead of the consumer


def test_timeout_then_later_items_succeed():
    items = [("echo", 1), ("sleepy", 30), ("echo", 2), ("echo", 3), ("echo", 4)]
    start = time.monotonic()
    with DecodePool(dispatch, workers=2, timeout=0.5) as pool:
        out = list(pool.imap(items))
        assert time.monotonic() - start < 10
        assert out[0][1] == 1 and [r for _, r in out[2:]] == [2, 3, 4]
        error = out[1][1]
        assert isinstance(error, MediaError) and error.status == Status.TIMEOUT
        assert error.message == "decoding took longer than 0.5 s"
        # The pool is still whole afterwards.
        assert [r for _, r in pool.imap([("echo", 5), ("echo", 6)])] == [5, 6]
        assert len(pool.pids) == 2


def test_time_limit_starts_when_the_worker_is_ready():
    # Each worker takes 1.5 s to start, three times the limit: start-up is not decoding time,
    # so the first task and the one after a replacement (a cold worker again) still succeed.
    # With the clock started at send time, both reported a timeout.
    items = [("echo", 1), ("sleepy", 30), ("echo", 2)]
    with DecodePool(SlowStart(1.5), workers=1, timeout=0.5) as pool:
        out = [result for _, result in pool.imap(items)]
    assert out[0] == 1 and out[2] == 2
    assert isinstance(out[1], MediaError) and out[1].status == Status.TIMEOUT


def test_worker_that_never_starts_is_given_up(monkeypatch):
    monkeypatch.setattr(workers, "_START_LIMIT", 0.5)
    with DecodePool(SlowStart(30), workers=1, timeout=0.2) as pool:
        start = time.monotonic()
        out = [result for _, result in pool.imap([("echo", 1)])]
        assert time.monotonic() - start < 10
    assert isinstance(out[0], MediaError) and out[0].status == Status.CRASHED
    assert out[0].message == "decoder process did not start within 0.5 s"


def test_crash_then_later_items_succeed():
    items = [("echo", 1), ("crash", 7), ("echo", 2), ("echo", 3)]
    with DecodePool(dispatch, workers=1, timeout=None) as pool:
        first_pid = pool.pids[0]
        out = list(pool.imap(items))
        assert pool.pids[0] != first_pid  # replaced
    assert [r for _, r in out if not isinstance(r, MediaError)] == [1, 2, 3]
    error = out[1][1]
    assert isinstance(error, MediaError) and error.status == Status.CRASHED
    assert "exit code 7" in error.message


def test_death_by_signal_is_reported():
    with DecodePool(dispatch, workers=1, timeout=20) as pool:
        out = list(pool.imap([("crash", -9), ("echo", 1)]))
    assert out[0][1].status == Status.CRASHED
    assert out[0][1].message == "decoder process died (exit code -9, signal SIGKILL)"
    assert out[1][1] == 1


def test_exception_becomes_decode_error():
    with DecodePool(dispatch, workers=2, timeout=5) as pool:
        out = list(pool.imap([("fail", "bad frame"), ("echo", 1)]))
    error = out[0][1]
    assert isinstance(error, MediaError) and error.status == Status.DECODE_ERROR
    assert error.message == "ValueError: bad frame"
    assert out[1][1] == 1


def test_media_errors_from_decode_pass_through(bad_inputs):
    cases = sorted(bad_inputs)
    fn = functools.partial(decode, spec=DecodeSpec(fps=1.0))
    with DecodePool(fn, workers=2, timeout=30) as pool:
        out = list(pool.imap([bad_inputs[c] for c in cases]))
    assert [path for path, _ in out] == [bad_inputs[c] for c in cases]
    assert [r.status for _, r in out] == [BAD_INPUT_STATUS[c] for c in cases]


def test_early_break_leaves_no_children():
    items = [("sleepy", 0.2)] * 10
    with DecodePool(dispatch, workers=3, timeout=None) as pool:
        pids = list(pool.pids)
        for _ in pool.imap(items):
            break
    assert pids and _gone(pids)
    assert not any(p.name == "avfeat-decoder" for p in multiprocessing.active_children())


def test_consumer_exception_stops_workers():
    start = time.monotonic()
    with pytest.raises(KeyError):
        with DecodePool(dispatch, workers=2, timeout=None) as pool:
            pids = list(pool.pids)
            for _ in pool.imap([("echo", 0)] + [("sleepy", 30)] * 4):
                raise KeyError("consumer failed")
    assert time.monotonic() - start < 10
    assert _gone(pids)


def test_close_does_not_wait_for_running_tasks():
    pool = DecodePool(dispatch, workers=2, timeout=None)
    pool.start()
    pids = list(pool.pids)
    results = pool.imap([("echo", 0), ("sleepy", 30), ("sleepy", 30)])
    assert next(results)[1] == 0
    start = time.monotonic()
    pool.close()
    assert time.monotonic() - start < 5
    assert _gone(pids)
    pool.close()  # idempotent


def test_large_results_pass():
    nbytes = 50_000_000
    with DecodePool(dispatch, workers=2, timeout=60) as pool:
        out = list(pool.imap([("big_array", nbytes), ("echo", 1), ("big_array", nbytes)]))
    expected = big_array(nbytes)
    for index in (0, 2):
        array = out[index][1]
        assert isinstance(array, np.ndarray) and array.nbytes == nbytes
        np.testing.assert_array_equal(array, expected)
    assert out[1][1] == 1


def test_inline_mode():
    with DecodePool(dispatch, workers=0, timeout=None) as pool:
        assert pool.pids == []
        out = list(pool.imap([("echo", 1), ("fail", "nope"), ("echo", 2)]))
    assert out[0] == (("echo", 1), 1) and out[2] == (("echo", 2), 2)
    assert out[1][1].status == Status.DECODE_ERROR and out[1][1].message == "ValueError: nope"


def test_spawn_start_method_and_fork_refused():
    with DecodePool(echo, workers=1, timeout=10, start_method="spawn") as pool:
        assert [r for _, r in pool.imap([1, 2, 3])] == [1, 2, 3]
    with pytest.raises(ValueError):
        DecodePool(echo, workers=1, timeout=None, start_method="fork")
