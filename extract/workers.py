"""A pool of decoder processes that survives codec hangs and crashes.

Decoding untrusted media can hang or take a whole process down (a codec segfault), so each
decode runs in a long-lived worker process fed one task at a time over a pipe. The parent
waits on the result pipes and the process sentinels together: a task that overruns its time
limit gets its worker killed and replaced, a worker that dies is replaced, and either way the
item is reported with a named status instead of stopping the whole extraction.

Workers are started with the ``forkserver`` method (``spawn`` where that does not exist),
never ``fork``: the parent runs torch threads, and forking a threaded process can deadlock.

A cold worker takes a while to start (a fresh interpreter importing PyAV, numpy and the
task's module: about 0.7 s, more on a loaded machine). That is not decoding time, so the time
limit of a task counts from the moment its worker is ready: each worker says so once, before it
reads its first task, and a task sent earlier waits in the pipe with its clock stopped. A
worker that never becomes ready is given up after ``_START_LIMIT`` seconds.
"""

from __future__ import annotations

import multiprocessing
import signal
import time
from collections import deque
from multiprocessing.connection import wait
from typing import Any, Callable, Iterable, Iterator

from avfeat.extract.media import MediaError
from avfeat.data.records import Status

# How long close() waits for idle workers to exit on their own before killing them.
_STOP_GRACE = 5.0

# How long a new worker may take to start (interpreter, imports, unpickling ``fn``) before the
# task waiting for it is reported ``crashed``; applies only when the pool has a time limit.
_START_LIMIT = 60.0

# What a worker sends once it is ready to take tasks (results are always ``(ok, value)`` tuples).
_READY = "avfeat-decoder-ready"


def _is_ready(message: Any) -> bool:
    return type(message) is str and message == _READY


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 500 else text[:497] + "..."


def _run(fn: Callable[[Any], Any], item: Any) -> tuple[bool, Any]:
    """Call ``fn(item)``: (True, result), or (False, MediaError) for any exception."""
    try:
        return True, fn(item)
    except MediaError as exc:
        return False, exc
    except Exception as exc:  # noqa: BLE001 - reported per item, the run goes on
        return False, MediaError(Status.DECODE_ERROR, _describe(exc))


def _worker_main(conn, fn: Callable[[Any], Any]) -> None:
    """Worker loop: say ready, then receive an item, send back (ok, result); ``None`` or a
    closed pipe ends it."""
    # Ctrl-C reaches the whole process group; let the parent alone handle it and stop us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Start-up (imports, unpickling ``fn``) is over: the parent starts the first task's clock now.
    try:
        conn.send(_READY)
    except OSError:
        return  # parent gone
    while True:
        try:
            item = conn.recv()
        except (EOFError, OSError):
            return  # parent gone
        if item is None:
            return
        reply = _run(fn, item)
        try:
            conn.send(reply)
        except OSError:
            return  # parent gone
        except Exception as exc:  # noqa: BLE001 - the result could not be pickled (nothing was written)
            conn.send((False, MediaError(Status.DECODE_ERROR, f"result could not be sent back: {_describe(exc)}")))


def _default_start_method() -> str:
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


class _Worker:
    __slots__ = ("process", "conn", "seq", "started", "ready", "spawned")

    def __init__(self, process, conn):
        self.process = process
        self.conn = conn
        self.seq: int | None = None  # the task it is running
        self.started = 0.0  # monotonic time the task's clock started (sent to a ready worker, or ready)
        self.ready = False  # has said it is ready (start-up over)
        self.spawned = time.monotonic()

    def deadline(self, timeout: float) -> float:
        """Monotonic time at which the running task is over its limit (or the start-up is)."""
        return self.started + timeout if self.ready else self.spawned + max(_START_LIMIT, timeout)


