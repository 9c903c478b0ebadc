"""`avfeat train-head` with no training options learns; a run too short to learn says so.

The corpus is the one where the fixed defaults failed (issue 10): 80 synthetic videos of 4 s,
8 classes, the tiny random backbones at 2 fps. B = 64, one pass per epoch and 10 epochs made
10 optimizer steps there (held-out class R@1 0.25 sound → picture). The schedule sized to the
collection makes 200 steps of B = 32 (never below 32 when there are 32 training videos).
"""

import json

import pytest

from avfeat.align import schedule
from avfeat.testing.recipes import align_class_recall, build_cache

from .conftest import avfeat

DEFAULTS_CORPUS = dict(videos=80, seconds=4.0, classes=8, fps=2, size=224)  # `avfeat synth` defaults: 224 px


@pytest.mark.acceptance
def test_train_head_with_no_options_reaches_class_r1_of_0_9(tmp_path):
    corpus, cache = build_cache(tmp_path, **DEFAULTS_CORPUS, seed=0, threads=1)
    heads = tmp_path / "heads"
    result = avfeat("train-head", cache, "--out", heads, "--quiet", "--device", "cpu", check=0, threads=1)
    # the one warning: 8 videos held out (10%); the batch (32) and the schedule need none
    assert [line for line in result.stderr.splitlines() if "warning" in line] == [
        "avfeat: warning: only 8 videos held out for validation (fewer than 20): their figures are noisy and the last epoch is kept, "
        "not the best; raise --val-fraction or add videos"], result.stderr
    training = json.loads((heads / "config.json").read_text())["training"]  # the resolved schedule, for --resume and eval
    assert (training["batch_size"], training["passes_per_epoch"], training["epochs"], training["steps"]) == (32, 10, 10, None)
    assert json.loads((heads / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 200
    a2v, v2a, windows = align_class_recall(corpus, cache, heads)
    assert windows == 32  # 8 held-out videos x 4 windows
    assert a2v >= 0.9 and v2a >= 0.9, (a2v, v2a)


def test_a_run_too_short_to_learn_warns_in_one_line(small_cache, tmp_path):
    short = ["--window", 1, "--dim", 16, "--batch-size", 3, "--epochs", 1, "--passes-per-epoch", 1, "--val-fraction", 0.25]
    result = avfeat("train-head", small_cache, "--out", tmp_path / "short", *short, "--device", "cpu", "--quiet", check=0)
    lines = result.stderr.strip().splitlines()  # the 2 videos held out are warned about too, in their own line
    assert len(lines) == 2 and lines[0].startswith("avfeat: warning: only 2 videos held out"), result.stderr
    assert lines[1].startswith("avfeat: warning: this run is too short to learn: 2 optimizer steps"), result.stderr


def test_the_schedule_fills_in_only_what_is_unset():
    # 72 training videos holding 144 windows end to end (4 s videos, 2 s windows)
    assert [schedule.auto_batch_size(n) for n in (6, 72, 160, 1000)] == [6, 32, 32, 64]  # never below min(32, videos)
    assert schedule.auto_batch_size(72, world_size=3) == 30
    auto = schedule.plan_schedule(72, 144, 8)
    assert (auto.passes_per_epoch, auto.epochs, auto.total_steps) == (3, 10, 270)  # 2 passes cover the windows; 200 steps at least
    big = schedule.plan_schedule(1000, 300_000, 64)  # an epoch covers the windows: 313 passes of 15 steps
    assert (big.passes_per_epoch, big.epochs, big.total_steps) == (313, 10, 46_950)
    assert schedule.plan_schedule(72, 144, 8, passes_per_epoch=1).epochs == 23  # 200 steps at least
    given = schedule.plan_schedule(72, 144, 64, passes_per_epoch=1, epochs=10)  # the old fixed defaults: kept as given
    assert (given.passes_per_epoch, given.epochs, given.total_steps) == (1, 10, 10)
    assert "10 optimizer steps of 64 windows" in schedule.short_run_warning(given, 144)
    assert schedule.plan_schedule(72, 144, 8, epochs=2).total_steps == 36  # epochs given: passes cover the windows
    steps = schedule.plan_schedule(72, 144, 8, steps=50)
    assert (steps.total_steps, steps.epochs) == (50, 3)  # epochs of 2 passes (18 steps), the last one partial
    assert schedule.short_run_warning(schedule.plan_schedule(72, 144, 8, steps=120), 144) is None
    # enough steps, but fewer windows drawn than the videos hold
    assert "drawing 6400 windows of the 300000" in schedule.short_run_warning(schedule.plan_schedule(1000, 300_000, 64, steps=100), 300_000)


def test_an_automatic_schedule_is_stored_resolved_and_resumed(small_cache, tmp_path):
    from avfeat.align.config import RunOptions, TrainConfig
    from avfeat.align.train import train
    from avfeat.testing.runner import torch_threads

    config = TrainConfig(window=1.0, dim=16, val_fraction=0.25)  # batch size, passes and epochs left to the schedule
    with torch_threads(1):
        first = train(small_cache, tmp_path / "heads", config, RunOptions(quiet=True, device="cpu", stop_after=2), log=lambda _: None)
        stored = json.loads((tmp_path / "heads" / "config.json").read_text())["training"]
        # the resumed run takes the resolved values from config.json, whatever it is given
        rest = train(small_cache, tmp_path / "heads", TrainConfig(batch_size=3, epochs=1), RunOptions(quiet=True, device="cpu", resume=True), log=lambda _: None)
    assert (stored["batch_size"], stored["passes_per_epoch"], stored["epochs"]) == (6, 20, 10)  # 6 training videos: 1 step per pass
    # left to the schedule, the run is long enough to learn: the one warning is the small batch the 6 videos force
    assert [line.split(":")[0] for line in first.warnings] == ["batch size 6, below 32", "only 2 videos held out for validation (fewer than 20)"] and rest.warnings == []
    assert len(first.losses) == 2 * 20 and len(first.losses) + len(rest.losses) == 200 >= schedule.MIN_STEPS
    assert json.loads((tmp_path / "heads" / "config.json").read_text())["training"] == stored


def test_the_automatic_batch_is_never_below_32_or_the_training_videos():
    # 31 training videos once gave B = 2: one negative per positive
    assert [schedule.auto_batch_size(n) for n in (2, 5, 31, 32, 72, 255, 256, 512)] == [2, 5, 31, 32, 32, 32, 32, 64]
    assert schedule.auto_batch_size(31, world_size=2) == 30 and schedule.auto_batch_size(72, world_size=4) == 32
    auto = schedule.plan_schedule(72, 144, 32)  # 2 steps per pass: the schedule adds passes to reach 200 steps
    assert (auto.passes_per_epoch, auto.epochs, auto.total_steps) == (10, 10, 200)
    assert schedule.short_run_warning(auto, 144) is None


def test_a_collection_that_forces_the_batch_below_32_says_so(small_cache, tmp_path):
    result = avfeat("train-head", small_cache, "--out", tmp_path / "heads", "--window", 1, "--dim", 16, "--epochs", 1, "--val-fraction", 0.25,
                    "--device", "cpu", "--quiet", check=0)
    lines = [line for line in result.stderr.splitlines() if "batch size" in line]
    assert lines == ["avfeat: warning: batch size 6, below 32: only 6 training videos can hold a 1 s window (a batch holds distinct videos), "
                     "so each positive has 5 negatives"], result.stderr
    assert json.loads((tmp_path / "heads" / "config.json").read_text())["training"]["batch_size"] == 6
    given = avfeat("train-head", small_cache, "--out", tmp_path / "given", "--window", 1, "--dim", 16, "--epochs", 1, "--batch-size", 4,
                   "--val-fraction", 0.25, "--device", "cpu", "--quiet", check=0)
    assert "batch size" not in given.stderr  # a batch size asked for is not remarked on


def test_a_held_out_set_under_20_videos_warns_once(small_cache, tmp_path):
    options = ["--window", 1, "--dim", 16, "--epochs", 1, "--batch-size", 4, "--device", "cpu", "--quiet"]
    result = avfeat("train-head", small_cache, "--out", tmp_path / "heads", *options, "--val-fraction", 0.25, check=0)
    lines = [line for line in result.stderr.splitlines() if "held out" in line]
    assert lines == ["avfeat: warning: only 2 videos held out for validation (fewer than 20): their figures are noisy "
                     "and the last epoch is kept, not the best; raise --val-fraction or add videos"], result.stderr
    resumed = avfeat("train-head", small_cache, "--out", tmp_path / "heads", "--resume", "--quiet", "--device", "cpu", check=0)
    assert "held out" not in resumed.stderr  # said once, when the split is made
    none = avfeat("train-head", small_cache, "--out", tmp_path / "none", *options, "--val-fraction", 0, check=0)
    assert "held out" not in none.stderr  # no validation asked for


def test_temporal_negatives_are_on_when_the_videos_are_long_enough(small_cache, tmp_path):
    options = ["--dim", 16, "--epochs", 1, "--batch-size", 4, "--val-fraction", 0.25, "--device", "cpu"]

    def trained(name, *flags):
        result = avfeat("train-head", small_cache, "--out", tmp_path / name, *options, *flags, check=0)
        return json.loads((tmp_path / name / "config.json").read_text())["training"]["temporal_negatives"], result.stderr

    on, stderr = trained("on", "--window", 1)  # 3 s videos hold 1 s windows 1 s apart
    assert on is True and "note: temporal negatives on: 6 of 6 training videos last 2 s (window + --min-shift) or more" in stderr, stderr
    off, stderr = trained("off", "--window", 2.5)  # 3.5 s needed
    assert off is False and "note: temporal negatives off: only 0 of 6 training videos last 3.5 s (window + --min-shift) or more" in stderr, stderr
    assert trained("asked", "--window", 1, "--no-temporal-negatives")[0] is False
    assert trained("forced", "--window", 2.5, "--temporal-negatives")[0] is True
