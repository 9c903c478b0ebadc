"""`--overwrite` (and `--resume`) take a folder for avfeat's only when its marker file is one
avfeat wrote: a `cache.json`, `config.json` or `meta.json` of another tool (a model folder, an
experiment's notes, a damaged file) is refused in one line, and nothing in the folder is touched."""

import json

import pytest

from avfeat.testing.runner import run_avfeat as avfeat

from .conftest import TINY


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(result, snapshot_before, folder):
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "not an avfeat" in result.stderr, result.stderr
    assert snapshot(folder) == snapshot_before  # nothing removed, nothing rewritten


@pytest.mark.parametrize("marker", ["{}", '{"model_type": "bert"}', '{"audio_model": "x"', "[1, 2]"])
def test_extract_keeps_a_folder_whose_cache_json_is_not_avfeats(corpus, tmp_path, marker):
    out = tmp_path / "u"
    (out / "shards").mkdir(parents=True)
    (out / "cache.json").write_text(marker)
    (out / "shards" / "mine.txt").write_text("keep me")
    before = snapshot(out)
    for flag in ("--overwrite", "--resume"):
        refused(avfeat("extract", corpus, "--out", out, *TINY, "--fps", 5, "--quiet", "--workers", 1, flag), before, out)


def test_train_head_keeps_a_model_folder(cache, tmp_path):
    out = tmp_path / "hf-model"
    (out / "tensorboard").mkdir(parents=True)
    (out / "config.json").write_text(json.dumps({"model_type": "hubert", "hidden_size": 768}))
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    (out / "tensorboard" / "events.out").write_text("runs")
    before = snapshot(out)
    refused(avfeat("train-head", cache, "--out", out, "--steps", 2, "--batch-size", 4, "--workers", 0, "--quiet", "--overwrite"), before, out)


def test_index_keeps_a_folder_whose_meta_json_is_not_avfeats(cache, heads, tmp_path):
    out = tmp_path / "experiment"
    out.mkdir()
    (out / "meta.json").write_text(json.dumps({"author": "me", "notes": "runs of May"}))
    (out / "audio.parquet").write_text("a table of mine")
    (out / "audio.faiss").write_text("an index of mine")
    before = snapshot(out)
    refused(avfeat("index", cache, "--heads", heads, "--out", out, "--quiet", "--overwrite"), before, out)
