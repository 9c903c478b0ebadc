"""`--overwrite` (and `--resume`) take a folder for avfeat's only when its marker file is one
avfeat wrote: a `cache.json`, `config.json` or `meta.json` of another tool (a model folder, an
experiment's notes, a damaged file) is refused in one line, and nothing in the folder is touched."""

import json

import pytest

from avfeat.testing.runner import run_avfeat as avfeat

from .conftest import TINY


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(result, snapshot_before, folder):
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "not an avfeat" in result.stderr, result.stderr
    assert snapshot(folder) == snapshot_before  # nothing removed, nothing rewritten


@pytest.mark.parametrize("marker", ["{}", '{"model_type": "bert"}', '{"audio_model": "x"', "[1, 2]"])
def test_extract_keeps_a_folder_whose_cache_json_is_not_avfeats(corpus, tmp_path, marker):
    out = tmp_path / "u"
    (out / "shards").mkdir(parents=True)
    (out / "cache.json").write_text(marker)
    (out / "shards" / "mine.txt").write_text("keep me")
    before = snapshot(out)
    for flag in ("--overwrite", "--resume"):
        refused(avfeat("extract", corpus, "--out", out, *TINY, "--fps", 5, "--quiet", "--workers", 1, flag), before, out)


def test_train_head_keeps_a_model_folder(cache, tmp_path):
    out = tmp_path / "hf-model"
    (out / "tensorboard").mkdir(parents=True)
    (out / "config.json").write_text(json.dumps({"model_type": "hubert", "hidden_size": 768}))
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    (out / "tensorboard" / "events.out").write_text("runs")
    before = snapshot(out)
    refused(avfeat("train-head", cache, "--out", out, "--steps", 2, "--batch-size", 4, "--workers", 0, "--quiet", "--overwrite"), before, out)


def test_index_keeps_a_folder_whose_meta_json_is_not_avfeats(cache, heads, tmp_path):
    out = tmp_path / "experiment"
    out.mkdir()
    (out / "meta.json").write_text(json.dumps({"author": "me", "notes": "runs of May"}))
    (out / "audio.parquet").write_text("a table of mine")
    (out / "audio.faiss").write_text("an index of mine")
    before = snapshot(out)
    refused(avfeat("index", cache, "--heads", heads, "--out", out, "--quiet", "--overwrite"), before, out)


# ---- ownership proven by the owner record, not by the keys of a look-alike file --------------


def refused_unproven(result, snapshot_before, folder):
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "avfeat-output.json" in result.stderr, result.stderr
    assert snapshot(folder) == snapshot_before


def test_overwrite_keeps_look_alikes_holding_avfeats_keys(corpus, cache, heads, tmp_path):
    # Files that hold every key avfeat looks for, but no owner record: nothing is deleted.
    looks = tmp_path / "cache-like"
    (looks / "shards").mkdir(parents=True)
    (looks / "cache.json").write_text(json.dumps({"audio_model": "x", "visual_model": "y", "fps": 5}))
    (looks / "shards" / "mine.txt").write_text("keep me")
    before = snapshot(looks)
    refused_unproven(avfeat("extract", corpus, "--out", looks, *TINY, "--fps", 5, "--quiet", "--workers", 1, "--overwrite"), before, looks)

    experiment = tmp_path / "experiment"
    (experiment / "tensorboard").mkdir(parents=True)
    (experiment / "config.json").write_text(json.dumps({"heads": {"dim": 8}, "cache": {}}))
    (experiment / "metrics.jsonl").write_text('{"step": 1}\n')
    (experiment / "tensorboard" / "events.out").write_text("runs")
    before = snapshot(experiment)
    args = ("--steps", 2, "--batch-size", 4, "--workers", 0, "--quiet", "--overwrite")
    refused_unproven(avfeat("train-head", cache, "--out", experiment, *args), before, experiment)

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "meta.json").write_text(json.dumps({"modalities": {}, "heads": {}}))
    (notes / "audio.faiss").write_text("an index of mine")
    before = snapshot(notes)
    refused_unproven(avfeat("index", cache, "--heads", heads, "--out", notes, "--quiet", "--overwrite"), before, notes)


