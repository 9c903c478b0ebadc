"""A user's ``split`` column (input-table metadata) decides what train-head trains and validates
on and what eval measures: train on train, validate on val, never train on test."""

import json
import shutil

import pytest

from avfeat.core.errors import InputError
from avfeat.data.cache import Cache
from avfeat.testing.runner import run_avfeat as avfeat
from tests.labelled_cache import add_manifest_columns

OPTIONS = ["--window", 1, "--dim", 16, "--batch-size", 3, "--epochs", 1, "--device", "cpu"]


@pytest.fixture(scope="module")
def split_cache(small_cache, tmp_path_factory):
    """small_cache's 8 videos with a split column: 4 train, 2 validation (two spellings), 2 test."""
    cache = tmp_path_factory.mktemp("split") / "cache"
    shutil.copytree(small_cache, cache)
    ids = sorted(r.video_id for r in Cache(cache).records(status="ok"))
    names = ["train", "Train", "train", "train", "val", "validation", "test", "test"]
    add_manifest_columns(cache, {"split": dict(zip(ids, names))})
    return cache, {"train": ids[:4], "val": ids[4:6], "test": ids[6:]}


def test_train_head_trains_on_train_validates_on_val_and_never_sees_test(split_cache, tmp_path):
    cache, groups = split_cache
    result = avfeat("train-head", cache, "--out", tmp_path / "heads", *OPTIONS, check=0)
    assert "note: split from the input table's split column: 4 train, 2 validation, 2 test videos (never trained on)" in result.stderr.splitlines()
    split = json.loads((tmp_path / "heads" / "config.json").read_text())["split"]
    assert split["val_videos"] == groups["val"] and split["test_videos"] == groups["test"] and split["source"] == "split column"
    assert "training videos" in result.stderr and "over 4 training videos" in result.stderr


def test_eval_measures_the_test_videos_and_says_so(split_cache, tmp_path):
    cache, groups = split_cache
    avfeat("train-head", cache, "--out", tmp_path / "heads", *OPTIONS, "--quiet", check=0)
    report = json.loads(avfeat("eval", cache, "--heads", tmp_path / "heads", "--json", "--quiet", check=0).stdout)
    assert report["held_out_videos"] == 2 and report["held_out_from"] == "test videos of the input table's split column"
    lines = avfeat("eval", cache, "--heads", tmp_path / "heads", "--quiet", check=0).stdout.splitlines()
    assert "held out         2 test videos of the input table's split column" in lines


def test_eval_without_a_split_column_uses_the_validation_videos(small_cache, tmp_path):
    avfeat("train-head", small_cache, "--out", tmp_path / "heads", *OPTIONS, "--val-fraction", 0.25, "--quiet", check=0)
    report = json.loads(avfeat("eval", small_cache, "--heads", tmp_path / "heads", "--json", "--quiet", check=0).stdout)
    assert report["held_out_videos"] == 2 and report["held_out_from"] == "the checkpoint's validation videos"


def test_an_unknown_split_value_is_one_line(small_cache, tmp_path):
    from avfeat.align.data import choose_split

    cache = tmp_path / "cache"
    shutil.copytree(small_cache, cache)
    ids = sorted(r.video_id for r in Cache(cache).records(status="ok"))
    add_manifest_columns(cache, {"split": {vid: "train" if i else "holdout" for i, vid in enumerate(ids)}})
    with pytest.raises(InputError, match=f"video {ids[0]} has split 'holdout' in the input table's split column: use train, val, validation or test"):
        choose_split(Cache(cache), ids, 0.1, 0)
