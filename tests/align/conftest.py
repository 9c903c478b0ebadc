"""A small synthetic token cache shared by the align tests."""

from __future__ import annotations

import pytest

from avfeat.testing.runner import TINY_MODELS as TINY
from avfeat.testing.recipes import build_cache
from avfeat.testing.runner import run_avfeat as avfeat


@pytest.fixture(scope="session")
def small_cache(tmp_path_factory):
    """8 videos of 3 s at 4 fps: enough for batches of 4 and a validation split."""
    _, cache = build_cache(tmp_path_factory.mktemp("align_small"), videos=8, seconds=3.0, classes=4, fps=4)
    return cache
