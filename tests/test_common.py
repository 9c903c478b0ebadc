"""The shared helpers: one syntax for sizes and times, one device rule, one output-folder rule,
durable writes."""

import json
import os

import pytest

from avfeat.core.devices import resolve_device
from avfeat.core.io import write_atomic
from avfeat.core.outputs import OutputMode, prepare_output, stamped
from avfeat.core.values import one_line, parse_size, parse_time
from avfeat.core.errors import InputError


@pytest.mark.parametrize("text, value", [("8GB", 8 * 2**30), ("512m", 512 * 2**20), ("1.5g", int(1.5 * 2**30)), ("2GiB", 2 * 2**30),
                                         ("1e9", 10**9), ("1000", 1000), ("0", 0), (" 4 KB ", 4096)])
def test_sizes(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["lots", "-1", "nan", "inf", "1e400", "", "8XB"])
def test_bad_sizes(text):
    with pytest.raises(InputError, match="cannot read the size"):
        parse_size(text)


@pytest.mark.parametrize("text, value", [("90", 90.0), ("1:30", 90.0), ("1:02:03.5", 3723.5), (".5", 0.5), ("0:00:07", 7.0), ("75:00", 4500.0)])
def test_times(text, value):
    assert parse_time(text) == value


@pytest.mark.parametrize("text", ["-1", "1:60", "1:75:00", "nan", "inf", "a", "1:2:3:4", ""])
def test_bad_times(text):
    with pytest.raises(InputError, match="cannot read the time"):
        parse_time(text)


def test_devices():
    assert str(resolve_device("cpu")) == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(InputError, match="is not a device"):
        resolve_device("tpu9")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU"):
            resolve_device("cuda:0")


def test_output_rule(tmp_path):
    out = tmp_path / "out"
    assert prepare_output(out, marker="m.json", kind="thing") is OutputMode.NEW and out.is_dir()
    (out / "m.json").write_text(json.dumps(stamped(out, "thing", ("m.json", "own.bin"), {})))  # as a writer stamps it
    (out / "own.bin").write_text("x")
    (out / "user.txt").write_text("keep")
    with pytest.raises(InputError, match="pass --resume to continue it or --overwrite"):
        prepare_output(out, marker="m.json", kind="thing")
    assert prepare_output(out, marker="m.json", kind="thing", resume=True) is OutputMode.RESUME
    assert prepare_output(out, marker="m.json", kind="thing", overwrite=True, own=("own.bin",)) is OutputMode.OVERWRITE
    assert not (out / "own.bin").exists() and (out / "user.txt").read_text() == "keep"
    other = tmp_path / "other"
    other.mkdir()
    (other / "user.txt").write_text("keep")
    for flags in ({}, {"resume": True}, {"overwrite": True}):
        with pytest.raises(InputError, match="not an avfeat thing"):
            prepare_output(other, marker="m.json", kind="thing", own=("user.txt",), **flags)
    assert (other / "user.txt").read_text() == "keep"
    with pytest.raises(InputError, match="exclude each other"):
        prepare_output(out, marker="m.json", kind="thing", resume=True, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        prepare_output(tmp_path / "file", marker="m.json", kind="thing")


def test_write_atomic_leaves_no_temp_and_replaces(tmp_path):
    target = tmp_path / "a.json"
    write_atomic(target, "one")
    write_atomic(target, b"two")
    assert target.read_text() == "two" and os.listdir(tmp_path) == ["a.json"]


def test_write_atomic_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    import errno

    target = tmp_path / "a.json"
    write_atomic(target, "old")

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, "new")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["a.json"]


def test_one_line():
    assert one_line(ValueError("first\nsecond")) == "first"
    assert one_line(ValueError("")) == "ValueError"
    assert one_line("x" * 400, limit=10) == "xxxxxxx..."
