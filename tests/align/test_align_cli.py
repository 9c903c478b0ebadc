"""`avfeat train-head` and `avfeat attention-map` through the real command line, bad input included."""

import json
import shutil
from pathlib import Path

import pytest

from avfeat.data.shards import ShardWriter, new_record, open_for_writing

from .conftest import avfeat

TRAIN = ["--window", 1, "--dim", 16, "--batch-size", 3, "--epochs", 2, "--val-fraction", 0.25, "--device", "cpu", "--quiet"]


def one_line_error(result, *fragments):
    """Exit 1, exactly one stderr line starting with 'avfeat: error:', no traceback."""
    assert result.returncode == 1, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("avfeat: error:"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_train_head_then_attention_map(small_cache, tmp_path):
    heads = tmp_path / "heads"
    result = avfeat("train-head", small_cache, "--out", heads, *TRAIN, check=0)
    assert "validation R@1" in result.stdout
    assert {p.name for p in heads.iterdir()} >= {"heads.safetensors", "config.json", "state.safetensors", "metrics.jsonl", "curves.png"}
    assert not list(heads.glob("*.tmp"))
    video_id = json.loads((heads / "config.json").read_text())["split"]["val_videos"][0]
    result = avfeat("attention-map", small_cache, video_id, "--heads", heads, "--time", 0.5, "--out", tmp_path / "map.png", check=0)
    assert (tmp_path / "map.png").stat().st_size > 1000 and result.stderr == ""
    # The video named as a person would: its file's stem, or a near miss that gets suggestions.
    from avfeat.data.cache import Cache

    stem = Path(Cache(small_cache).record(video_id).path).stem
    avfeat("attention-map", small_cache, stem, "--heads", heads, "--time", 0.5, "--out", tmp_path / "stem.png", check=0)
    assert (tmp_path / "stem.png").read_bytes() == (tmp_path / "map.png").read_bytes()
    typo = stem.replace("0", "", 1)  # video_00002 -> video_0002
    one_line_error(avfeat("attention-map", small_cache, typo, "--heads", heads, "--time", 0.5, "--out", tmp_path / "x.png"),
                   f"no video {typo!r}; did you mean {video_id}")


def test_attention_map_without_the_video_file_draws_the_map_alone(small_cache, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(small_cache, cache)
    avfeat("train-head", cache, "--out", tmp_path / "heads", *TRAIN, "--epochs", 1, check=0)
    from avfeat.data.cache import Cache

    record = Cache(cache).records(status="ok")[0]
    try:
        (tmp_path / "gone").mkdir()
        shutil.move(record.path, tmp_path / "gone" / "x.mp4")
        result = avfeat("attention-map", cache, record.video_id, "--heads", tmp_path / "heads", "--time", "0:01", "--out", tmp_path / "map.png", check=0)
    finally:
        shutil.move(tmp_path / "gone" / "x.mp4", record.path)
    assert "is gone; drawing the map alone" in result.stderr and (tmp_path / "map.png").is_file()


def test_existing_output_is_refused_unless_resume_or_overwrite(small_cache, tmp_path):
    heads = tmp_path / "heads"
    avfeat("train-head", small_cache, "--out", heads, *TRAIN, "--epochs", 1, check=0)
    one_line_error(avfeat("train-head", small_cache, "--out", heads, *TRAIN), "already holds an avfeat heads checkpoint", "--resume", "--overwrite")
    avfeat("train-head", small_cache, "--out", heads, *TRAIN, "--overwrite", check=0)
    other = tmp_path / "not_heads"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    one_line_error(avfeat("train-head", small_cache, "--out", other, *TRAIN, "--overwrite"), "not an avfeat heads checkpoint")
    assert (other / "notes.txt").read_text() == "mine"


def test_missing_cache(tmp_path):
    one_line_error(avfeat("train-head", tmp_path / "nope", "--out", tmp_path / "heads", *TRAIN), "does not exist")


def test_cache_without_manifest_parts(small_cache, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(small_cache / "cache.json", cache / "cache.json")
    one_line_error(avfeat("train-head", cache, "--out", tmp_path / "heads", *TRAIN), "no manifest parts")


def test_cache_with_no_ok_videos(small_cache, tmp_path):
    config = json.loads((small_cache / "cache.json").read_text())
    config.pop("avfeat_version")
    layout = open_for_writing(tmp_path / "cache", config)
    with ShardWriter(layout, 0, config["audio_dim"], config["visual_tokens"], config["visual_dim"], attrs={}) as writer:
        writer.add_failure(new_record("a", "/x/a.mp4", 0, 0.0), "no_audio", "no audio stream")
    one_line_error(avfeat("train-head", tmp_path / "cache", "--out", tmp_path / "heads", *TRAIN), "no videos with status ok", "no_audio 1")


def test_window_longer_than_every_video(small_cache, tmp_path):
    result = avfeat("train-head", small_cache, "--out", tmp_path / "heads", *TRAIN, "--window", 30)
    one_line_error(result, "longer than every video")
    assert not (tmp_path / "heads" / "heads.safetensors").exists()


@pytest.mark.parametrize(
    "args, fragment",
    [(["--memory-limit", "lots"], "cannot read the size"), (["--resume", "--overwrite"], "exclude each other")],
)
def test_bad_options(small_cache, tmp_path, args, fragment):
    one_line_error(avfeat("train-head", small_cache, "--out", tmp_path / "heads", *TRAIN, *args), fragment)


def test_an_unknown_aggregation_is_a_usage_error_listing_the_choices(small_cache, tmp_path):
    result = avfeat("train-head", small_cache, "--out", tmp_path / "heads", *TRAIN, "--aggregation", "best")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("avfeat: error:"), result.stderr
    assert "'best' is not one of 'max-mean', 'mean-pool', 'cls'" in lines[0] and not (tmp_path / "heads").exists()


def test_resume_without_a_checkpoint_and_attention_map_of_missing_heads(small_cache, tmp_path):
    (tmp_path / "heads").mkdir()
    (tmp_path / "heads" / "notes.txt").write_text("keep me")  # a folder of something else is never resumed
    one_line_error(avfeat("train-head", small_cache, "--out", tmp_path / "heads", *TRAIN, "--resume"), "heads checkpoint")
    assert [p.name for p in (tmp_path / "heads").iterdir()] == ["notes.txt"]
    shutil.rmtree(tmp_path / "heads")
    one_line_error(avfeat("attention-map", small_cache, "x", "--heads", tmp_path / "heads", "--time", 0), "does not exist")
    one_line_error(avfeat("attention-map", small_cache, "x", "--heads", tmp_path / "heads", "--time", "nan"), "cannot read the time")
    one_line_error(avfeat("attention-map", small_cache, "x", "--heads", tmp_path / "heads", "--time", 0, "--device", "tpu9"), "is not a device")


@pytest.mark.parametrize("make", [False, True])
def test_resume_into_a_missing_or_empty_folder_starts_a_new_checkpoint(small_cache, tmp_path, make):
    heads = tmp_path / "runs" / "heads"
    if make:
        heads.mkdir(parents=True)
    result = avfeat("train-head", small_cache, "--out", heads, *TRAIN, "--epochs", 1, "--resume", check=0)
    assert "wrote" in result.stdout and (heads / "config.json").is_file() and (heads / "heads.safetensors").is_file()
    avfeat("train-head", small_cache, "--out", heads, *TRAIN, "--resume", check=0)  # now it resumes the checkpoint


@pytest.mark.parametrize("args, fragment", [
    (("--window", "inf"), "--window must be a finite number"),
    (("--lr", "nan"), "--lr must be a finite number"),
    (("--temperature", "0"), "--temperature must be a finite number greater than 0"),
    (("--temperature", "-1"), "--temperature must be a finite number greater than 0"),
])
def test_non_finite_options_are_one_line(small_cache, tmp_path, args, fragment):
    one_line_error(avfeat("train-head", small_cache, "--out", tmp_path / "heads", *TRAIN, *args), fragment)


def test_a_diverging_run_stops_with_one_line_and_saves_no_nan_heads(small_cache, tmp_path):
    heads = tmp_path / "heads"
    result = avfeat("train-head", small_cache, "--out", heads, *TRAIN, "--lr", "1e30", "--clip", 0)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    error = result.stderr.strip().splitlines()[-1]  # after the too-short-run warning
    assert error.startswith("avfeat: error: training stopped at step") and "--lr 1e+30 too high with --clip 0" in error
    assert not (heads / "heads.safetensors").exists()  # the epoch that diverged was not saved
