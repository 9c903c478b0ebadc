"""Output file names near the file system's limit (255 bytes on Linux): a name avfeat derives
from a video id is shortened with a stable hash; a user-named output whose name cannot exist
is one line before any work; a name that fits is written, temp files and all."""

from __future__ import annotations

import os

import pytest

from avfeat.core.io import fitted_name, name_max
from avfeat.data.audit_table import AuditRow
from avfeat.index.audit.fix import fix_videos
from avfeat.testing.runner import one_line_error
from avfeat.testing.runner import run_avfeat as avfeat

LONG = "v" * 300  # a video id longer than any file name


def near_limit(folder, suffix: str) -> str:
    """A name of exactly the folder's limit, ending in ``suffix``: it fits, its temp names would not."""
    return "n" * (name_max(folder) - len(suffix)) + suffix


def test_fitted_names_fit_are_stable_and_keep_the_suffix(tmp_path):
    assert fitted_name("clip", tmp_path, ".mp4") == "clip.mp4"
    name = fitted_name(LONG, tmp_path, ".mp4")
    assert len(os.fsencode(name)) <= name_max(tmp_path) and name.endswith(".mp4") and name.startswith("v" * 100)
    assert name == fitted_name(LONG, tmp_path, ".mp4") != fitted_name(LONG + "w", tmp_path, ".mp4")
    wide = fitted_name("é" * 200, tmp_path, ".mp4")  # cut between characters, never inside one
    assert len(os.fsencode(wide)) <= name_max(tmp_path) and wide.encode().decode() == wide


@pytest.mark.parametrize("command", ["sync", "export", "audit"])
def test_a_user_named_output_too_long_for_a_file_name_is_one_line_before_any_work(command, cache, heads, corpus, tmp_path):
    out = tmp_path / "out"
    args = {
        "sync": ("sync", corpus / "video_00001.mp4", "--heads", heads, "--fix", out / f"{LONG}.mp4"),
        "export": ("export", cache, "--heads", heads, "--out", out / f"{LONG}.parquet"),
        "audit": ("audit", cache, "--heads", heads, "--out", out / f"{LONG}.parquet", "--quiet"),
    }[command]
    one_line_error(avfeat(*args), "too long")
    assert not out.exists() or not any(out.iterdir())


def test_sync_fix_and_export_write_names_of_the_full_length(cache, heads, corpus, tmp_path):
    fixed = tmp_path / near_limit(tmp_path, ".mp4")
    avfeat("sync", corpus / "video_00001.mp4", "--heads", heads, "--fix", fixed, "--min-confidence", 0, "--quiet", check=0)
    out = tmp_path / near_limit(tmp_path, ".parquet")
    avfeat("export", cache, "--heads", heads, "--out", out, "--quiet", check=0)
    assert fixed.is_file() and out.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fixed.name, out.name])  # no temp file left


def test_fix_dir_writes_every_video_even_with_an_id_too_long_for_a_file_name(corpus, tmp_path):
    videos = sorted(corpus.glob("*.mp4"))[:3]
    ids = ["a", LONG, near_limit(tmp_path, ".mp4")[:-4]]
    rows = [AuditRow.from_row({"video_id": vid, "path": str(path), "duration": 3.0, "p_match": 0.9, "correspondence": 0.1,
                               "offset": 0.5, "p_sync": 0.95, "silent": False, "static": False, "worst_windows": []})
            for vid, path in zip(ids, videos)]
    fixed = tmp_path / "fixed"
    count, notes = fix_videos(rows, fixed, 0.9, overwrite=False)
    names = sorted(p.name for p in fixed.iterdir())
    assert count == 3 and len(names) == 3 and all(len(os.fsencode(n)) <= name_max(fixed) and n.endswith(".mp4") for n in names)
    assert fitted_name(LONG, fixed, ".mp4") in names and f"{ids[2]}.mp4" in names  # a name that fits is kept whole
    assert any(LONG in note and fitted_name(LONG, fixed, ".mp4") in note for note in notes)  # the user learns the name
