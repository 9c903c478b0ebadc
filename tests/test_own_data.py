"""A user's own corpus end to end: a VGGSound-style CSV of 20 labelled segments cut from 5 long
videos goes through extract → train-head → index → search → eval, and the labels follow."""

import json

import pyarrow.parquet as pq
import pytest

from avfeat.data.cache import Cache
from avfeat.data.synth import make_corpus
from avfeat.testing.runner import TINY_MODELS as TINY
from avfeat.testing.runner import run_avfeat as avfeat

pytestmark = pytest.mark.slow


def test_segments_with_labels_through_every_stage(tmp_path):
    videos = tmp_path / "videos"
    truth = make_corpus(videos, videos=5, seconds=40.0, classes=5, seed=3, size=64).to_pylist()
    rows = []
    for row in truth:
        ytid = row["path"].removesuffix(".mp4")
        for start in (0, 10, 20, 30):
            rows.append(f"{ytid},{start},{row['class_name']},{'test' if start == 30 else 'train'}")
    (tmp_path / "vggsound.csv").write_text("\n".join(rows) + "\n")

    cache, heads, index = tmp_path / "cache", tmp_path / "heads", tmp_path / "index"
    avfeat("extract", tmp_path / "vggsound.csv", "--layout", "vggsound", "--media-dir", videos, "--out", cache,
           *TINY, "--fps", 2, "--quiet", "--workers", 1, check=0)
    records = Cache(cache).records()
    assert len(records) == 20 and {r.status for r in records} == {"ok"}
    assert {r.metadata["label"] for r in records} == {row["class_name"] for row in truth}

    avfeat("train-head", cache, "--out", heads, "--window", 2.0, "--dim", 32, "--steps", 40, "--batch-size", 10,
           "--val-fraction", 0.2, "--workers", 0, "--quiet", check=0)
    avfeat("index", cache, "--heads", heads, "--out", index, "--quiet", check=0)
    for modality in ("audio", "visual"):
        table = pq.read_table(next(index.glob(f"{modality}.*.parquet")))
        assert {"label", "split"} <= set(table.column_names)

    query = f"{records[0].video_id}@{records[0].segment_start + 1:g}-{records[0].segment_start + 3:g}"
    hits = json.loads(avfeat("search", index, query, "-k", 5, "--json", check=0).stdout)
    assert hits and all(hit["metadata"]["label"] for hit in hits)
    shown = avfeat("search", index, query, "-k", 3, "--where", "split=test", check=0).stdout
    assert "label=" in shown and "split=test" in shown and "split=train" not in shown

    report = json.loads(avfeat("eval", cache, "--heads", heads, "--label-column", "label", "--folds", 4, "--json", check=0).stdout)
    scores = report["classification"]["video"]["audio"]
    assert 0.0 <= scores["knn"] <= 1.0 and 0.0 <= scores["linear_probe"] <= 1.0
    assert report["labels"]["videos"] == 20

    (videos).rename(tmp_path / "moved")  # the corpus moves: nothing is extracted again
    result = avfeat("extract", tmp_path / "vggsound.csv", "--layout", "vggsound", "--media-dir", tmp_path / "moved",
                    "--out", cache, *TINY, "--fps", 2, "--quiet", "--workers", 1, "--resume", check=0)
    assert "0 processed now, 20 already" in result.stdout
