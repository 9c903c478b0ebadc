"""The built wheel installs into a clean venv and works there: help, the serve page's assets, a
tiny extract. Third-party packages come from this venv through a .pth file (paths a .pth adds
are not scanned for further .pth files, so the checkout's editable avfeat stays invisible)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from avfeat.testing.runner import TINY_MODELS

REPO = Path(__file__).resolve().parents[1]


def _run(args, **kwargs):
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, **kwargs)
    assert done.returncode == 0, f"{args}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done.stdout


@pytest.mark.slow
def test_wheel_installs_and_runs_in_a_clean_venv(tmp_path):
    pytest.importorskip("build")
    _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"), str(REPO)])
    wheel, = (tmp_path / "dist").glob("avfeat-*-py3-none-any.whl")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())
    (site / "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    where = _run([str(python), "-c", "import avfeat; print(avfeat.__file__)"], env=env, cwd=tmp_path)
    assert where.strip().startswith(str(site)), where
    avfeat = str(venv / "bin" / "avfeat")
    assert "extract" in _run([avfeat, "--help"], env=env, cwd=tmp_path)
    assert "--port" in _run([avfeat, "serve", "--help"], env=env, cwd=tmp_path)
    assets = ("import importlib.resources as r; w = r.files('avfeat.index') / 'web';"
              "print(all((w / n).read_text() for n in ('index.html', 'app.js', 'style.css')),"
              " bool((r.files('avfeat.index.audit') / 'report.html.j2').read_text()))")
    assert _run([str(python), "-c", assets], env=env, cwd=tmp_path).split() == ["True", "True"]
    metadata = _run([str(python), "-c", "from importlib.metadata import metadata; print(metadata('avfeat').get_all('Provides-Extra'))"], env=env)
    for extra in ("serve", "remote", "ray", "gpu"):
        assert f"'{extra}'" in metadata
    _run([avfeat, "synth", "videos", "--videos", "1", "--seconds", "2", "--quiet"], env=env, cwd=tmp_path)
    out = _run([avfeat, "extract", "videos", "--out", "cache", *TINY_MODELS, "--quiet"], env=env, cwd=tmp_path)
    assert "1 ok" in out
