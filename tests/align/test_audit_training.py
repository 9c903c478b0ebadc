"""train-head on an audited corpus: --exclude / --min-correspondence leave doubtful videos out,
--weight-by weights each positive pair by its video's p_match; bad tables are one line."""

import hashlib
import json
import math

import pytest
import torch

from avfeat.align import data
from avfeat.align import train as train_module
from avfeat.align.loss import info_nce
from avfeat.align.config import RunOptions, TrainConfig
from avfeat.align.train import train
from avfeat.data.cache import Cache
from avfeat.data.shards import ShardWriter, new_record, open_for_writing
from avfeat.data.audit_table import AuditRow, write_audit

from .conftest import avfeat
from .test_align_cli import TRAIN, one_line_error

CONFIG = dict(window=1.0, dim=16, batch_size=2, passes_per_epoch=1, epochs=2, lr=1e-2, val_fraction=0.25, val_windows=2)


def run(cache, out, options=None, **overrides):
    log = []
    result = train(cache, out, TrainConfig(**{**CONFIG, **overrides}), options or RunOptions(quiet=True, device="cpu"), log=log.append)
    return result, log


def ok_ids(cache_path) -> list[str]:
    with Cache(cache_path) as cache:
        return sorted(r.video_id for r in cache.records(status="ok"))


def write_table(cache_path, path, p_match, drop: int = 0):
    """An audit table of ``cache_path`` with p_match ``p_match(i)`` for the i-th video id (sorted),
    leaving out the last ``drop`` videos."""
    with Cache(cache_path) as cache:
        records = sorted(cache.records(status="ok"), key=lambda r: r.video_id)[: len(cache.records(status="ok")) - drop]
        rows = [AuditRow(video_id=r.video_id, path=r.path, p_match=p_match(i), correspondence=0.0, offset=0.0, p_sync=1.0)
                for i, r in enumerate(records)]
        write_audit(path, rows, cache)
    return path


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def planned_videos(monkeypatch) -> list:
    """Record the video ids of every window that each epoch plan puts in a batch (and its shift)."""
    seen = []
    real = data.epoch_plan

    def spy(table, videos, *args, **kwargs):
        plan = real(table, videos, *args, **kwargs)
        windows = torch.cat([plan.windows.flatten(), plan.shifted[plan.shifted >= 0]]).tolist()
        seen.append({table.video_ids[table.video[w]] for w in windows})
        return plan

    monkeypatch.setattr(data, "epoch_plan", spy)
    return seen


# ---- the weighted loss ------------------------------------------------------------------------


def _cross_entropy(logits: list[float], target: int) -> float:
    return -logits[target] + math.log(sum(math.exp(x) for x in logits if x != float("-inf")))


def test_weighted_info_nce_matches_a_hand_computation():
    scores = torch.tensor([[0.9, 0.1, -0.3], [0.2, 0.5, 0.4], [-0.1, 0.6, 0.3]], dtype=torch.float64)
    shifted = torch.tensor([0.7, float("-inf"), 0.2], dtype=torch.float64)
    weights = torch.tensor([0.5, 1.5, 1.0])
    s, b = 10.0, 3
    for extra in (None, shifted):
        total = 0.0
        for i in range(b):
            tail = [] if extra is None else [s * float(extra[i])]
            row = [s * float(scores[i, j]) for j in range(b)] + tail
            col = [s * float(scores[j, i]) for j in range(b)] + tail
            total += float(weights[i]) * (_cross_entropy(row, i) + _cross_entropy(col, i))
        got = float(info_nce(scores, torch.tensor(s), extra, extra, pair_weights=weights))
        assert math.isclose(got, total / (2 * b), rel_tol=1e-6), (extra, got, total / (2 * b))


def test_unit_weights_give_the_unweighted_loss():
    scores = torch.rand(5, 5, generator=torch.Generator().manual_seed(0)) * 2 - 1
    scale = torch.tensor(14.0)
    assert math.isclose(float(info_nce(scores, scale, pair_weights=torch.ones(5))), float(info_nce(scores, scale)), rel_tol=1e-6)


def test_a_zero_weight_row_adds_no_positive_term_but_stays_a_negative():
    scores = torch.rand(3, 3, generator=torch.Generator().manual_seed(1), requires_grad=True)
    weights = torch.tensor([0.0, 1.5, 1.5])
    info_nce(scores, torch.tensor(10.0), pair_weights=weights).backward()
    assert scores.grad[0, 0] == 0  # video 0's own pair (audio 0 with visual 0) is not pulled together
    assert scores.grad[1, 0] > 0 and scores.grad[0, 1] > 0  # but it is pushed away from the others' clips
    without = float(info_nce(scores.detach()[1:, 1:], torch.tensor(10.0)))  # rows 1 and 2 alone, had video 0 not been a negative
    assert float(info_nce(scores.detach(), torch.tensor(10.0), pair_weights=weights)) > without


