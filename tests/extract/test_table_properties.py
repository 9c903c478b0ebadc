"""Property: reading any input table (CSV, JSONL, Parquet) gives valid typed inputs or the one
InputError line, never another exception."""

import csv
import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from avfeat.core.errors import InputError
from avfeat.extract.inputs import list_inputs

_TIMES = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.text(max_size=6), st.integers(-10, 10**12))
_IDS = st.one_of(st.none(), st.text(max_size=12), st.just("a\u202eb"), st.just("x" * 300))
_ROWS = st.lists(st.fixed_dictionaries({"path": st.sampled_from(["a.mp4", "b.mp4", ""]), "id": _IDS, "start": _TIMES, "end": _TIMES}), max_size=4)


def _write(folder, kind, rows):
    path = folder / f"t.{kind}"
    if kind == "jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif kind == "csv":
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, ["path", "id", "start", "end"])
            writer.writeheader()
            writer.writerows(rows)
    else:
        columns = {name: [None if row[name] is None else str(row[name]) for row in rows] for name in ("path", "id", "start", "end")}
        pq.write_table(pa.table(columns, schema=pa.schema([(name, pa.string()) for name in columns])), path)
    return path


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=_ROWS, kind=st.sampled_from(["csv", "jsonl", "parquet"]))
def test_any_table_reads_to_valid_inputs_or_one_input_error(tmp_path, rows, kind):
    try:
        items = list_inputs(str(_write(tmp_path, kind, rows)))
    except InputError as error:
        assert len(str(error).splitlines()) <= 1
        return
    for item in items:
        for value in (item.start, item.end):
            assert value is None or (isinstance(value, float) and math.isfinite(value) and value >= 0)
        if item.start is not None and item.end is not None:
            assert item.end > item.start
        assert item.user_id is None or (item.user_id.isprintable() and 0 < len(item.user_id) <= 256)
