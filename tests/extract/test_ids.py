"""Video ids through `avfeat extract`: a moved dataset is not extracted again, a changed file
is reported and re-extracted with --refresh, copies are extracted once, and two different
files that would share an id are reported, never merged."""

import json
import os
import shutil

from avfeat.data.cache import Cache
from avfeat.testing.runner import TINY_MODELS as TINY
from avfeat.testing.media import make_clip
from avfeat.testing.runner import run_avfeat as avfeat


def extract(src, out, *extra, check=None):
    return avfeat("extract", src, "--out", out, *TINY, "--fps", 2, "--quiet", "--workers", 0, *extra, check=check)


def ids(cache):
    return {os.path.basename(r.path): r.video_id for r in Cache(cache).records()}


def test_moved_dataset_changed_file_and_refresh(tmp_path):
    (tmp_path / "a").mkdir()
    make_clip(tmp_path / "a" / "one.mp4", seconds=1.5)
    make_clip(tmp_path / "a" / "two.mp4", seconds=2.0)
    cache = tmp_path / "cache"
    extract(tmp_path / "a", cache, check=0)
    before = ids(cache)
    make_clip(tmp_path / "a" / "one.mp4", seconds=3.0)  # replaced in place
    result = extract(tmp_path / "a", cache, "--resume", check=0)
    assert "changed: " in result.stdout and before["one.mp4"] in result.stdout and "--refresh" in result.stdout
    assert ids(cache) == before  # reported, the old record kept
    extract(tmp_path / "a", cache, "--resume", "--refresh", check=0)
    after = Cache(cache)
    assert len(after.records()) == 2 and after.status_counts() == {"ok": 2}
    assert before["one.mp4"] not in after and ids(cache)["two.mp4"] == before["two.mp4"]
    assert abs(after.record(ids(cache)["one.mp4"]).duration - 3.0) < 0.1
    report = json.loads(avfeat("info", cache, "--json", check=0).stdout)
    assert report["videos"] == 2

    (tmp_path / "a").rename(tmp_path / "moved")  # another mount point, another node
    result = extract(tmp_path / "moved", cache, "--resume", check=0)
    assert "0 processed now, 2 already in the cache" in result.stdout
    assert len(Cache(cache).records()) == 2


