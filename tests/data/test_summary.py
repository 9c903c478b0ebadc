"""`avfeat info --json` (``cache_summary``): what a cache holds, with its input table's columns."""

import json

from avfeat.data.synth import make_corpus
from avfeat.testing.runner import TINY_MODELS as TINY
from avfeat.testing.runner import run_avfeat as avfeat


def test_info_json_shows_the_input_tables_metadata(tmp_path):
    truth = make_corpus(tmp_path / "videos", videos=2, seconds=2.0, classes=2, seed=0, size=64).to_pylist()
    rows = [f"{tmp_path / 'videos' / row['path']},{row['class_name']},{split}" for row, split in zip(truth, ("train", "test"))]
    (tmp_path / "table.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    avfeat("extract", tmp_path / "table.csv", "--out", tmp_path / "cache", *TINY, "--fps", 2, "--quiet", "--workers", 1, check=0)

    report = json.loads(avfeat("info", tmp_path / "cache", "--json", check=0).stdout)
    assert report["metadata_columns"] == ["label", "split"]
    shown = {(v["metadata"]["label"], v["metadata"]["split"]) for v in report["video_list"]}
    assert shown == {(row["class_name"], split) for row, split in zip(truth, ("train", "test"))}
