"""The docs site: the CLI reference is the app's own text, and `mkdocs build --strict` passes."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _gen_cli():
    spec = importlib.util.spec_from_file_location("gen_cli", REPO / "docs" / "gen_cli.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_matches_the_app():
    page = REPO / "docs" / "reference" / "cli.md"
    assert page.read_text() == _gen_cli().render(), "docs/reference/cli.md is stale: run `make docs`"


def test_cli_reference_names_every_command():
    text = (REPO / "docs" / "reference" / "cli.md").read_text()
    for command in ("extract", "train-head", "index", "search", "sync", "serve", "audit", "synth"):
        assert f"## `avfeat {command}`" in text


def test_mkdocs_builds_strictly(tmp_path):
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (it comes with the dev extra: make setup)")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=REPO, capture_output=True, text=True, env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "cli" / "index.html").is_file()
    assert (tmp_path / "site" / "tutorial" / "index.html").is_file()
