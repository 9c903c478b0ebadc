"""What the README and docs/ name exists: every `avfeat.<module>.<name>` they cite imports."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("**/*.md"))]
DOTTED = re.compile(r"\b(avfeat(?:\.[A-Za-z_][A-Za-z0-9_]*)+)")


def _resolve(name: str) -> bool:
    parts = name.split(".")
    for split in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for part in parts[split:]:
            if not hasattr(found, part):
                return False
            found = getattr(found, part)
        return True
    return False


CITING = [page for page in PAGES if DOTTED.search(page.read_text())]


@pytest.mark.parametrize("page", CITING, ids=lambda p: str(p.relative_to(REPO)))
def test_every_cited_name_exists(page):
    cited = sorted({m.rstrip(".") for m in DOTTED.findall(page.read_text())})
    missing = [name for name in cited if not _resolve(name)]
    assert cited and not missing, f"{page.name} cites names that do not exist: {missing}"


def test_readme_reads_in_five_minutes():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; the rest belongs under docs/"


def test_no_install_by_name():
    # avfeat is not on an index: its extras install from the checkout or the built wheel.
    wrong = [str(page.relative_to(REPO)) for page in PAGES if "pip install 'avfeat[" in page.read_text().replace("hint, `pip install 'avfeat[", "")]
    assert not wrong, f"pages that install avfeat by name: {wrong}"
