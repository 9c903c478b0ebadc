"""What the benchmarks share: their common arguments, the timing loops and the machine line.

Not a benchmark itself. The scripts run as ``python benchmarks/X.py``, which puts this folder
first on ``sys.path``, so they import it as ``from _bench import ...``.

Every benchmark has ``--smoke``: the tiniest inputs that still run each of its code paths, one
repeat, in seconds, without the network, a GPU or the real clips (tests/test_benchmarks.py
runs them all). Its figures mean nothing; it checks that the script still runs.
"""

from __future__ import annotations

import argparse
import atexit
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

SMOKE_HELP = "tiny inputs, one repeat: check that the script runs (seconds; the figures mean nothing)"


def parser(doc: str, repeats: int | None = None, repeats_help: str = "runs per measurement (the median counts)") -> argparse.ArgumentParser:
    """An argument parser showing the script's docstring, with ``--smoke`` and, when the script
    repeats its measurements, ``--repeats`` (default ``repeats``)."""
    found = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    found.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    if repeats is not None:
        found.add_argument("--repeats", type=int, default=repeats, help=repeats_help)
    return found


def parse(parser: argparse.ArgumentParser, smoke: dict[str, Any], argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line. With ``--smoke``, ``smoke`` (and one repeat) replace the defaults;
    flags given on the command line still win, so ``--smoke --videos 3`` means what it says."""
    args = parser.parse_args(argv)
    if args.smoke:
        parser.set_defaults(**({"repeats": 1} if hasattr(args, "repeats") else {}), **smoke)
        args = parser.parse_args(argv)
    return args


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall seconds of one call of ``fn``, and its result."""
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def median_time(fn: Callable[[], Any], repeats: int, warmup: int = 0) -> tuple[float, Any]:
    """Median wall seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones, and the
    last call's result (the median, not the least: a shared machine's slow spells are real)."""
    for _ in range(warmup):
        fn()
    times, result = [], None
    for _ in range(max(1, repeats)):
        seconds, result = timed(fn)
        times.append(seconds)
    return statistics.median(times), result


def interleaved(calls: dict[str, Callable[[], Any]], repeats: int, warmup: int = 0) -> dict[str, list[float]]:
    """Wall seconds of each call, ``repeats`` rounds of one call of each in turn (after ``warmup``
    untimed rounds), so a shared machine's drifting load hits every one alike."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(warmup + max(1, repeats)):
        for name, fn in calls.items():
            seconds, _ = timed(fn)
            if round_ >= warmup:
                times[name].append(seconds)
    return times


def machine() -> str:
    """The processor (or architecture) and the CPU count, for the figures' first line."""
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"


def work_folder(given: Path | None, prefix: str, keep: bool = False) -> Path:
    """``given`` (created if missing), or a new temporary folder, removed when the script exits
    unless ``keep`` (a script that prints its folder for reuse keeps it)."""
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        return given
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    if not keep:
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def print_figures(figures: dict[str, Any]) -> None:
    """A flat dict of figures: one aligned ``key  value`` line each, then all of it as one JSON line."""
    import json

    width = max(map(len, figures), default=0)
    for key, value in figures.items():
        print(f"{key:<{width}}  {value}")
    print(json.dumps(figures))
