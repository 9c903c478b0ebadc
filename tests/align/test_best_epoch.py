"""heads.safetensors keeps the epoch of the best validation loss, named in config.json and in the
closing line; state.safetensors keeps the last epoch, so a resume continues from there."""

import json

import pytest
import torch
from safetensors.torch import load_file

from avfeat.align.config import RunOptions, TrainConfig
from avfeat.align.epoch_log import best_epoch
from avfeat.align.run import summary
from avfeat.align.train import Trainer, train

CONFIG = TrainConfig(window=1.0, dim=16, batch_size=3, passes_per_epoch=2, epochs=4, val_fraction=0.5, val_windows=3)  # 4 validation videos
VAL_LOSSES = [1.0, 0.5, 0.9, 0.8]  # validation loss rises after epoch 2


@pytest.fixture
def scripted_validation(monkeypatch):
    def validate(self):
        return {"val_loss": VAL_LOSSES[self.epoch - 1]}
    monkeypatch.setattr(Trainer, "validate", validate)
    monkeypatch.setattr("avfeat.align.train.MIN_CHOOSING_VIDEOS", 4)  # small_cache's 8 videos cannot hold out 20


def run(cache, out, **options):
    return train(cache, out, CONFIG, RunOptions(quiet=True, device="cpu", **options), log=lambda _: None)


def test_best_epoch_is_the_best_validation_r1_then_loss_or_the_last():
    assert best_epoch([{"epoch": 1, "val_loss": 2.0}, {"epoch": 2, "val_loss": 1.0}, {"epoch": 3, "val_loss": 1.5}]) == 2
    assert best_epoch([{"epoch": 1, "val_loss": 1.0}, {"epoch": 2, "val_loss": 1.0}]) == 2  # a tie: the later one
    assert best_epoch([{"epoch": 1}, {"epoch": 2}]) == 2  # nothing validated: the last
    assert best_epoch([{"epoch": 1, "val_loss": 1.0}, {"epoch": 2, "val_loss": 2.0}], by_validation=False) == 2
    # Retrieval decides before the loss: the higher validation R@1 wins over a lower loss.
    r1 = lambda a2v, v2a: {"a2v": {"R@1": a2v}, "v2a": {"R@1": v2a}}  # noqa: E731
    assert best_epoch([{"epoch": 1, "val_loss": 1.0, "val": r1(0.5, 0.6)}, {"epoch": 2, "val_loss": 1.2, "val": r1(0.7, 0.6)}]) == 2
    assert best_epoch([{"epoch": 1, "val_loss": 1.0, "val": r1(0.7, 0.6)}, {"epoch": 2, "val_loss": 1.2, "val": r1(0.6, 0.7)}]) == 1


def test_too_few_validation_videos_keep_the_last_epoch(small_cache, tmp_path, scripted_validation):
    # 2 validation videos: their loss compares each window with one negative, too noisy to choose by
    result = train(small_cache, tmp_path / "heads", TrainConfig(**{**CONFIG.__dict__, "val_fraction": 0.25}), RunOptions(quiet=True, device="cpu"), log=lambda _: None)
    assert result.best_epoch == 4 and json.loads((tmp_path / "heads" / "config.json").read_text())["best_epoch"] == 4
    assert summary(tmp_path / "heads", result).endswith("; heads.safetensors: epoch 4, the last")


def test_the_best_validation_epoch_is_kept_and_named(small_cache, tmp_path, scripted_validation):
    result = run(small_cache, tmp_path / "heads")
    two = run(small_cache, tmp_path / "two", stop_after=2)  # the same run, ended after epoch 2
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4] and result.best_epoch == 2
    assert json.loads((tmp_path / "heads" / "config.json").read_text())["best_epoch"] == 2
    kept, after_two = load_file(tmp_path / "heads" / "heads.safetensors"), load_file(tmp_path / "two" / "heads.safetensors")
    assert all(torch.equal(kept[k], after_two[k]) for k in kept)
    assert "; heads.safetensors: epoch 2 (best validation loss 0.5000)" in summary(tmp_path / "heads", result)


def test_a_resume_continues_from_the_last_epoch_and_keeps_the_best(small_cache, tmp_path, scripted_validation):
    full = run(small_cache, tmp_path / "full")
    run(small_cache, tmp_path / "split", stop_after=3)
    rest = run(small_cache, tmp_path / "split", resume=True)
    assert full.losses[-len(rest.losses):] == rest.losses  # continued from epoch 3's state, not the best epoch's
    assert rest.best_epoch == 2 and json.loads((tmp_path / "split" / "config.json").read_text())["best_epoch"] == 2
    kept, full_kept = load_file(tmp_path / "split" / "heads.safetensors"), load_file(tmp_path / "full" / "heads.safetensors")
    assert all(torch.equal(kept[k], full_kept[k]) for k in kept)
