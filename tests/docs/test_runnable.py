"""Every block marked `<!-- runnable -->` in README.md and docs/ runs, as written.

Shell blocks run with bash in an empty folder (a page's blocks in order, in one folder), with
`avfeat` on PATH from the venv. Python blocks run with the venv's Python in a copy of a small
collection, the names the pages use: ``videos/`` (synthetic clips ``video_00000.mp4`` ...,
listed with ``label`` and ``split`` columns in ``videos.csv``), ``cache/``, ``heads/``,
``index/``, ``vectors.parquet`` (`avfeat export`), and the queries ``dog.wav``, ``clip.mp4``
and ``frame.png``; a page's blocks run in order in one interpreter. A running `avfeat serve`
answers at the pages' ``http://localhost:8000`` (the test's free port in its place)."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("**/*.md"))]
MARKED = re.compile(r"<!-- runnable -->\n```(?:bash|sh)\n(.*?)\n```", re.S)
MARKED_PYTHON = re.compile(r"<!-- runnable -->\n```python\n(.*?)\n```", re.S)
PAGES_URL = "http://localhost:8000"


def runnable_blocks(page: Path) -> list[str]:
    return MARKED.findall(page.read_text())


def runnable_python(page: Path) -> list[str]:
    return MARKED_PYTHON.findall(page.read_text())


def test_the_readme_quick_start_is_marked():
    blocks = runnable_blocks(REPO / "README.md")
    assert blocks and any("random:hubert-tiny" in block and "avfeat search" in block for block in blocks)


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if runnable_blocks(p)], ids=lambda p: str(p.relative_to(REPO)))
def test_runnable_blocks_run(page, tmp_path):
    script = "set -euo pipefail\n" + "\n".join(runnable_blocks(page)) + "\n"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{page.name}:\n{script}\nstdout:\n{done.stdout[-2000:]}\nstderr:\n{done.stderr[-2000:]}"
    assert "Traceback" not in done.stderr


def test_python_blocks_are_marked():
    """The pages that teach the Python API mark their blocks, so that they cannot drift."""
    marked = {p.relative_to(REPO).as_posix() for p in PAGES if runnable_python(p)}
    assert {"docs/commands/python.md", "docs/cache-format.md", "docs/how-to/serving.md"} <= marked


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """The folder the Python blocks run in (see the module docstring)."""
    import wave

    import numpy as np
    from PIL import Image

    from avfeat.testing.media import clip_audio, make_clip
    from avfeat.testing.runner import TINY_MODELS, run_avfeat

    root = tmp_path_factory.mktemp("collection")
    run_avfeat("synth", root / "videos", "--videos", 8, "--seconds", 3, "--classes", 2, "--quiet", check=0)
    rows = [f"videos/video_{n:05d}.mp4,{'dog' if n % 2 else 'cat'},{'test' if n >= 6 else 'train'}" for n in range(8)]
    (root / "videos.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    run_avfeat("extract", root / "videos.csv", "--out", root / "cache", *TINY_MODELS, "--fps", 2, "--workers", 1, "--quiet", check=0, threads=1)
    run_avfeat("train-head", root / "cache", "--out", root / "heads", "--window", 1.0, "--dim", 16, "--steps", 4, "--batch-size", 4,
               "--workers", 0, "--quiet", check=0, threads=1)
    run_avfeat("index", root / "cache", "--heads", root / "heads", "--out", root / "index", "--quiet", check=0, threads=1)
    run_avfeat("export", root / "cache", "--heads", root / "heads", "--out", root / "vectors.parquet", "--quiet", check=0, threads=1)
    with wave.open(str(root / "dog.wav"), "wb") as out:
        out.setnchannels(1), out.setsampwidth(2), out.setframerate(16000)
        out.writeframes((clip_audio(2.0) * 32767).astype(np.int16).tobytes())
    make_clip(root / "clip.mp4", seconds=3.0)
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(root / "frame.png")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if runnable_python(p)], ids=lambda p: str(p.relative_to(REPO)))
def test_runnable_python_blocks_run(page, collection, tmp_path):
    import shutil

    from avfeat.testing.servers import serve_index

    folder = tmp_path / "work"
    shutil.copytree(collection, folder)
    code = "\n".join(runnable_python(page))
    with contextlib.ExitStack() as stack:
        if PAGES_URL in code:
            code = code.replace(PAGES_URL, stack.enter_context(serve_index(folder / "index")))
        done = subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, f"{page.name}:\n{code}\nstdout:\n{done.stdout[-2000:]}\nstderr:\n{done.stderr[-3000:]}"
