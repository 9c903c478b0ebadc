"""`avfeat index --shards N`: shard files and metadata, results identical to one index (Flat,
and IVF with the same trained quantizer and nprobe), memory-mapped IVF shards, and the errors."""

import gc
import json
import re
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest

from avfeat.data.cache import Cache
from avfeat.core.errors import InputError
from avfeat.index.span_search import SpanSearcher
from avfeat.index.shards import shard_ranges
from avfeat.index.store import IndexFolder
from avfeat.testing.runner import run_avfeat as avfeat

IVF = "IVF8,Flat"


def build(cache, heads, out, *options):
    avfeat("index", cache, "--heads", heads, "--out", out, "--quiet", *options, check=0)
    return out


@pytest.fixture(scope="module")
def flat_sharded(cache, heads, tmp_path_factory):
    return build(cache, heads, tmp_path_factory.mktemp("shards") / "flat3", "--shards", 3)


@pytest.fixture(scope="module")
def ivf(cache, heads, tmp_path_factory):
    """The same forced IVF factory built as one index and as 3 shards: {1: folder, 3: folder}."""
    root = tmp_path_factory.mktemp("shards_ivf")
    return {n: build(cache, heads, root / f"ivf{n}", "--factory", IVF, "--shards", n) for n in (1, 3)}


def queries(index, modality="audio", count=16):
    """Real window vectors of ``modality`` from the unsharded Flat index (IndexIDMap2 keeps them)."""
    folder = IndexFolder(index)
    flat = folder.faiss_index(modality)
    return np.stack([flat.reconstruct(int(i)) for i in np.linspace(0, folder.count(modality) - 1, count).astype(int)])


def search_all(folder, modality, q):
    """Every row ranked (k = the collection size), as (ids, scores)."""
    opened = IndexFolder(folder)
    scores, ids = opened.faiss_index(modality).search(q, opened.count(modality))
    return ids, scores


def shard_paths(folder, modality):
    """The FAISS files meta.json lists for ``modality``, as paths."""
    return [str(folder / entry["file"]) for entry in IndexFolder(folder).shards(modality)]


def mapped_files():
    """This process's memory maps (Linux), once indexes no longer referenced are gone."""
    gc.collect()
    return Path("/proc/self/maps").read_text()


