"""A small synthetic token cache shared by the align tests."""

from __future__ import annotations

import pytest

from avfeat.testing import TINY_MODELS as TINY  # noqa: F401 - imported by the align tests
from avfeat.testing import build_cache
from avfeat.testing import run_avfeat as avfeat  # noqa: F401 - imported by the align tests


@pytest.fixture(scope="session")
def small_cache(tmp_path_factory):
    """8 videos of 3 s at 4 fps: enough for batches of 4 and a validation split."""
    _, cache = build_cache(tmp_path_factory.mktemp("align_small"), videos=8, seconds=3.0, classes=4, fps=4)
    return cache
