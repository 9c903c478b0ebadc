"""`avfeat serve --workers N`: N forked processes that accept on the one socket the parent bound.

Each worker loads its own ``Service`` after the fork (torch's thread pools are not fork-safe
once used; the FAISS indexes are memory-mapped where the store allows, so the page cache holds
one copy). Workers start one after another: the first one's load checks the index, the heads
and the cache, and its error comes back to the parent as one line. The parent forwards SIGTERM
and SIGINT to the workers, waits for them, and fails if one dies on its own.

Metrics are per process: each worker counts the requests it answered, and ``/health`` and
``/metrics`` answer for the worker that took the connection (``/health`` gives its ``pid``).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
from typing import Callable

from avfeat.core.errors import AvfeatError, InputError

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _worker(load: Callable[[], tuple], sock: socket.socket, conn, threads: int) -> None:
    """One worker: load the app (sending the console lines or the error up ``conn``), then serve."""
    for number in STOP_SIGNALS:  # the parent's handlers are no worker's: uvicorn installs its own
        signal.signal(number, signal.SIG_DFL)
    _stop_with_parent()
    try:
        import torch

        torch.set_num_threads(threads)  # workers share the cores rather than oversubscribe them
        server, lines = load()
    except AvfeatError as error:
        conn.send(("error", type(error).__name__, str(error)))
        conn.close()
        os._exit(1)
    conn.send(("ready", lines))
    conn.close()
    server.run(sockets=[sock])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _stop_with_parent() -> None:
    """Linux: SIGTERM this worker when the parent dies, even of SIGKILL (which it cannot forward)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return  # not Linux: SIGTERM and SIGINT to the parent still stop every worker
    if os.getppid() == 1:  # the parent died before the call: nothing would signal
        os._exit(1)


class _Stop(Exception):
    """The parent was asked to stop (SIGTERM or SIGINT)."""


def run_workers(load: Callable[[], tuple], sock: socket.socket, workers: int, say: Callable[[str], None]) -> None:
    """Fork ``workers`` processes that each call ``load()`` (a uvicorn ``Server`` and the lines
    for the console) and serve on ``sock``; return when they have all stopped after SIGTERM or
    SIGINT.

    Raises:
        AvfeatError: a worker's load failed (its error, one line), or a worker died on its own.
    """
    context = multiprocessing.get_context("fork")
    threads = max(1, (os.cpu_count() or 1) // workers)
    processes: list = []
    lines: list = []

    def stop(number, frame):
        raise _Stop()

    previous = {number: signal.signal(number, stop) for number in STOP_SIGNALS}
    try:
        for rank in range(workers):
            parent_end, child_end = context.Pipe(duplex=False)
            process = context.Process(target=_worker, args=(load, sock, child_end, threads), name=f"avfeat-serve-{rank}", daemon=False)
            process.start()
            child_end.close()
            processes.append(process)
            said = _started(parent_end, process)
            lines = said if rank == 0 else lines
        for line in lines:  # "on http://...": said once every worker accepts
            say(line)
        sentinels = {p.sentinel: p for p in processes}
        ready = multiprocessing.connection.wait(list(sentinels))  # a worker stops only when told to
        dead = sentinels[ready[0]]
        raise AvfeatError(f"serve worker {dead.pid} exited unexpectedly (code {dead.exitcode}); the others were stopped")
    except _Stop:
        pass
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        _stop_all(processes)


def _started(conn, process) -> list:
    """Wait for a worker's load: its lines for the console, or its error raised."""
    try:
        message = conn.recv()
    except EOFError:
        process.join()
        raise AvfeatError(f"serve worker {process.pid} exited while loading (code {process.exitcode})") from None
    finally:
        conn.close()
    if message[0] == "error":
        import avfeat.core.errors as errors

        raise getattr(errors, message[1], InputError)(message[2])
    return message[1]


def _stop_all(processes: list) -> None:
    """SIGTERM to every live worker, then wait; a worker still up after 30 s is killed."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(30)
        if process.is_alive():
            process.kill()
            process.join()