def test_shard_ranges_are_contiguous_and_balanced():
    assert shard_ranges(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert shard_ranges(5, 1) == [(0, 5)]
    for bad in (0, -1, 6):
        with pytest.raises(InputError):
            shard_ranges(5, bad)


def test_shard_files_are_listed_in_meta(flat_sharded):
    meta = json.loads((flat_sharded / "meta.json").read_text())
    assert meta["format"] == 3
    files = {"meta.json", ".avfeat-index", "avfeat-output.json"}  # and the owner record
    for modality in ("audio", "visual"):
        info = meta["modalities"][modality]
        assert info["factory"] == "Flat"
        listed = info["shards"]
        generation = info["table"].split(".")[1]  # every file of one write carries its tag
        assert re.fullmatch(r"[0-9a-f]{8}", generation) and info["table"] == f"{modality}.{generation}.parquet"
        assert [s["file"] for s in listed] == [f"{modality}-{i:05d}.{generation}.faiss" for i in range(3)]
        files |= {info["table"], *(s["file"] for s in listed)}
        assert listed[0]["begin"] == 0 and listed[-1]["end"] == info["count"]
        assert all(a["end"] == b["begin"] for a, b in zip(listed, listed[1:]))
        for entry in listed:
            path = flat_sharded / entry["file"]
            assert path.stat().st_size == entry["bytes"]
            shard = faiss.read_index(str(path))
            assert shard.ntotal == entry["end"] - entry["begin"] > 0
            # ids are global: the shard holds rows begin..end-1 of the table
            assert faiss.vector_to_array(faiss.downcast_index(shard).id_map).tolist() == list(range(entry["begin"], entry["end"]))
    assert {p.name for p in flat_sharded.iterdir()} == files  # nothing but what meta.json lists


@pytest.mark.parametrize("modality", ["audio", "visual"])
def test_flat_shards_rank_every_row_like_one_index(index, flat_sharded, modality):
    q = queries(index, "visual" if modality == "audio" else "audio")  # cross-modal queries
    one_ids, one_scores = search_all(index, modality, q)
    ids, scores = search_all(flat_sharded, modality, q)
    np.testing.assert_array_equal(ids, one_ids)
    np.testing.assert_array_equal(scores, one_scores)


def test_ivf_shards_share_quantizer_and_nprobe_and_match_one_index(index, ivf):
    metas = {n: json.loads((folder / "meta.json").read_text()) for n, folder in ivf.items()}
    for modality in ("audio", "visual"):
        params = metas[3]["modalities"][modality]["params"]
        assert metas[1]["modalities"][modality]["params"] == params
        assert params["nprobe"] > 1, params  # not faiss's default: it must reach every shard
        one, merged = IndexFolder(ivf[1]).faiss_index(modality), IndexFolder(ivf[3]).faiss_index(modality)
        assert merged.count() == 3
        for i in range(3):
            shard = faiss.extract_index_ivf(merged.at(i))
            assert shard.nprobe == params["nprobe"] and shard.nlist == 8
        q = queries(index, "visual" if modality == "audio" else "audio")
        n = one.ntotal
        for nprobe in (params["nprobe"], 2):  # as tuned; then few lists, where the quantizer decides
            faiss.ParameterSpace().set_index_parameter(one, "nprobe", nprobe)
            faiss.ParameterSpace().set_index_parameter(merged, "nprobe", nprobe)
            one_scores, one_ids = one.search(q, n)
            scores, ids = merged.search(q, n)
            np.testing.assert_array_equal(ids, one_ids)
            np.testing.assert_array_equal(scores, one_scores)
        assert (one_ids == -1).any()  # at nprobe 2 some lists went unprobed


def test_sharded_ivf_is_memory_mapped_by_default(ivf):
    files = shard_paths(ivf[3], "visual")
    assert len(files) == 3
    loaded = IndexFolder(ivf[3], mmap=False)
    loaded.faiss_index("visual")
    assert not any(f in mapped_files() for f in files)
    mapped = IndexFolder(ivf[3])
    mapped.faiss_index("visual")
    assert all(f in mapped_files() for f in files)
    forced = IndexFolder(ivf[1], mmap=True)  # --mmap on an unsharded index maps its one file
    forced.faiss_index("visual")
    assert shard_paths(ivf[1], "visual")[0] in mapped_files()


def test_shards_spread_over_gpus_and_are_not_mapped_there(ivf, monkeypatch):
    """faiss-gpu stand-ins on this CPU machine: shard i must go to GPU i % 2, unmapped."""
    import avfeat.index.faiss_gpu as faiss_gpu

    devices = []

    def to_gpu(resources, device, index):
        devices.append(device)
        return faiss.clone_index(index)

    monkeypatch.setattr(faiss_gpu, "gpu_count", lambda: 2)
    monkeypatch.setattr(faiss, "StandardGpuResources", object, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", to_gpu, raising=False)
    merged = IndexFolder(ivf[3]).faiss_index("visual")
    assert devices == [0, 1, 0] and merged.count() == 3
    assert not any(f in mapped_files() for f in shard_paths(ivf[3], "visual"))
    params = json.loads((ivf[3] / "meta.json").read_text())["modalities"]["visual"]["params"]
    assert all(faiss.extract_index_ivf(merged.at(i)).nprobe == params["nprobe"] for i in range(3))


def test_search_cli_same_hits_sharded_and_not(ivf, cache):
    video = Cache(cache).records(status="ok")[1].video_id
    one = avfeat("search", ivf[1], f"{video}@0.0-2.0", "-k", 8, "--json", "--mmap", check=0).stdout
    sharded = avfeat("search", ivf[3], f"{video}@0.0-2.0", "-k", 8, "--json", "--no-mmap", check=0).stdout
    assert len(json.loads(one)) == 8 and json.loads(sharded) == json.loads(one)
    hits = SpanSearcher(ivf[3]).search(f"{video}@0.0-2.0", k=8, rerank=20)  # how the CLI answers a span, and its default for sound
    assert [h.to_dict() for h in hits] == json.loads(one)


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_damaged_shard_is_one_line_error(ivf, cache, tmp_path, damage):
    folder = tmp_path / "index"
    shutil.copytree(ivf[3], folder)
    shard = Path(shard_paths(folder, "visual")[1])  # an audio query searches the visual index
    if damage == "missing":
        shard.unlink()
    else:
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    video = Cache(cache).records(status="ok")[0].video_id
    result = avfeat("search", folder, f"{video}@0.0-2.0")
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("avfeat: error:") and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr and shard.name in result.stderr
    assert ("missing" if damage == "missing" else "truncated") in result.stderr


@pytest.mark.parametrize("shards, message", [(0, "--shards must be 1 or more"), (100_000, "--shards 100000 is more than the")])
def test_bad_shard_count_is_one_line_error(cache, heads, tmp_path, shards, message):
    result = avfeat("index", cache, "--heads", heads, "--out", tmp_path / "index", "--shards", shards, "--quiet")
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("avfeat: error:") and len(result.stderr.strip().splitlines()) == 1
    assert message in result.stderr
    assert not (tmp_path / "index").exists()
