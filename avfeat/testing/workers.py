"""Worker dummies: module-level functions the worker-pool tests run in child processes (they
must be importable by name there)."""

from __future__ import annotations

import os
import time

import numpy as np



def echo(x):
    """Return the argument unchanged."""
    return x


def sleepy(seconds: float) -> float:
    """Sleep, then return the argument."""
    time.sleep(seconds)
    return seconds


def crash(code: int = 3):
    """End the calling process at once, like a codec segfault.

    ``code >= 0`` exits with that code (``os._exit``); ``code < 0`` kills the process with
    signal ``-code`` (``-9``: SIGKILL; prefer it to SIGSEGV, which may write a core file).
    """
    if code < 0:
        os.kill(os.getpid(), -code)
        time.sleep(10)  # the signal arrives asynchronously
    os._exit(code)


def fail(message: str = "boom"):
    """Raise ValueError(message)."""
    raise ValueError(message)


def big_array(nbytes: int) -> np.ndarray:
    """A uint8 array of ``nbytes`` with a checkable pattern (``arange % 251``)."""
    return np.tile(np.arange(251, dtype=np.uint8), nbytes // 251 + 1)[:nbytes]


def dispatch(task: tuple):
    """Run the dummy named by ``task[0]`` with the remaining items as arguments.

    Lets one pool mix behaviours, e.g. ``("sleepy", 0.1)``, ``("crash", 7)``,
    ``("fail", "bad")``, ``("echo", 5)``, ``("big_array", 50_000_000)``.
    """
    name, *args = task
    functions = {"echo": echo, "sleepy": sleepy, "crash": crash, "fail": fail, "big_array": big_array}
    return functions[name](*args)


class SlowStart:
    """``dispatch`` behind a slow start: unpickling it in a worker process sleeps ``delay`` s.

    A worker unpickles its function while it starts, so this stands in for a task module whose
    imports are slow (a cold worker importing PyAV and torch on a loaded machine).
    """

    def __init__(self, delay: float):
        self.delay = delay

    def __getstate__(self):
        return {"delay": self.delay}

    def __setstate__(self, state):
        self.delay = state["delay"]
        time.sleep(self.delay)

    def __call__(self, task: tuple):
        return dispatch(task)
