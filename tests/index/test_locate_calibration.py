"""Locate's calibration is kept with the index: a later process reuses it rather than
calibrating again, and a changed index calibrates anew."""

from __future__ import annotations

import shutil

import pytest

from avfeat.index.calibration import CALIBRATION_FILE
from avfeat.index.search import Searcher


@pytest.fixture
def own_index(index, tmp_path):
    copy = tmp_path / "index"
    shutil.copytree(index, copy)
    (copy / CALIBRATION_FILE).unlink(missing_ok=True)
    return copy


def _refused(*args, **kwargs):
    raise AssertionError("calibrated again")


def test_a_second_searcher_reuses_the_stored_calibration(own_index, monkeypatch):
    first = Searcher(own_index).locate_threshold(["audio", "visual"], 1.7)
    assert (own_index / CALIBRATION_FILE).is_file()
    second = Searcher(own_index)
    monkeypatch.setattr(second, "_locate", _refused)
    assert second.locate_threshold(["visual", "audio"], 2.0) == first  # same sides, same 2 s length


def test_another_version_of_the_index_calibrates_again(own_index, monkeypatch):
    Searcher(own_index).locate_threshold(["audio"], 1.0)
    changed = Searcher(own_index)
    changed.meta = {**changed.meta, "written": "later"}  # as after `avfeat index --update`: another meta.json
    calls = []
    locate = changed._locate
    monkeypatch.setattr(changed, "_locate", lambda *a, **k: calls.append(1) or locate(*a, **k))
    changed.locate_threshold(["audio"], 1.0)
    assert calls


def test_a_damaged_calibration_file_is_calibrated_again(own_index):
    expected = Searcher(own_index).locate_threshold(["audio"], 1.0)
    (own_index / CALIBRATION_FILE).write_text("{not json")
    assert Searcher(own_index).locate_threshold(["audio"], 1.0) == expected
