"""Properties: any JSON as an index's meta.json opens to a usable index record or is the one
SearchIndexError naming the folder; any ``ID@S-E`` text parses to a valid span, is not a query
of that form (None), or is the one QueryError, never another exception."""

from __future__ import annotations

import copy
import json
import math
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avfeat.core.errors import QueryError, SearchIndexError
from avfeat.index.query import parse_id_query
from avfeat.index.store import META_FILE, IndexFolder

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
# Where a damaged meta.json differs from a good one: the fields every reader relies on.
_FIELDS = [
    ("format",), ("modalities",), ("modalities", "audio"), ("modalities", "audio", "count"), ("modalities", "audio", "shards"),
    ("modalities", "audio", "shards", 0), ("modalities", "audio", "shards", 0, "file"), ("modalities", "audio", "shards", 0, "begin"),
    ("modalities", "audio", "shards", 0, "end"), ("modalities", "audio", "table"), ("modalities", "visual", "count"),
    ("cache",), ("cache", "fingerprint"), ("heads",), ("heads", "fingerprint"), ("window",), ("hop",), ("dim",), ("geometry",),
]
_PROPS = settings(max_examples=200, deadline=None, derandomize=True)


@pytest.fixture(scope="module")
def good_meta(index):
    return json.loads((index / META_FILE).read_text())


def _set(meta, path, value):
    target = meta
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return meta


def _open(index, meta) -> None:
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder) / "index"
        shutil.copytree(index, folder)
        (folder / META_FILE).write_text(json.dumps(meta))
        try:
            opened = IndexFolder(folder)
        except SearchIndexError as error:
            assert str(folder) in str(error) and "\n" not in str(error)
            return
        for modality in opened.meta["modalities"]:  # what was accepted is usable
            assert opened.count(modality) >= 0
            assert all(isinstance(entry["file"], str) for entry in opened.shards(modality))


@_PROPS
@given(value=_JSON)
def test_any_json_value_as_meta_json_opens_or_is_one_error(index, value):
    _open(index, value)


@_PROPS
@given(field=st.sampled_from(_FIELDS), value=_JSON)
def test_a_good_meta_json_with_any_field_replaced_opens_or_is_one_error(index, good_meta, field, value):
    _open(index, _set(copy.deepcopy(good_meta), field, value))


_TIME = st.one_of(st.text(alphabet="0123456789:.", max_size=9), st.floats(0, 1e6).map(str), st.sampled_from(["1:75", "99:59:59.9", ".", "1e3"]))


@_PROPS
@given(video=st.text(max_size=10), start=_TIME, end=_TIME, extra=st.sampled_from(["", "@", "-", " "]))
def test_any_id_query_parses_to_a_valid_span_or_is_one_error(video, start, end, extra):
    text = f"{video}@{start}-{end}{extra}"
    try:
        parsed = parse_id_query(text)
    except QueryError as error:
        assert "\n" not in str(error)
        return
    if parsed is not None:
        vid, begin, stop = parsed
        assert vid and math.isfinite(begin) and math.isfinite(stop) and 0 <= begin < stop
