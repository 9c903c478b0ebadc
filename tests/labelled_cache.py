"""One small labelled synthetic cache and heads, built once per test session and shared by
tests/test_export.py and tests/test_eval_labels.py (a fixture defined in two modules would be
built twice; this memo is built once).

- ``corpus``: 8 videos of 3 s, 4 classes (``ground_truth.parquet`` has each file's class);
- ``cache``: its tokens from the tiny random backbones at 5 fps;
- ``heads``: 20 steps of `avfeat train-head` (enough for the audio side to tell the classes);
- ``labelled``: a copy of ``cache`` whose manifest parts carry the user columns ``label``
  (class name), ``tags`` (a list) and ``score`` (a float), as extract writes an input table's
  columns.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

from avfeat.data.synth import make_corpus
from avfeat.testing.runner import TINY_MODELS as TINY
from avfeat.testing.runner import run_avfeat as avfeat

_built: dict[str, SimpleNamespace] = {}


def add_manifest_columns(cache: Path, columns: dict[str, dict]) -> None:
    """Rewrite each manifest part of ``cache`` with ``columns`` ({name: {video_id: value}})."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for part in sorted((cache / "manifest").glob("part-*.parquet")):
        table = pq.read_table(part)
        ids = table.column("video_id").to_pylist()
        for name, values in columns.items():
            table = table.append_column(name, pa.array([values.get(vid) for vid in ids]))
        pq.write_table(table, part)


def labelled_setup(tmp_path_factory) -> SimpleNamespace:
    if "setup" in _built:
        return _built["setup"]
    import pyarrow.parquet as pq

    from avfeat.data.cache import Cache

    root = tmp_path_factory.mktemp("labelled")
    corpus, cache, heads = root / "corpus", root / "cache", root / "heads"
    make_corpus(corpus, videos=8, seconds=3.0, classes=4, seed=0, size=64)
    avfeat("extract", corpus, "--out", cache, *TINY, "--fps", 5, "--quiet", "--workers", 1, check=0)
    avfeat(
        "train-head", cache, "--out", heads, "--window", 1.0, "--hop", 0.2, "--dim", 32, "--steps", 20,
        "--batch-size", 6, "--seed", 0, "--val-fraction", 0.25, "--workers", 0, "--quiet", check=0,
    )
    truth = {row["path"]: row for row in pq.read_table(corpus / "ground_truth.parquet").to_pylist()}
    records = Cache(cache).records(status="ok")
    # video id → class, through the full path (the ground truth names files in the corpus folder)
    classes = {r.video_id: truth[Path(r.path).name]["class"] for r in records}
    names = {r.video_id: truth[Path(r.path).name]["class_name"] for r in records}
    labelled = root / "labelled"
    shutil.copytree(cache, labelled)
    add_manifest_columns(labelled, {
        "label": names,
        "tags": {vid: [name, "synthetic"] for vid, name in names.items()},
        "score": {vid: float(k) / 2 for k, vid in enumerate(sorted(names))},
    })
    _built["setup"] = SimpleNamespace(corpus=corpus, cache=cache, heads=heads, labelled=labelled, records=records, classes=classes, names=names)
    return _built["setup"]