def test_copies_are_extracted_once_and_a_collision_is_reported(tmp_path, monkeypatch):
    from avfeat.extract.inputs import ids as input_ids

    monkeypatch.setattr(input_ids, "_WHOLE_BYTES", 0)  # only the ends hashed, as a collision of
    monkeypatch.setattr(input_ids, "_MIDDLE_BLOCKS", 0)  # 64-bit keys stands in for
    make_clip(tmp_path / "clip.mp4", seconds=1.5)
    data = (tmp_path / "clip.mp4").read_bytes() + bytes(600 * 1024)  # the middle is not hashed
    for folder in ("x", "y", "z"):
        (tmp_path / "in" / folder).mkdir(parents=True)
    (tmp_path / "in" / "x" / "clip.mp4").write_bytes(data)
    (tmp_path / "in" / "y" / "clip.mp4").write_bytes(data)  # a copy
    changed = bytearray(data)
    changed[len(data) // 2] ^= 1  # other bytes, same size and ends: the same id
    (tmp_path / "in" / "z" / "clip.mp4").write_bytes(bytes(changed))
    cache = tmp_path / "cache"
    result = extract(tmp_path / "in", cache, check=3)
    assert "duplicate: " in result.stdout and "id collision: " in result.stdout, result.stdout
    assert "Traceback" not in result.stderr
    assert [os.path.basename(os.path.dirname(r.path)) for r in Cache(cache).records()] == ["x"]
    # the collision stays reported on every run; the copy is never extracted twice
    shutil.rmtree(tmp_path / "in" / "x")
    result = extract(tmp_path / "in", cache, "--resume", check=3)
    assert "id collision: " in result.stdout and len(Cache(cache).records()) == 1


def test_a_resumed_runs_counts_add_up_to_its_inputs(tmp_path):
    for folder in ("in", "x", "y"):
        (tmp_path / folder).mkdir()
    make_clip(tmp_path / "in" / "a.mp4", seconds=1.5)
    make_clip(tmp_path / "in" / "b.mp4", seconds=2.0)
    make_clip(tmp_path / "in" / "c.mp4", seconds=2.5)  # other bytes and size than b
    make_clip(tmp_path / "x" / "d.mp4", seconds=1.5)
    shutil.copy(tmp_path / "x" / "d.mp4", tmp_path / "y" / "d.mp4")  # a copy: the same id
    first = tmp_path / "first.csv"
    first.write_text(f"path,id\n{tmp_path / 'in' / 'a.mp4'},A\n{tmp_path / 'in' / 'b.mp4'},B\n{tmp_path / 'x' / 'd.mp4'},\n")
    cache = tmp_path / "cache"
    extract(first, cache, check=0)
    make_clip(tmp_path / "in" / "b.mp4", seconds=3.0)  # replaced in place
    make_clip(tmp_path / "in" / "e.mp4", seconds=1.5)
    rows = [("in/a.mp4", "A"), ("in/b.mp4", ""), ("in/c.mp4", "B"), ("x/d.mp4", ""), ("y/d.mp4", ""), ("in/e.mp4", "")]
    table = tmp_path / "again.csv"
    table.write_text("path,id\n" + "".join(f"{tmp_path / path},{vid}\n" for path, vid in rows))
    result = extract(table, cache, "--resume", check=3)  # the id collision fails the run
    counts = "(1 processed now, 2 already in the cache, 1 changed, 1 duplicate, 1 id collision)"
    assert counts in result.stdout, result.stdout
    assert f"id collision: {tmp_path / 'in' / 'c.mp4'} and {tmp_path / 'in' / 'b.mp4'}" in result.stdout
    assert Cache(cache).record("B").path.endswith("b.mp4")  # the table's id B never names c's tokens
    # --refresh retires b's record B in the run that still finds c a collision, never "already in the cache"
    result = extract(table, cache, "--resume", "--refresh", check=3)
    assert "(1 processed now, 3 already in the cache, 1 duplicate, 1 id collision)" in result.stdout, result.stdout
    assert "videos: 4 ok, failed: none" in result.stdout
    assert "c.mp4" not in {os.path.basename(r.path) for r in Cache(cache).records()}
    result = extract(table, cache, "--resume", check=0)  # B retired: free for the file the table gives it to
    assert "(1 processed now, 4 already in the cache, 1 duplicate)" in result.stdout, result.stdout
    assert Cache(cache).record("B").path.endswith("c.mp4")


def test_inputs_past_the_limit_are_counted(tmp_path):
    (tmp_path / "in").mkdir()
    for name in ("a", "b", "c"):
        make_clip(tmp_path / "in" / f"{name}.mp4", seconds=1.5)
    result = extract(tmp_path / "in", tmp_path / "cache", "--limit", 1, check=0)
    assert "(1 processed now, 0 already in the cache, 2 left for a later run (--limit))" in result.stdout, result.stdout
    result = extract(tmp_path / "in", tmp_path / "cache", "--resume", "--limit", 1, check=0)
    assert "(1 processed now, 1 already in the cache, 1 left for a later run (--limit))" in result.stdout, result.stdout


def test_many_paths_resolve_as_one_does(tmp_path, monkeypatch):
    """assign_ids resolves a million inputs with ``sources.resolver`` (each folder once): every
    kind of path gets what ``sources.resolve`` gives, so a resume finds the same records."""
    from avfeat.data.manifest import Recorded
    from avfeat.extract import sources
    from avfeat.extract.inputs.ids import assign_ids
    from avfeat.extract.inputs.items import MediaInput

    real = tmp_path / "real"
    (real / "sub").mkdir(parents=True)
    (real / "clip.mp4").write_bytes(b"bytes")
    (tmp_path / "linked").symlink_to(real)  # a folder link
    (real / "alias.mp4").symlink_to(real / "clip.mp4")  # a file link
    (real / "relative.mp4").symlink_to("sub/../clip.mp4")
    (real / "dangling.mp4").symlink_to(tmp_path / "gone.mp4")
    (tmp_path / "loop.mp4").symlink_to(tmp_path / "loop.mp4")
    monkeypatch.chdir(tmp_path / "linked")
    paths = [real / "clip.mp4", tmp_path / "linked" / "clip.mp4", tmp_path / "linked" / "alias.mp4", "clip.mp4", "./sub/../clip.mp4",
             "sub/../alias.mp4", "linked/../real/clip.mp4", str(real) + "//clip.mp4", real / "relative.mp4", real / "dangling.mp4",
             real / "missing.mp4", tmp_path / "linked" / "sub" / "nothing" / "x.mp4", "", ".", "/", "file.tar#member.mp4"]
    fast = sources.resolver()
    for path in paths:
        assert fast(path) == sources.resolve(path), path
    try:
        sources.resolve(tmp_path / "loop.mp4")
    except RuntimeError:  # a link loop: the same error either way
        import pytest

        with pytest.raises(RuntimeError):
            fast(tmp_path / "loop.mp4")
    stat = sources.stat(real / "clip.mp4")
    recorded = {"clip-0000000000000000": Recorded("clip-0000000000000000", str(real / "clip.mp4"), stat.size, stat.mtime, "ok", 1.0, None, None)}
    plan = assign_ids([MediaInput(tmp_path / "linked" / "alias.mp4")], recorded)
    assert [vid for _, vid in plan.ids] == ["clip-0000000000000000"]  # the recorded id, the file not read


def test_a_resume_decides_each_input_as_the_full_checks_do(tmp_path, monkeypatch):
    """assign_ids' shortcut for an unchanged recorded file gives what the full checks give:
    a relative path, a link, a segment, an input table's id, a changed mtime, a repeat."""
    from avfeat.data.manifest import Recorded
    from avfeat.extract import sources
    from avfeat.extract.inputs.ids import assign_ids
    from avfeat.extract.inputs.items import MediaInput

    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.mp4").write_bytes(name.encode() * 10)
    (tmp_path / "link.mp4").symlink_to(tmp_path / "a.mp4")
    monkeypatch.chdir(tmp_path)
    a, b, c = (sources.stat(tmp_path / f"{name}.mp4") for name in "abc")
    records = [Recorded("A", str(tmp_path / "a.mp4"), a.size, a.mtime, "ok", 1.0, None, None),
               Recorded("B", str(tmp_path / "b.mp4"), b.size, b.mtime - 5, "ok", 1.0, None, None),
               Recorded("C1", str(tmp_path / "c.mp4"), c.size, c.mtime, "ok", 1.0, 0.0, 1.0)]
    inputs = [MediaInput(tmp_path / "a.mp4", link=False), MediaInput("b.mp4"), MediaInput(tmp_path / "c.mp4", start=0.0, end=1.0),
              MediaInput(tmp_path / "c.mp4", start=1.0, end=2.0), MediaInput("a.mp4"), MediaInput(tmp_path / "link.mp4", user_id="L"),
              MediaInput(tmp_path / "c.mp4", user_id="C1", start=0.0, end=1.0)]
    plan = assign_ids(inputs, {record.video_id: record for record in records})
    ids = [vid for _, vid in plan.ids]
    assert ids[:2] == ["A", "C1"] and ids[2].startswith("c-") and ids[2].endswith("_1-2") and ids[3:] == ["L"], ids
    assert plan.changed == [(inputs[1].path, "B")]
    assert plan.duplicates == [("a.mp4", tmp_path / "a.mp4")] and plan.collisions == [(inputs[6].path, inputs[2].path, "C1")]


def test_an_input_its_listing_says_is_no_link_is_not_lstat_ed(tmp_path, monkeypatch):
    """A resume of a million listed files resolves each path without an lstat when the listing
    said it is no link; a link's listing (or none) still has it followed."""
    import os

    from avfeat.data.manifest import Recorded
    from avfeat.extract.sources import paths
    from avfeat.extract.inputs.ids import assign_ids
    from avfeat.extract.inputs.items import MediaInput

    (tmp_path / "a.mp4").write_bytes(b"a")
    (tmp_path / "link.mp4").symlink_to(tmp_path / "a.mp4")
    seen = []
    lstat = os.lstat
    monkeypatch.setattr(paths.os, "lstat", lambda path: seen.append(os.fspath(path)) or lstat(path))
    resolve = paths.resolver()
    assert resolve(tmp_path / "a.mp4", False) == str(tmp_path / "a.mp4") and str(tmp_path / "a.mp4") not in seen  # its folder, once
    assert resolve(tmp_path / "link.mp4") == str(tmp_path / "a.mp4") and str(tmp_path / "link.mp4") in seen
    seen.clear()
    stat = paths.os.stat(tmp_path / "a.mp4")
    recorded = {"A": Recorded("A", str(tmp_path / "a.mp4"), stat.st_size, stat.st_mtime, "ok", 1.0, None, None)}
    plan = assign_ids([MediaInput(tmp_path / "a.mp4", link=False)], recorded)
    assert [vid for _, vid in plan.ids] == ["A"] and str(tmp_path / "a.mp4") not in seen


def test_resolving_many_paths_answers_as_resolve_for_odd_spellings(tmp_path, monkeypatch):
    """The resolver's quick test for a plainly absolute path sends every other spelling (hidden
    folders, '.', '..', '//', a trailing '/', a '#' that names no tar member) through the full
    checks, with resolve's answers."""
    from avfeat.extract import sources

    (tmp_path / ".hidden" / "sub").mkdir(parents=True)
    (tmp_path / ".hidden" / "a#b.mp4").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    base = str(tmp_path)
    paths = [f"{base}/.hidden/a#b.mp4", f"{base}/.hidden/./a#b.mp4", f"{base}/.hidden/sub/../a#b.mp4", f"{base}/.hidden/sub/.",
             f"{base}/.hidden/sub/..", f"{base}//.hidden/a#b.mp4", f"{base}/.hidden/sub/", f"{base}/.hidden/.x.mp4",
             ".hidden/a#b.mp4", "./.hidden/sub/../a#b.mp4", f"{base}/x.tar#m.mp4", f"{base}/.hidden/.", "s3://b/k.mp4"]
    for link in (None, False):
        fast = sources.resolver()
        for path in paths:
            assert fast(path, link) == sources.resolve(path), path
