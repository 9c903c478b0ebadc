"""Shared fixtures: the real test clips (when present) and one file per bad-input case."""

from __future__ import annotations

from pathlib import Path

import pytest

from avfeat.testing.media import TEST_MEDIA_ENV, make_bad_input_cases, test_media_dir


@pytest.fixture(scope="session")
def media_dir() -> Path:
    """Folder of the real test clips; skips the test when it is absent."""
    folder = test_media_dir()
    if folder is None:
        pytest.skip(f"real test clips not found (set {TEST_MEDIA_ENV} or provide ../shared/media next to the repo)")
    return folder


@pytest.fixture(scope="session")
def bad_inputs(tmp_path_factory) -> dict[str, str]:
    """{case: path} for every bad input; the expected status is ``BAD_INPUT_STATUS[case]``.

    Keyed by case, not status, because two cases (truncated MP4, text file) are ``unreadable``.
    """
    return make_bad_input_cases(tmp_path_factory.mktemp("bad_inputs"))


# `make test-slow` runs on two pytest-xdist workers, one module at a time each (--dist loadscope,
# so a module's fixtures are built once). The longest modules go first, so that no worker is
# left running one of them alone at the end.
LONGEST_FIRST = (
    "tests/test_demo.py",
    "tests/align/test_acceptance.py",
    "tests/index/test_acceptance.py",
    "tests/benchmarks/test_benchmarks.py",
    "tests/extract/test_ray.py",
)


def pytest_collection_modifyitems(items):
    rank = {module: i for i, module in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))  # stable: the rest keep their order


@pytest.fixture
def one_ray_at_a_time(tmp_path_factory):
    """Each Ray test starts a Ray of its own on this machine; two at once (two pytest-xdist
    workers) starve each other's actors of the CPUs they wait for. The workers of one run take
    turns through a lock file in the run's temporary root, which they share. The lock is the
    run's, not the machine's: waiting on another run would count against this test's timeout."""
    import fcntl
    import os

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # each worker's base is a folder of the run's root
    with open(root / "ray.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
