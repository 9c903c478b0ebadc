"""Non-finite and out-of-range options are one line and exit 1 before anything loads or runs."""

import pytest

from avfeat.testing.runner import run_avfeat as avfeat


@pytest.mark.parametrize("args, message", [
    (("extract", "in", "--out", "c", "--fps", "inf"), "--fps must be a finite number"),
    (("extract", "in", "--out", "c", "--fps", "nan"), "--fps must be a finite number"),
    (("index", "c", "--heads", "h", "--out", "i", "--hop", "-1"), "--hop must be a finite number greater than 0"),
    (("index", "c", "--heads", "h", "--out", "i", "--window", "nan"), "--window must be a finite number"),
    (("index", "c", "--heads", "h", "--out", "i", "--memory-budget", "nan"), "cannot read the size"),
    (("sync", "v.mp4", "--heads", "h", "--max-offset", "nan"), "--max-offset must be a finite number"),
    (("sync", "v.mp4", "--heads", "h", "--device", "cuda:7x"), "is not a device"),
])
def test_bad_numbers_are_refused_first(tmp_path, args, message):
    result = avfeat(*args)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("avfeat: error:") and message in lines[0], result.stderr