def test_weighted_rows_of_several_processes_average_to_the_whole_loss():
    g = torch.Generator().manual_seed(3)
    scores = torch.rand(4, 4, generator=g, dtype=torch.float64)
    extra = torch.rand(4, generator=g, dtype=torch.float64)
    weights, scale = torch.tensor([0.2, 1.8, 0.0, 2.0]), torch.tensor(7.0)
    whole = info_nce(scores, scale, extra, extra, pair_weights=weights)
    halves = [info_nce(scores[rows], scale, extra[rows], extra[rows], scores.T[rows], rows.start, weights[rows]) for rows in (slice(0, 2), slice(2, 4))]
    assert math.isclose(float(sum(halves) / 2), float(whole), rel_tol=1e-6)


# ---- training on an audited cache -------------------------------------------------------------


def test_excluded_videos_never_enter_a_batch_nor_validation(small_cache, tmp_path, monkeypatch):
    ids = ok_ids(small_cache)
    table = write_table(small_cache, tmp_path / "audit.parquet", lambda i: 0.2 if i < 3 else 0.9)
    excluded = set(ids[:3])
    seen = planned_videos(monkeypatch)
    result, log = run(small_cache, tmp_path / "heads", exclude=str(table))
    assert len(seen) == 2 and all(videos and not videos & excluded for videos in seen)
    assert "excluded 3 of 8 videos: p_match below --min-correspondence 0.5 in " + str(table.resolve()) in log
    config = json.loads((tmp_path / "heads" / "config.json").read_text())
    assert config["training"]["exclude"] == {"path": str(table.resolve()), "sha256": sha256(table), "excluded": sorted(excluded)}
    assert config["training"]["min_correspondence"] == 0.5 and config["training"]["weight_by"] is None
    val = set(config["split"]["val_videos"])
    assert val and not val & excluded and len(val) == 1  # the split is over the 5 kept videos
    assert "val" in result.history[-1]


def test_weight_by_weights_each_window_by_its_videos_p_match(small_cache, tmp_path, monkeypatch):
    p_match = {vid: 0.1 * (i + 1) for i, vid in enumerate(ok_ids(small_cache))}  # 0.1 .. 0.8
    audit = write_table(small_cache, tmp_path / "audit.parquet", lambda i: 0.1 * (i + 1))
    plans, passed = [], []
    real_plan, real_loss = data.epoch_plan, train_module.window_loss

    def plan_spy(table, videos, *args, **kwargs):
        plans.append((table, videos, real_plan(table, videos, *args, **kwargs)))
        return plans[-1][2]

    def loss_spy(*args):
        passed.append(args[-1])
        return real_loss(*args)

    monkeypatch.setattr(data, "epoch_plan", plan_spy)
    monkeypatch.setattr(train_module, "window_loss", loss_spy)
    result, log = run(small_cache, tmp_path / "heads", weight_by=str(audit), temporal_negatives=True)
    windows = torch.cat([plan.windows for _, _, plan in plans])
    table, train_videos, _ = plans[0]
    mean = sum(p_match[table.video_ids[k]] for k in train_videos) / len(train_videos)
    expected = [[p_match[table.video_ids[table.video[w]]] / mean for w in row] for row in windows.tolist()]
    assert len(passed) == len(expected) and all(torch.allclose(w, torch.tensor(e)) for w, e in zip(passed, expected))
    assert all(math.isfinite(loss) for loss in result.losses)
    assert any(line.startswith("weighting each training video's positive pair by its p_match") for line in log)
    config = json.loads((tmp_path / "heads" / "config.json").read_text())
    assert config["training"]["weight_by"] == {"path": str(audit.resolve()), "sha256": sha256(audit)}
    assert config["training"]["exclude"] is None


def test_resume_reuses_the_tables_and_refuses_a_changed_one(small_cache, tmp_path):
    table = write_table(small_cache, tmp_path / "audit.parquet", lambda i: [0.1, 0.9, 0.6, 0.3, 1.0, 0.8, 0.7, 0.55][i])
    both = dict(exclude=str(table), min_correspondence=0.4, weight_by=str(table))
    full, _ = run(small_cache, tmp_path / "full", **both)
    first, _ = run(small_cache, tmp_path / "split", RunOptions(quiet=True, device="cpu", stop_after=1), **both)
    rest = train(small_cache, tmp_path / "split", TrainConfig(), RunOptions(quiet=True, device="cpu", resume=True), log=lambda _: None)
    assert first.losses + rest.losses == full.losses  # the recorded exclusion and weights, bit for bit
    recorded = json.loads((tmp_path / "split" / "config.json").read_text())["training"]
    assert recorded["exclude"]["excluded"] == ok_ids(small_cache)[:1] + ok_ids(small_cache)[3:4]
    write_table(small_cache, table, lambda i: 0.5)
    one_line_error(avfeat("train-head", small_cache, "--out", tmp_path / "split", "--resume", "--device", "cpu", "--quiet"),
                   "--exclude table", "changed since", "--overwrite")


