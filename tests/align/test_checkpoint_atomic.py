"""Replacing a heads checkpoint is atomic: `train-head --overwrite` keeps the old heads (with
their own config, inside heads.safetensors) until its first save, so a run that dies before
then leaves the old checkpoint loadable; heads files of earlier versions still load."""

import json

import pytest
from safetensors.torch import load_file, save_file

from avfeat.align import checkpoint as ckpt
from avfeat.align.checkpoint import load_checkpoint
from avfeat.align.config import RunOptions, TrainConfig
from avfeat.align.train import Trainer, train
from avfeat.core.errors import CheckpointError

CONFIG = dict(window=1.0, batch_size=3, passes_per_epoch=1, epochs=1, lr=1e-2, val_fraction=0.25, val_windows=3)


class Killed(BaseException):
    """A stand-in for the process dying mid-run."""


def run(cache, out, dim, overwrite=False):
    options = RunOptions(quiet=True, device="cpu", overwrite=overwrite)
    return train(cache, out, TrainConfig(**CONFIG, dim=dim), options, log=lambda _: None)


def kill_training(monkeypatch):
    def train_step(self, *args):
        raise Killed

    monkeypatch.setattr(Trainer, "train_step", train_step)


def kill_between_state_and_heads(monkeypatch):
    def save_heads(*args):
        raise Killed

    monkeypatch.setattr(ckpt, "save_heads", save_heads)


@pytest.mark.parametrize("kill", [kill_training, kill_between_state_and_heads])
def test_an_overwrite_killed_before_its_first_save_leaves_the_old_heads(small_cache, tmp_path, monkeypatch, kill):
    out = tmp_path / "heads"
    run(small_cache, out, dim=16)
    old = load_checkpoint(out)
    assert old.heads.config.dim == old.config.training["dim"] == 16

    with monkeypatch.context() as patch:
        kill(patch)
        with pytest.raises(Killed):
            run(small_cache, out, dim=24, overwrite=True)
    assert json.loads((out / ckpt.CONFIG_FILE).read_text())["training"]["dim"] == 24  # the new run's, already
    kept = load_checkpoint(out)  # still the old heads, with the config they were trained under
    assert kept.fingerprint == old.fingerprint and kept.config == old.config
    assert kept.heads.config.dim == kept.config.training["dim"] == 16

    run(small_cache, out, dim=24, overwrite=True)
    new = load_checkpoint(out)
    assert new.fingerprint != old.fingerprint
    assert new.heads.config.dim == new.config.training["dim"] == 24
    assert new.config.to_dict() == json.loads((out / ckpt.CONFIG_FILE).read_text())


def make_legacy(folder):
    """heads.safetensors as earlier versions wrote it: weights only, config in config.json."""
    save_file(load_file(folder / ckpt.HEADS_FILE), folder / ckpt.HEADS_FILE)
    assert not ckpt.has_embedded_config(folder / ckpt.HEADS_FILE)


def test_a_checkpoint_of_an_earlier_version_loads_and_is_replaced_whole(small_cache, tmp_path, monkeypatch):
    out = tmp_path / "heads"
    run(small_cache, out, dim=16)
    embedded = load_checkpoint(out)
    make_legacy(out)
    legacy = load_checkpoint(out)
    assert legacy.config == embedded.config and legacy.heads.config.dim == 16
    assert all((a == b).all() for a, b in zip(legacy.heads.state_dict().values(), embedded.heads.state_dict().values()))

    # Its heads cannot outlive config.json, which the new run rewrites at once: they go at the
    # start, so a killed run leaves no checkpoint rather than heads with another run's config.
    with monkeypatch.context() as patch:
        kill_training(patch)
        with pytest.raises(Killed):
            run(small_cache, out, dim=24, overwrite=True)
    with pytest.raises(CheckpointError, match="no heads.safetensors"):
        load_checkpoint(out)


def test_the_config_inside_the_heads_file_wins_and_must_fit_them(small_cache, tmp_path):
    out = tmp_path / "heads"
    run(small_cache, out, dim=16)
    config = json.loads((out / ckpt.CONFIG_FILE).read_text())
    (out / ckpt.CONFIG_FILE).write_text(json.dumps({**config, "window": 9.0}))
    assert load_checkpoint(out).window == 1.0

    tensors = load_file(out / ckpt.HEADS_FILE)
    wrong = {**config, "heads": {**config["heads"], "dim": 32}}
    save_file(tensors, out / ckpt.HEADS_FILE, metadata={"config": json.dumps(wrong)})
    with pytest.raises(CheckpointError, match="does not match its config"):
        load_checkpoint(out)
    save_file(tensors, out / ckpt.HEADS_FILE, metadata={"config": "{not json"})
    with pytest.raises(CheckpointError, match="cannot read the config"):
        load_checkpoint(out)
