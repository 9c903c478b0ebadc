"""The audit against ground truth: a synthetic corpus with each kind of defect (`synth
--corrupt`), heads trained on it as a user would, then `avfeat audit`, its repair and training
without the doubtful videos."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from avfeat.extract.media import decode_audio
from avfeat.testing.runner import TINY_MODELS
from avfeat.testing.runner import run_avfeat as avfeat

SHIFT_TOLERANCE = 0.2  # one step

pytestmark = pytest.mark.acceptance  # quality levels of the audit (make test-isa runs them under other CPU kernels)


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit_defects")
    # 64 videos, half of them defective: 8 of each kind against 32 clean ones. With 4 of each
    # (32 videos), the calibrations' fits on so few videos moved with the seed and the CPU's
    # kernels: over seeds 0-3 the swaps' median p_belongs spanned 0.02-0.59 and the shifted
    # tracks' 0.50-0.99; with 8 of each, 0.00-0.16 and 0.83-1.00 on the same seeds.
    avfeat("synth", root / "corpus", "--videos", 64, "--seconds", 6, "--classes", 4, "--size", 64, "--corrupt", 0.5, "--quiet", check=0)
    avfeat("extract", root / "corpus", "--out", root / "cache", *TINY_MODELS, "--fps", 5, "--workers", 1, "--quiet", check=0)
    avfeat("train-head", root / "cache", "--out", root / "heads", "--window", 1.5, "--dim", 64, "--batch-size", 16, "--steps", 150,
           "--temporal-negatives", "--min-shift", 0.4, "--workers", 0, "--quiet", check=0)
    avfeat("audit", root / "cache", "--heads", root / "heads", "--out", root / "audit.parquet", "--quiet", check=0)
    truth = {row["path"]: row for row in pq.read_table(root / "corpus" / "ground_truth.parquet").to_pylist()}
    rows = pq.read_table(root / "audit.parquet").to_pylist()
    for row in rows:
        row["truth"] = truth[os.path.basename(row["path"])]
        row["defect"] = row["truth"]["defect"] or "clean"
    return root, rows


def of(rows, defect, column):
    return np.array([row[column] for row in rows if row["defect"] == defect], dtype=float)


@pytest.mark.parametrize("defect", ["swap", "overlay", "silence", "offset"])
def test_each_defect_scores_below_the_clean_videos(audited, defect):
    _, rows = audited
    clean, bad = of(rows, "clean", "correspondence"), of(rows, defect, "correspondence")
    assert len(clean) == 32 and len(bad) == 8
    auc = (bad[:, None] < clean[None, :]).mean()  # share of (defective, clean) pairs ranked right
    assert auc >= 0.8, (defect, bad, np.sort(clean))
    assert np.median(of(rows, "clean", "p_match")) > 0.5
    if defect != "overlay":  # the own sound still plays under a foreign one: with 32 videos it can still pass as matching
        assert np.median(of(rows, defect, "p_match")) < 0.5


def test_foreign_and_silent_tracks_do_not_belong_and_have_no_offset_to_trust(audited):
    _, rows = audited
    for defect in ("swap", "silence"):
        assert np.median(of(rows, defect, "p_belongs")) < 0.5 and np.median(of(rows, defect, "p_sync")) < 0.5, defect
    # A shifted track is the video's own sound: it belongs, only not as it is timed.
    assert np.median(of(rows, "offset", "p_belongs")) > 0.5


def test_silence_is_flagged_from_the_decoded_level(audited):
    _, rows = audited
    assert [row["defect"] for row in rows if row["silent"]] == ["silence"] * 8
    assert not any(row["static"] for row in rows)  # every video shows its objects come and go


def test_shifted_tracks_are_found_and_fixed_back_into_sync(audited):
    root, rows = audited
    shifted = [row for row in rows if row["defect"] == "offset"]
    right = [row for row in shifted if abs(row["offset"] - row["truth"]["offset"]) <= SHIFT_TOLERANCE]
    assert len(right) >= 2, [(row["offset"], row["truth"]["offset"]) for row in shifted]
    fixed = root / "fixed"
    result = avfeat("audit", root / "cache", "--heads", root / "heads", "--out", root / "audit.parquet", "--fix-dir", fixed,
                    "--min-confidence", 0.5, "--quiet", check=0)
    assert "fixed" in result.stdout
    made = {path.stem: path for path in fixed.iterdir()}
    by_id = {row["video_id"]: row for row in rows}
    assert made and all(by_id[name]["p_sync"] >= 0.5 for name in made)
    # Each copy's sound is its original's from the estimated offset on: the remux moves packets,
    # it does not re-encode or drift. Of ±80 samples, the best lines up within a millisecond (16
    # samples, a twentieth of an audio token; a delayed track lands 12 samples late).
    for name, path in made.items():
        original, original_start = decode_audio(by_id[name]["path"], 16000)
        copy, copy_start = decode_audio(path, 16000)
        first = round((copy_start - original_start + by_id[name]["offset"]) * 16000)  # original's sample at the copy's first
        middle = copy[1600:-1600]  # the codec's priming and the cut ends aside
        lines_up = [float(np.dot(middle, original[first + 1600 + lag : first + 1600 + lag + len(middle)])) for lag in range(-80, 81)]
        assert abs(int(np.argmax(lines_up)) - 80) <= 16 and max(lines_up) > 0.99 * float(np.dot(middle, middle)), name
    # The copies of right estimates sync back to 0. Not every one: the copy's sound is the same
    # but its backbone tokens are not (the tiny random HuBERT mixes the whole track into each
    # token: the copy's tokens have a cosine of about 0.45 with the original's at the same
    # instants), and with events of one class recurring every ~1.1 s a lag one period away can
    # win. Over 16 corpora 9 of 112 copies came out more than a step off, so two-thirds is the level.
    synced = avfeat("sync", *made.values(), "--heads", root / "heads", "--json", "--quiet", check=0)
    after = []
    for line in synced.stdout.splitlines():
        entry = json.loads(line)
        row = by_id[os.path.splitext(os.path.basename(entry["video"]))[0]]
        if abs(row["offset"] - row["truth"]["offset"]) <= SHIFT_TOLERANCE:  # the estimate was right: the copy is in sync
            after.append(abs(entry["offset"]))
    assert len(after) >= 2 and np.mean(np.array(after) <= SHIFT_TOLERANCE) >= 2 / 3, after


def test_training_can_leave_out_the_videos_the_audit_doubts(audited):
    root, rows = audited
    result = avfeat("train-head", root / "cache", "--out", root / "kept", "--exclude", root / "audit.parquet", "--window", 1.5,
                    "--dim", 32, "--steps", 5, "--batch-size", 8, "--workers", 0, check=0)
    doubted = sorted(row["video_id"] for row in rows if row["p_match"] < 0.5)
    config = json.loads((root / "kept" / "config.json").read_text())
    assert config["training"]["exclude"]["excluded"] == doubted
    assert f"excluded {len(doubted)} of {len(rows)} videos" in result.stderr
    # Most foreign and silent tracks are doubted, not each one: heads trained on the corpus
    # learn some of its swapped pairs too. Over 6 corpora (seeds, 150 and 300 steps) 0-4 of the
    # 16 went undoubted on 5 of them, so the level is 12 of 16.
    foreign_or_silent = {row["video_id"] for row in rows if row["defect"] in ("swap", "silence")}
    assert len(foreign_or_silent & set(doubted)) >= 12, sorted(foreign_or_silent - set(doubted))
