"""Cached-span queries answer without torch (``SpanSearcher`` with ``NumpyHeads``) and give what
``Searcher`` gives: the same projection, windows, pooling, salient patches, rerank and filters."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from avfeat.align.checkpoint import load_checkpoint, save_heads
from avfeat.align.heads import AVHeads
from avfeat.align.numpy_heads import NumpyHeads, load_numpy_checkpoint
from avfeat.core.errors import CheckpointError
from avfeat.data.cache import Cache
from avfeat.data.configs import HeadConfig
from avfeat.index.hits import Hit
from avfeat.index.search import Searcher
from avfeat.index.span_search import SpanSearcher


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_numpy_heads_project_as_the_torch_heads(kind):
    torch.manual_seed(0)
    heads = AVHeads(HeadConfig(audio_dim=24, visual_dim=40, dim=16, head=kind)).eval()
    with torch.no_grad():  # LayerNorm's scale and shift away from 1 and 0, so that they count
        for parameter in heads.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.5)
    ours = NumpyHeads(heads.config, {name: value.numpy() for name, value in heads.state_dict().items()})
    rng = np.random.default_rng(0)
    audio = (rng.normal(size=(7, 24)) * 3).astype(np.float32)
    visual = rng.normal(size=(2, 5, 40)).astype(np.float32)
    with torch.no_grad():
        expected_audio = heads.project_audio(torch.from_numpy(audio)).numpy()
        np.testing.assert_allclose(ours.project_audio(audio), expected_audio, atol=2e-6)
        np.testing.assert_allclose(ours.project_audio(audio, chunk=3), expected_audio, atol=2e-6)  # in chunks, the same
        np.testing.assert_allclose(ours.project_visual(visual), heads.project_visual(torch.from_numpy(visual)).numpy(), atol=2e-6)


def test_a_checkpoint_loads_the_same_in_numpy(heads, cache):
    torch_checkpoint, numpy_checkpoint = load_checkpoint(heads), load_numpy_checkpoint(heads)
    assert numpy_checkpoint.fingerprint == torch_checkpoint.fingerprint
    assert numpy_checkpoint.config == torch_checkpoint.config
    tokens = Cache(cache).audio_tokens(Cache(cache).records()[0].video_id)
    with torch.no_grad():
        expected = torch_checkpoint.heads.project_audio(torch.from_numpy(tokens.astype(np.float32))).numpy()
    np.testing.assert_allclose(numpy_checkpoint.heads.project_audio(tokens), expected, atol=2e-6)


def test_damaged_heads_are_refused_in_numpy_as_in_torch(heads, tmp_path):
    checkpoint = load_checkpoint(heads)
    nan = tmp_path / "nan"
    shutil.copytree(heads, nan)
    with torch.no_grad():
        checkpoint.heads.audio.norm.weight[0] = float("nan")
    save_heads(nan, checkpoint.heads, checkpoint.config.to_dict())
    wrong = tmp_path / "wrong"
    shutil.copytree(heads, wrong)
    config = checkpoint.config.to_dict()
    config["heads"]["dim"] += 1  # the config no longer fits the weights
    save_heads(wrong, load_checkpoint(heads).heads, config)
    for folder, says in ((nan, "NaN"), (wrong, "does not match its config")):
        for load in (load_checkpoint, load_numpy_checkpoint):
            with pytest.raises(CheckpointError, match=says):
                load(folder)


@pytest.fixture(scope="module")
def searchers(index):
    return Searcher(index), SpanSearcher(index)


def spans(cache) -> list[str]:
    """Spans of several lengths: longer than a window, one window, shorter than one."""
    ids = [record.video_id for record in Cache(cache).records()]
    return [f"{ids[0]}@0.5-2.5", f"{ids[1]}@0-1", f"{ids[2]}@1.2-1.7", f"{ids[3]}@0-3"]


def assert_same_hits(expected, got):
    assert len(got) == len(expected)
    np.testing.assert_allclose([h.score for h in got], [h.score for h in expected], atol=1e-5)
    for want, hit in zip(expected, got):
        if (hit.video_id, hit.start) != (want.video_id, want.start):  # only a near tie may trade places
            twin = next(h for h in expected if (h.video_id, h.start) == (hit.video_id, hit.start))
            assert abs(twin.score - want.score) < 1e-5


@pytest.mark.parametrize("side", ["audio", "visual"])
@pytest.mark.parametrize("rerank", [0, 20])
def test_a_span_searches_as_the_torch_searcher_does(searchers, cache, side, rerank):
    torch_searcher, span_searcher = searchers
    for span in spans(cache):
        expected = torch_searcher.search(span, side=side, k=8, rerank=rerank)
        assert_same_hits(expected, span_searcher.search(span, side=side, k=8, rerank=rerank))
        np.testing.assert_allclose(span_searcher._query_vector(span_searcher.tokens(span), side),
                                   torch_searcher.embed(span, side=side), atol=1e-5)


def test_filters_apply_to_span_searches_alike(searchers, cache):
    torch_searcher, span_searcher = searchers
    ids = [record.video_id for record in Cache(cache).records()]
    options = {"k": 4, "rerank": None, "one_per_video": True, "exclude_video": ids[1], "where": {"video_id": ids[2]}}
    for where in (None, {"video_id": ids[2]}):
        options["where"] = where
        expected = torch_searcher.search(spans(cache)[0], **options)
        assert_same_hits(expected, span_searcher.search(spans(cache)[0], **options))
        assert ids[1] not in {hit.video_id for hit in expected}


def test_the_cli_answers_a_span_without_importing_torch(index, cache, searchers):
    span = spans(cache)[0]
    script = (
        "import sys\nfrom avfeat.cli import main\n"
        f"sys.argv = ['avfeat', 'search', {str(index)!r}, {span!r}, '-k', '5', '--json']\n"
        "try:\n    main()\nfinally:\n    print('torch imported' if 'torch' in sys.modules else 'no torch', file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().endswith("no torch")
    got = [Hit(**row) for row in json.loads(done.stdout)]
    assert_same_hits(searchers[0].search(span, k=5, rerank=None), got)


def test_a_span_of_non_finite_tokens_is_one_line(index, cache, tmp_path):
    """A damaged shard whose tokens are inf: the span path refuses the query with the search's
    own one line, and numpy prints no warning before it (a child process: the interpreter's own output is the subject)."""
    import h5py

    from avfeat.testing.runner import run_avfeat_process

    damaged = tmp_path / "cache"
    shutil.copytree(cache, damaged)
    record = Cache(damaged).records()[0]
    shard = next((damaged / "shards").glob(f"*{record.shard:05d}*.h5"))
    with h5py.File(shard, "r+") as handle:
        tokens = handle["audio/tokens"]
        begin = record.audio_offset
        tokens[begin : begin + record.audio_length] = np.inf
    done = run_avfeat_process("search", index, f"{record.video_id}@0.5-2.5", "--from", "audio", "--cache", damaged, "-k", 3)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()], done.stderr
    assert done.stderr.startswith("avfeat: error:") and "finite" in done.stderr, done.stderr
