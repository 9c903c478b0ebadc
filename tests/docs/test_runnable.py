"""Every shell block marked `<!-- runnable -->` in README.md and docs/ runs, as written, with bash
in an empty folder (a page's blocks in order, in one folder), with `avfeat` on PATH from the venv."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("**/*.md"))]
MARKED = re.compile(r"<!-- runnable -->\n```(?:bash|sh)\n(.*?)\n```", re.S)


def runnable_blocks(page: Path) -> list[str]:
    return MARKED.findall(page.read_text())


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
