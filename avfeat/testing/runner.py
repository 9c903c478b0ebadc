"""Running the CLI in tests: in-process (captured output and exit status) or as a process where
the process itself is the subject; and comparing two caches."""

from __future__ import annotations

import contextlib
import os

import numpy as np

# The tiny random backbones every end-to-end test extracts with, computed in float32: `--dtype
# auto` picks bfloat16, int8 or float32 from the CPU it finds, and tests must give the same
# tokens (and so the same quality levels) on every CPU. A test of the other paths names its
# --dtype after these (the last value wins).
TINY_MODELS = ["--audio-model", "random:hubert-tiny", "--visual-model", "random:dinov2-tiny", "--dtype", "float32"]


def assert_same_cache(path, expected_path, ignore: tuple[str, ...] = ()) -> None:
    """Two caches hold the same videos, manifest records (but the fields in ``ignore``) and
    tensors (bit for bit)."""
    from avfeat.data.cache import Cache
    from avfeat.data.manifest import read_manifest

    def snapshot(root):
        cache = Cache(root)
        manifest = read_manifest(root).sort_by("video_id").to_pylist()
        ok = [row["video_id"] for row in manifest if row["status"] == "ok"]
        return manifest, {vid: (cache.audio_tokens(vid), cache.visual_tokens(vid), cache.frame_times(vid)) for vid in ok}

    manifest, tensors = snapshot(path)
    expected_manifest, expected_tensors = snapshot(expected_path)
    differences = [
        (row["video_id"], {key: (row[key], want[key]) for key in row if row[key] != want[key] and key not in ignore})
        for row, want in zip(manifest, expected_manifest)
    ]
    differences = [(vid, fields) for vid, fields in differences if fields]
    assert len(manifest) == len(expected_manifest) and not differences, differences
    assert tensors.keys() == expected_tensors.keys()
    for vid, arrays in tensors.items():
        for got, want in zip(arrays, expected_tensors[vid]):
            np.testing.assert_array_equal(got, want)


def run_avfeat(*args, check: int | None = None, timeout: float = 1200, threads: int | None = None):
    """Run ``avfeat ARGS`` in this process, as a user would from a shell: captured stdout and
    stderr, the exit status (1 with the traceback on stderr for an uncaught exception, as Python
    would give); with ``check``, assert the exit status (showing stderr on failure).

    In-process runs skip the 3-5 s of importing torch, transformers and FAISS again per command;
    where the process itself is the subject (signals, kill -9, locks between processes), use
    ``run_avfeat_process``. ``threads`` caps torch's intra-op threads for the command: small
    kernels run faster and far more steadily so on a shared few-core machine. ``timeout`` is
    honoured by ``run_avfeat_process`` only.
    """
    import io
    import subprocess
    import sys
    import traceback

    from avfeat.cli import main

    argv = [str(arg) for arg in args]
    stdout, stderr = io.StringIO(), io.StringIO()
    code: int | str | None = 0
    saved_argv, sys.argv = sys.argv, ["avfeat", *argv]  # what the command line would hold (--nproc relaunches it)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), torch_threads(threads):
            try:
                main(argv)
            except SystemExit as exit_:
                code = exit_.code
            except Exception:  # what the interpreter does with an uncaught exception
                traceback.print_exc()
                code = 1
    finally:
        sys.argv = saved_argv
    if isinstance(code, str):  # sys.exit("message"): printed, status 1
        stderr.write(code + "\n")
        code = 1
    result = subprocess.CompletedProcess(["avfeat", *argv], code or 0, stdout.getvalue(), stderr.getvalue())
    if check is not None:
        assert result.returncode == check, result.stderr[-3000:]
    return result


def run_avfeat_process(*args, check: int | None = None, timeout: float = 1200, threads: int | None = None):
    """Run ``python -m avfeat ARGS`` in a child process; as ``run_avfeat`` otherwise.

    For tests whose subject is the process: its exit on a signal, a lock held between
    processes, a kill, the interpreter's own output. ``threads`` sets OMP_NUM_THREADS there.
    """
    import subprocess
    import sys

    env = None if threads is None else {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    result = subprocess.run([sys.executable, "-m", "avfeat", *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)
    if check is not None:
        assert result.returncode == check, result.stderr[-3000:]
    return result


@contextlib.contextmanager
def torch_threads(count: int | None):
    """Run the block with ``count`` torch intra-op threads (restored after; None: unchanged).

    The acceptance runs use one: their small kernels run faster so, far more steadily when other
    jobs share a 2-core machine, and the float sums keep one order on every machine.
    """
    if count is None:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def one_line_error(result, *words: str) -> str:
    """Assert a refused command: a non-zero exit, exactly one stderr line starting with
    ``avfeat: error:`` (so no traceback) holding each of ``words``; returns that line."""
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("avfeat: error:"), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]