class DecodePool:
    """Runs ``fn`` over items in worker processes, yielding results in input order.

    Use as a context manager; leaving it stops every worker, also when the consumer stops
    iterating early or raises.

    Args:
        fn: a picklable callable (module-level function or ``functools.partial`` of one).
        workers: number of worker processes; 0 runs ``fn`` inline in this process (no timeout).
        timeout: seconds one item may take before its worker is killed (``timeout`` status),
            counted from when its worker is ready (a new worker's start-up is not counted; one
            that is not ready after ``_START_LIMIT`` s fails its item as ``crashed``); None for
            no limit.
        prefetch: most items in flight at once (read from the input but not yet yielded,
            including finished ones waiting for an earlier item); default ``2 * workers + 2``.
        start_method: ``"forkserver"`` (default where available) or ``"spawn"``.
    """

    def __init__(
        self,
        fn: Callable[[Any], Any],
        workers: int,
        timeout: float | None,
        prefetch: int | None = None,
        *,
        start_method: str | None = None,
    ):
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be positive or None, got {timeout}")
        if prefetch is not None and prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        method = start_method or _default_start_method()
        if method == "fork":
            raise ValueError("the fork start method is not allowed (the parent runs threads)")
        self.fn = fn
        self.workers = int(workers)
        self.timeout = timeout
        self.prefetch = int(prefetch) if prefetch is not None else 2 * self.workers + 2
        self._ctx = multiprocessing.get_context(method)
        self._slots: list[_Worker | None] = []
        self._active = False
        self._closed = False

    # ---- lifecycle ----

    def __enter__(self) -> DecodePool:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def start(self) -> None:
        """Start the worker processes (done by ``__enter__`` and on first use)."""
        if self._closed:
            raise RuntimeError("DecodePool is closed")
        if not self._slots:
            self._slots = [None] * self.workers
        for index, worker in enumerate(self._slots):
            if worker is None:
                self._slots[index] = self._spawn()

    def close(self) -> None:
        """Stop all workers: idle ones are asked to exit, busy ones and ones still starting are
        killed. Idempotent."""
        self._closed = True
        workers = [w for w in self._slots if w is not None]
        self._slots = []
        for worker in workers:
            # An idle worker that has said ready (its message read or waiting) reads the None at once.
            if worker.seq is None and (worker.ready or worker.conn.poll(0)):
                try:
                    worker.conn.send(None)
                except OSError:
                    pass
            else:
                # Busy: may be blocked writing a large result; starting: would read the None only
                # after its start-up. Neither holds anything worth waiting for.
                worker.process.kill()
        deadline = time.monotonic() + _STOP_GRACE
        for worker in workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            self._discard(worker)

    @property
    def pids(self) -> list[int]:
        """Process ids of the current workers (for diagnostics and tests)."""
        return [w.process.pid for w in self._slots if w is not None]

    def _spawn(self) -> _Worker:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=_worker_main, args=(child_conn, self.fn), name="avfeat-decoder", daemon=True
        )
        process.start()
        child_conn.close()
        return _Worker(process, parent_conn)

    @staticmethod
    def _discard(worker: _Worker) -> None:
        """Kill (if still running), reap and release one worker."""
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join()
        worker.conn.close()
        worker.process.close()

    def _replace(self, index: int) -> None:
        old = self._slots[index]
        if old is not None:
            self._discard(old)
        self._slots[index] = self._spawn()

    # ---- running ----

    def imap(self, items: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
        """Yield ``(item, result)`` in input order; ``result`` is a MediaError on failure.

        ``fn`` raising MediaError yields it; any other exception yields ``decode_error``; a task
        over the time limit yields ``timeout``; a worker that dies yields ``crashed``.
        """
        if self._closed:
            raise RuntimeError("DecodePool is closed")
        if self.workers == 0:
            for item in items:
                ok, value = _run(self.fn, item)
                yield item, value
            return
        if self._active:
            raise RuntimeError("DecodePool.imap is already running; consume one at a time")
        self._active = True
        try:
            self.start()
            yield from self._imap(items)
        finally:
            self._active = False
            # Tasks still running belong to this (abandoned) iteration: stop them, so a later
            # imap never receives their results. Slots are refilled lazily.
            for index, worker in enumerate(self._slots):
                if worker is not None and worker.seq is not None:
                    self._discard(worker)
                    self._slots[index] = None

    def _imap(self, items: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
        source = iter(items)
        exhausted = False
        pending: deque[int] = deque()  # read, not yet sent to a worker
        inputs: dict[int, Any] = {}
        results: dict[int, Any] = {}
        next_seq = 0  # next input index to read
        out_seq = 0  # next index to yield
        while True:
            while not exhausted and next_seq - out_seq < self.prefetch:
                try:
                    item = next(source)
                except StopIteration:
                    exhausted = True
                    break
                inputs[next_seq] = item
                pending.append(next_seq)
                next_seq += 1
            self._dispatch(pending, inputs, results)
            if out_seq in results:
                value = results.pop(out_seq)
                item = inputs.pop(out_seq)
                out_seq += 1
                yield item, value
                continue  # refill and dispatch before the next yield
            if exhausted and out_seq == next_seq:
                return
            self._wait(results)

    def _dispatch(self, pending: deque[int], inputs: dict[int, Any], results: dict[int, Any]) -> None:
        for index in range(len(self._slots)):
            if not pending:
                return
            worker = self._slots[index]
            if worker is None or (worker.seq is None and not worker.process.is_alive()):
                self._replace(index)  # refill a slot freed earlier, or replace a worker that died idle
                worker = self._slots[index]
            if worker.seq is not None:
                continue
            self._check_ready(worker)
            seq = pending.popleft()
            try:
                worker.conn.send(inputs[seq])
            except OSError:
                # Died between the check and the send: start another and try once more.
                self._replace(index)
                worker = self._slots[index]
                try:
                    worker.conn.send(inputs[seq])
                except OSError as exc:
                    results[seq] = MediaError(Status.CRASHED, f"could not send the task to a decoder process: {_describe(exc)}")
                    continue
            except Exception as exc:  # noqa: BLE001 - the item could not be pickled (nothing was written)
                results[seq] = MediaError(Status.DECODE_ERROR, f"item could not be sent to a worker: {_describe(exc)}")
                continue
            worker.seq = seq
            worker.started = time.monotonic()  # meaningful once the worker is ready

    @staticmethod
    def _check_ready(worker: _Worker) -> None:
        """Consume the worker's ready message if it has arrived; the running task's clock
        starts then."""
        if worker.ready or not worker.conn.poll(0):
            return
        try:
            message = worker.conn.recv()
        except (EOFError, OSError):
            return  # died during start-up: the sentinel reports it
        if not _is_ready(message):  # cannot happen: a worker says ready before anything else
            raise RuntimeError(f"DecodePool: unexpected first message from a worker: {message!r}")
        worker.ready = True
        worker.started = time.monotonic()

    def _wait(self, results: dict[int, Any]) -> None:
        busy = [i for i, w in enumerate(self._slots) if w is not None and w.seq is not None]
        if not busy:  # cannot happen: every read item is pending, running or finished
            raise RuntimeError("DecodePool: nothing running but results are missing")
        limit = None
        if self.timeout is not None:
            now = time.monotonic()
            limit = max(0.0, min(self._slots[i].deadline(self.timeout) - now for i in busy))
        handles = []
        for i in busy:
            handles += [self._slots[i].conn, self._slots[i].process.sentinel]
        ready = wait(handles, timeout=limit)
        for i in busy:
            worker = self._slots[i]
            self._check_ready(worker)  # a task sent during start-up begins now
            if worker.conn.poll(0) or worker.process.sentinel in ready:
                self._collect(i, results)
            elif self.timeout is not None and time.monotonic() >= worker.deadline(self.timeout):
                if worker.ready:
                    results[worker.seq] = MediaError(Status.TIMEOUT, f"decoding took longer than {self.timeout:g} s")
                else:
                    started = max(_START_LIMIT, self.timeout)
                    results[worker.seq] = MediaError(Status.CRASHED, f"decoder process did not start within {started:g} s")
                worker.seq = None
                self._replace(i)

    def _collect(self, index: int, results: dict[int, Any]) -> None:
        """Read a worker's reply (blocking until all of it is there), or record its death."""
        worker = self._slots[index]
        seq = worker.seq
        if worker.conn.poll(0):
            try:
                reply = worker.conn.recv()
            except (EOFError, OSError):
                pass  # died mid-reply: fall through to the crash report
            except Exception as exc:  # noqa: BLE001 - the reply was read whole but could not be unpickled
                results[seq] = MediaError(Status.DECODE_ERROR, f"result could not be read: {_describe(exc)}")
                worker.seq = None
                return
            else:
                if _is_ready(reply):  # arrived just after _check_ready looked: the task begins now
                    worker.ready = True
                    worker.started = time.monotonic()
                    return
                ok, value = reply
                results[seq] = value
                worker.seq = None
                return
        worker.process.join(_STOP_GRACE)
        code = worker.process.exitcode
        detail = f"exit code {code}"
        if code is not None and code < 0:
            try:
                detail += f", signal {signal.Signals(-code).name}"
            except ValueError:
                pass
        results[seq] = MediaError(Status.CRASHED, f"decoder process died ({detail})")
        worker.seq = None
        self._replace(index)