def test_a_copied_owner_record_proves_nothing(corpus, cache, tmp_path):
    import shutil

    out = tmp_path / "u"
    out.mkdir()
    shutil.copy(cache / "avfeat-output.json", out)  # avfeat's record, beside a cache.json it did not write
    (out / "cache.json").write_text(json.dumps({"audio_model": "x", "visual_model": "y", "fps": 5, "output_id": "0" * 32}))
    (out / "manifest").mkdir()
    (out / "manifest" / "mine.txt").write_text("keep me")
    before = snapshot(out)
    result = avfeat("extract", corpus, "--out", out, *TINY, "--fps", 5, "--quiet", "--workers", 1, "--overwrite")
    assert result.returncode == 1 and "different outputs" in result.stderr and snapshot(out) == before, result.stderr


def test_an_output_inside_an_input_is_refused(corpus, cache, heads, tmp_path):
    before = snapshot(cache)
    for args in (("train-head", cache, "--out", cache / "heads", "--steps", 2, "--workers", 0, "--quiet"),
                 ("index", cache, "--heads", heads, "--out", cache / "index", "--quiet"),
                 ("index", cache, "--heads", heads, "--out", heads / "index", "--quiet"),
                 ("extract", corpus, "--out", corpus / "cache", *TINY, "--fps", 5, "--quiet", "--workers", 1)):
        result = avfeat(*args)
        assert result.returncode == 1 and "lies inside the" in result.stderr and len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
    assert snapshot(cache) == before and not (corpus / "cache").exists() and not (heads / "index").exists()


def test_audit_and_sync_outputs_inside_or_around_an_input_are_refused(corpus, cache, heads, tmp_path):
    from avfeat.testing.runner import one_line_error

    before, heads_before = snapshot(cache), snapshot(heads)
    video = corpus / "video_00003.mp4"
    for args in (("audit", cache, "--heads", heads, "--out", cache / "audit.parquet"),
                 ("audit", cache, "--heads", heads, "--out", tmp_path / "a.parquet", "--report", heads / "r.html"),
                 ("audit", cache, "--heads", heads, "--out", tmp_path / "b.parquet", "--fix-dir", cache.parent),
                 ("sync", "--cache", cache, "--heads", heads, "--out", cache / "sync.csv"),
                 ("sync", video, "--heads", heads, "--fix", heads / "fixed.mp4", "--min-confidence", 0),
                 ("sync", video, "--heads", heads, "--plot", heads / "curve.png")):
        line = one_line_error(avfeat(*args))
        assert "lies inside the" in line or "contains the" in line, (args, line)
    assert snapshot(cache) == before and snapshot(heads) == heads_before
    assert not (tmp_path / "a.parquet").exists() and not (tmp_path / "b.parquet").exists()


def test_index_overwrite_keeps_files_its_index_never_listed(cache, heads, index, tmp_path):
    # audio.faiss / audio.parquet are names of older index formats, but this index's meta.json
    # does not list them: avfeat cannot prove it wrote them, so --overwrite leaves them.
    import shutil

    from avfeat.index import Searcher

    out = tmp_path / "index"
    shutil.copytree(index, out)
    old = json.loads((out / "meta.json").read_text())
    old_files = {old["modalities"]["audio"]["table"], *(s["file"] for s in old["modalities"]["audio"]["shards"])}
    for name in ("audio.faiss", "audio.parquet", "visual-00000.faiss"):
        (out / name).write_text("mine\n")
    avfeat("index", cache, "--heads", heads, "--out", out, "--overwrite", "--quiet", check=0)
    for name in ("audio.faiss", "audio.parquet", "visual-00000.faiss"):
        assert (out / name).read_text() == "mine\n", name
    assert not any((out / name).exists() for name in old_files)  # the replaced index's own files are gone
    Searcher(out)  # the new index loads
