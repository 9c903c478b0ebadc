"""`avfeat sync` on a silent video: no offset, confidence 0, and `--fix` writes nothing.

The tokens cannot tell silence (HuBERT normalises its input), so the lag curve of a silent
video still has a peak; the decoded sound's level is what says there is nothing to hear."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from avfeat.index.sync import sync_cached
from avfeat.testing.media import clip_frames, make_clip
from avfeat.testing.runner import run_avfeat as avfeat


@pytest.fixture(scope="module")
def silent(tmp_path_factory):
    from avfeat.data.synth_media import write_media

    path = tmp_path_factory.mktemp("silent") / "silent.mp4"
    write_media(path, clip_frames(3.0), 25, np.zeros(3 * 16000, np.float32), 16000)
    return path


def test_sync_of_a_silent_video_says_silent_with_no_offset_and_fixes_nothing(heads, silent, tmp_path):
    fixed = tmp_path / "fixed.mp4"
    result = avfeat("sync", silent, "--heads", heads, "--max-offset", 1.0, "--json", "--fix", fixed, "--min-confidence", 0, check=3)
    assert json.loads(result.stdout) == {"offset": None, "confidence": 0.0, "silent": True}
    assert result.returncode == 3 and not fixed.exists()
    assert "silent" in result.stderr and "Traceback" not in result.stderr
    text = avfeat("sync", silent, "--heads", heads, "--max-offset", 1.0, "--quiet")
    assert text.stdout.strip().splitlines() == ["silent: no offset (the sound is below -60 dBFS), confidence 0.00"]


def test_sync_of_several_videos_gives_the_silent_one_its_own_line(heads, silent, tmp_path):
    sound = make_clip(tmp_path / "sound.mp4", seconds=3.0)
    result = avfeat("sync", silent, sound, "--heads", heads, "--max-offset", 1.0, "--quiet", "--out", tmp_path / "t.jsonl")
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3
    quiet = [line for line in lines if line.endswith("silent.mp4")]
    assert len(quiet) == 1 and quiet[0].split()[:3] == ["-", "0.00", "silent"], lines
    rows = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert [(r["offset"], r["confidence"]) for r in rows if r["video"].endswith("silent.mp4")] == [(None, 0.0)]


def test_a_cached_video_recorded_as_silent_is_not_synchronised():
    # The cache's manifest records the level (-120 dBFS for digital silence): no tokens are read.
    cache = SimpleNamespace(ok_record=lambda video_id: SimpleNamespace(audio_level=-120.0))
    result = sync_cached(cache, "v", heads=None)
    assert result.silent and result.offset is None and result.confidence == 0.0
    assert result.to_dict() == {"offset": None, "confidence": 0.0, "silent": True}