def test_the_command_prints_the_count_and_records_both_tables(small_cache, tmp_path):
    table = write_table(small_cache, tmp_path / "audit.parquet", lambda i: 0.3 if i in (2, 5) else 0.95)
    heads = tmp_path / "heads"
    args = [a for a in TRAIN if a != "--quiet"]
    result = avfeat("train-head", small_cache, "--out", heads, *args, "--epochs", 1, "--exclude", table, "--min-correspondence", 0.4, "--weight-by", table, check=0)
    assert f"excluded 2 of 8 videos: p_match below --min-correspondence 0.4 in {table.resolve()}" in result.stderr.splitlines()
    training = json.loads((heads / "config.json").read_text())["training"]
    assert training["exclude"]["path"] == training["weight_by"]["path"] == str(table.resolve())
    assert training["min_correspondence"] == 0.4 and len(training["exclude"]["excluded"]) == 2


# ---- bad input: one line each ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tables(small_cache, tmp_path_factory):
    """Good and bad audit tables of the small cache."""
    folder = tmp_path_factory.mktemp("audit_tables")
    config = json.loads((small_cache / "cache.json").read_text())
    config.pop("avfeat_version")
    layout = open_for_writing(folder / "other_cache", config)  # another cache: one video, failed
    with ShardWriter(layout, 0, config["audio_dim"], config["visual_tokens"], config["visual_dim"], attrs={}) as writer:
        writer.add_failure(new_record("a", "/x/a.mp4", 0, 0.0), "no_audio", "no audio stream")
    with Cache(folder / "other_cache") as other:
        write_audit(folder / "other.parquet", [AuditRow(video_id="a", path="/x/a.mp4", p_match=0.9, correspondence=0.0, offset=0.0, p_sync=1.0)], other)
    (folder / "text.parquet").write_text("video_id,p_match\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"video_id": ok_ids(small_cache), "p_match": [1.0] * 8}), folder / "plain.parquet")  # Parquet, but no audit
    return {
        "good": write_table(small_cache, folder / "good.parquet", lambda i: 0.9),
        "lacking": write_table(small_cache, folder / "lacking.parquet", lambda i: 0.9, drop=1),
        "low": write_table(small_cache, folder / "low.parquet", lambda i: 0.2),
        "zero": write_table(small_cache, folder / "zero.parquet", lambda i: 0.0),
        "nan_table": write_table(small_cache, folder / "nan.parquet", lambda i: float("nan")),
        "other": folder / "other.parquet", "text": folder / "text.parquet", "plain": folder / "plain.parquet",
    }


@pytest.mark.parametrize("args, fragments", [
    (["--exclude", "other"], ["describes another cache", "run `avfeat audit` on this cache"]),
    (["--weight-by", "other"], ["describes another cache"]),
    (["--exclude", "lacking"], ["lacks 1 videos of the cache"]),
    (["--weight-by", "text"], ["cannot be read as Parquet"]),
    (["--exclude", "plain"], ["is not an audit table"]),
    (["--exclude", "good", "--min-correspondence", "nan"], ["--min-correspondence must be a finite number at least 0 and at most 1 (got nan)"]),
    (["--exclude", "good", "--min-correspondence", "1.5"], ["--min-correspondence must be a finite number at least 0 and at most 1 (got 1.5)"]),
    (["--min-correspondence", "0.3"], ["--min-correspondence needs --exclude"]),
    (["--exclude", "low"], ["--exclude left 0 training video(s): 8 of 8 have p_match below --min-correspondence 0.5"]),
    (["--weight-by", "zero"], ["every training video p_match 0"]),
    (["--weight-by", "nan_table"], ["is damaged", "no p_match in [0, 1]"]),
])
def test_bad_audit_input_is_one_line(small_cache, tmp_path, tables, args, fragments):
    args = [str(tables.get(a, a)) for a in args]
    one_line_error(avfeat("train-head", small_cache, "--out", tmp_path / "heads", *TRAIN, *args), *fragments)
    assert not (tmp_path / "heads" / "config.json").exists()


@pytest.mark.slow  # two training processes: 40 s on 2 cores
def test_two_processes_train_like_one_with_weights_and_exclusion(small_cache, tmp_path):
    from .test_distributed import TRAIN as TRAIN_2, assert_same_run

    table = write_table(small_cache, tmp_path / "audit.parquet", lambda i: [0.9, 0.3, 0.1, 1.0, 0.6, 0.8, 0.5, 0.7][i])
    audit = ["--exclude", table, "--min-correspondence", 0.2, "--weight-by", table]
    avfeat("train-head", small_cache, "--out", tmp_path / "one", *TRAIN_2, *audit, threads=1, check=0)
    avfeat("train-head", small_cache, "--out", tmp_path / "two", *TRAIN_2, *audit, "--nproc", 2, threads=1, check=0)
    assert_same_run(tmp_path / "one", tmp_path / "two")  # each rank weights its own rows: the mean over ranks is the whole loss
