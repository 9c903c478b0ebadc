"""What the README and docs/ name exists: every `avfeat.<module>.<name>` they cite imports."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
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


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_cited_name_exists(page):
    cited = sorted({m.rstrip(".") for m in DOTTED.findall(page.read_text())})
    missing = [name for name in cited if not _resolve(name)]
    assert cited and not missing, f"{page.name} cites names that do not exist: {missing}"
