"""Several training processes (gloo on the CPU) give the one-process run on the same global
batches: the gathered loss and its gradients, whole runs through `--nproc` and torchrun,
resume, the errors, and what the `--nproc` launcher does when one process fails."""

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.distributed.elastic.utils.distributed import get_free_port

from avfeat.align import distributed
from avfeat.align.heads import AVHeads, HeadConfig
from avfeat.align.config import RunOptions, TrainConfig
from avfeat.align.train import train, window_loss
from avfeat.core.errors import AvfeatError, InputError

from avfeat.testing.runner import run_avfeat_process as avfeat
from .test_align_cli import one_line_error

# 6 training videos (8, a quarter held out): global batches of 4, one step per epoch, so every
# line of metrics.jsonl is one step's loss. Temporal negatives and both regularisers are on:
# every part of the loss must come out the same when the batch is split.
TRAIN = ["--window", 1, "--dim", 16, "--batch-size", 4, "--passes-per-epoch", 1, "--epochs", 5, "--lr", 1e-2,
         "--val-fraction", 0.25, "--temporal-negatives", "--offdiag-weight", 0.1, "--centroid-weight", 0.1, "--device", "cpu"]
LOSS_CONFIG = TrainConfig(temporal_negatives=True, offdiag_weight=0.3, centroid_weight=0.2, batch_size=6)


def losses(folder):
    return [json.loads(line)["train_loss"] for line in (folder / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(one, many, rel=1e-5, atol=1e-5):
    """Per-step losses within ``rel`` of each other; heads within ``atol``."""
    assert len(losses(one)) == len(losses(many)) == 5
    for a, b in zip(losses(one), losses(many)):
        assert abs(a - b) <= rel * abs(a), (losses(one), losses(many))
    heads_one, heads_many = load_file(one / "heads.safetensors"), load_file(many / "heads.safetensors")
    assert heads_one.keys() == heads_many.keys()
    for name in heads_one:
        torch.testing.assert_close(heads_many[name], heads_one[name], rtol=0, atol=atol)


# ---- the gathered loss on fixed tensors ------------------------------------------------------


def fixed_batch():
    """Heads and a batch of 6 windows plus their shifted twins (one twin missing)."""
    torch.manual_seed(0)
    heads = AVHeads(HeadConfig(audio_dim=8, visual_dim=12, dim=6))
    g = torch.Generator().manual_seed(1)
    audio = torch.randn(12, 5, 8, generator=g)  # 6 windows then their 6 shifted twins
    visual = torch.randn(12, 2, 5, 12, generator=g)  # 2 frames of CLS + 4 patches
    shifted = torch.tensor([True, True, False, True, True, True])
    return heads, audio, visual, shifted


def gradients(heads):
    return {name: p.grad.clone() for name, p in heads.named_parameters()}


def _rank_loss(rank: int, world: int, folder: str) -> None:
    """One rank of the gathered-loss test: its share of the fixed batch, loss, averaged grads."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        heads, audio, visual, shifted = fixed_batch()
        group = distributed.Group(device=torch.device("cpu"), rank=rank, world_size=world)
        share = group.share_of(6)
        twins = slice(6 + share.start, 6 + share.stop)
        mine = lambda x: torch.cat([x[share], x[twins]])  # noqa: E731
        out = window_loss(heads, mine(audio), mine(visual), LOSS_CONFIG, shifted[share], group)
        out.loss.backward()
        group.average_gradients(heads.parameters())
        torch.save({"loss": group.mean(out.loss.detach()), "local": out.loss.detach(), "grads": gradients(heads)}, f"{folder}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_gathered_loss_and_gradients_equal_the_one_process_ones(tmp_path):
    heads, audio, visual, shifted = fixed_batch()
    out = window_loss(heads, audio, visual, LOSS_CONFIG, shifted)
    out.loss.backward()
    assert set(out.parts) == {"offdiag", "centroid"}

    torch.multiprocessing.spawn(_rank_loss, args=(2, str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for result in ranks:
        torch.testing.assert_close(result["loss"], out.loss.detach(), rtol=1e-6, atol=0)
        for name, grad in gradients(heads).items():
            torch.testing.assert_close(result["grads"][name], grad, rtol=1e-5, atol=1e-6, msg=name)
    # Each rank's own loss covers only its rows, so agreeing above is not a coincidence.
    assert abs(float(ranks[0]["local"] - ranks[1]["local"])) > 1e-3


# ---- whole runs --------------------------------------------------------------------------


def test_two_processes_train_like_one(small_cache, tmp_path):
    one = avfeat("train-head", small_cache, "--out", tmp_path / "one", *TRAIN, threads=1, check=0)
    # The two ranks stream their shares from HDF5; the one process holds the tokens in memory.
    two = avfeat("train-head", small_cache, "--out", tmp_path / "two", *TRAIN, "--nproc", 2, "--memory-limit", 0, "--workers", 0, threads=1, check=0)
    assert "world size" not in one.stderr
    assert "world size 2 (gloo): global batch 4, 2 windows per process" in two.stderr
    assert two.stderr.count("streaming windows") == 1 and two.stdout.count("wrote") == 1  # rank 0 alone speaks
    assert_same_run(tmp_path / "one", tmp_path / "two")
    records = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["processes"] for r in records] == [2] * 5 and all("val" in r for r in records)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # one checkpoint folder per run
    assert {p.name for p in (tmp_path / "two").iterdir()} == {p.name for p in (tmp_path / "one").iterdir()}
    config_one, config_two = (json.loads((tmp_path / run / "config.json").read_text()) for run in ("one", "two"))
    assert config_one["training"] == config_two["training"] and config_one["split"] == config_two["split"]


def test_torchrun_trains_like_nproc(small_cache, tmp_path):
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--log-dir", tmp_path / "logs", "-m", "avfeat", "train-head", small_cache, "--out", tmp_path / "torchrun", *TRAIN, "--quiet"]
    result = subprocess.run(list(map(str, command)), capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    avfeat("train-head", small_cache, "--out", tmp_path / "nproc", *TRAIN, "--quiet", "--nproc", 2, threads=1, check=0)
    assert_same_run(tmp_path / "nproc", tmp_path / "torchrun", rel=1e-6, atol=1e-6)


# Mean-pool scores: the two ranks sum the loss in another order than one process (last-bit
# differences), and max-mean's max over patches turns such a difference into another gradient
# wherever two patches nearly tie: on the float32 test cache the losses then part by 7e-4 from
# the third epoch, resumed or not. Without the max they agree within 2e-7, so what is checked
# here is the resume itself.
RESUME_CONFIG = dict(aggregation="mean-pool", window=1.0, dim=16, batch_size=4, passes_per_epoch=1, epochs=4, lr=1e-2, val_fraction=0.25)


def _resume_rank(rank: int, world: int, cache: str, out: str, ports: tuple[int, int]) -> None:
    """One rank of a run stopped after 2 epochs, then resumed to the end."""
    torch.set_num_threads(1)
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world)})
    config = TrainConfig(**RESUME_CONFIG)
    results = []
    for port, options in zip(ports, (RunOptions(quiet=True, device="cpu", stop_after=2), RunOptions(quiet=True, device="cpu", resume=True))):
        os.environ["MASTER_PORT"] = str(port)
        results.append(train(cache, out, config, options, log=lambda _: None))
    torch.save({"losses": results[0].losses + results[1].losses, "epochs": [r["epoch"] for r in results[1].history]}, f"{out}.rank{rank}.pt")


def test_resume_under_two_processes_continues_the_run(small_cache, tmp_path):
    config = TrainConfig(**RESUME_CONFIG)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the ranks
    try:
        full = train(small_cache, tmp_path / "full", config, RunOptions(quiet=True, device="cpu"), log=lambda _: None)
    finally:
        torch.set_num_threads(threads)

    ports = (get_free_port(), get_free_port())
    torch.multiprocessing.spawn(_resume_rank, args=(2, str(small_cache), str(tmp_path / "split"), ports), nprocs=2)
    ranks = [torch.load(tmp_path / f"split.rank{r}.pt") for r in range(2)]
    assert ranks[0] == ranks[1]  # both ranks log the same global losses and history
    assert ranks[0]["epochs"] == [1, 2, 3, 4]
    assert ranks[0]["losses"] == pytest.approx(full.losses, rel=1e-5)
    heads_full, heads_split = load_file(tmp_path / "full" / "heads.safetensors"), load_file(tmp_path / "split" / "heads.safetensors")
    for name in heads_full:
        torch.testing.assert_close(heads_split[name], heads_full[name], rtol=0, atol=1e-5)


# ---- errors ------------------------------------------------------------------------------


def test_batch_not_divisible_by_the_processes_is_a_one_line_error(small_cache, tmp_path):
    result = avfeat("train-head", small_cache, "--out", tmp_path / "heads", *TRAIN, "--batch-size", 3, "--nproc", 2)
    one_line_error(result, "--batch-size 3 is not divisible by the 2 processes")
    assert not (tmp_path / "heads").exists()


def test_a_setup_error_is_printed_once_not_once_per_process(small_cache, tmp_path):
    (tmp_path / "heads").mkdir()
    (tmp_path / "heads" / "mine.txt").write_text("keep")
    result = avfeat("train-head", small_cache, "--out", tmp_path / "heads", *TRAIN, "--nproc", 2, threads=1)
    one_line_error(result, "is a non-empty folder that is not an avfeat heads checkpoint")
    assert [p.name for p in (tmp_path / "heads").iterdir()] == ["mine.txt"]


def test_help_lists_nproc_and_the_flag_is_dropped_for_the_children():
    result = avfeat("train-head", "--help", check=0)
    assert "--nproc" in result.stdout and "torchrun" in result.stdout
    args = ["train-head", "c", "--nproc", "2", "--out", "o", "--nproc=3", "--dim", "8"]
    assert distributed.without_option(args, "--nproc") == ["train-head", "c", "--out", "o", "--dim", "8"]


# Rank 0 records its pid and waits; rank 1 fails once rank 0 is up (exit 3, or SIGKILL). Rank 0
# notes a SIGTERM in a file, then dies of it as it would have.
RANKS = """
import os, signal, sys, time
folder = sys.argv[1]
if os.environ["RANK"] == "0":
    def stopped(signum, frame):
        open(os.path.join(folder, "stopped"), "w").close()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    signal.signal(signal.SIGTERM, stopped)
    open(os.path.join(folder, "up"), "w").close()
    time.sleep(120)
    open(os.path.join(folder, "finished"), "w").close()
else:
    while not os.path.exists(os.path.join(folder, "up")):
        time.sleep(0.05)
    if sys.argv[2] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise SystemExit(3)
"""


@pytest.mark.parametrize("how, status", [("exit", 3), ("kill", 128 + 9)])
def test_the_launcher_stops_the_others_when_one_process_fails(tmp_path, how, status):
    import subprocess
    import time

    (tmp_path / "ranks.py").write_text(RANKS)
    launcher = f"import sys; from avfeat.align import distributed; sys.exit(distributed.launch([{str(tmp_path)!r}, {how!r}], 2, module='ranks'))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    began = time.monotonic()
    result = subprocess.run([sys.executable, "-c", launcher], capture_output=True, text=True, timeout=100, env=env)
    assert result.returncode == status, result.stderr
    assert time.monotonic() - began < 60  # rank 0 did not sleep its 120 s
    assert (tmp_path / "stopped").exists() and not (tmp_path / "finished").exists()  # terminated, not left running
    # no traceback, no torchrun report: a process killed by a signal gets one line, one that exited said why itself
    expected = ["ranks: error: process 1 of 2 was killed by SIGKILL"] if how == "kill" else []
    assert result.stderr.strip().splitlines() == expected, result.stderr


def test_the_failure_reported_is_the_one_that_stopped_the_others():
    from types import SimpleNamespace as Failure

    # rank 1 exited with 3; torchrun then terminated rank 0 within the same second
    failures = {1: Failure(exitcode=3, timestamp=100), 0: Failure(exitcode=-15, timestamp=100)}
    assert distributed.first_failure(failures)[0] == 1
    failures = {0: Failure(exitcode=1, timestamp=101), 1: Failure(exitcode=-9, timestamp=100), 2: Failure(exitcode=-15, timestamp=100)}
    assert distributed.first_failure(failures)[0] == 1


# ---- several machines (--nnodes) ---------------------------------------------------------


def two_nodes(*args) -> list[tuple[int, str, str]]:
    """``avfeat train-head ARGS`` as node 0 and node 1 of a run on loopback, one process each:
    (exit status, stdout, stderr) of each launcher."""
    import subprocess

    endpoint = f"127.0.0.1:{get_free_port()}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    nodes = []
    for rank in (0, 1):
        command = ["train-head", *args, "--nnodes", 2, "--node-rank", rank, "--nproc", 1, "--rdzv-endpoint", endpoint, "--rdzv-id", "test"]
        nodes.append(subprocess.Popen([sys.executable, "-m", "avfeat", *map(str, command)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    try:
        outputs = [node.communicate(timeout=300) for node in nodes]
    finally:
        for node in nodes:  # a hung rendezvous must not outlive the test
            if node.poll() is None:
                node.kill()
                node.wait()
    return [(node.returncode, out, err) for node, (out, err) in zip(nodes, outputs)]


@pytest.mark.slow
def test_two_nodes_on_loopback_train_like_one_process(small_cache, tmp_path):
    """Two "machines" (two launchers here, one process each) meet through c10d on loopback."""
    one = avfeat("train-head", small_cache, "--out", tmp_path / "one", *TRAIN, threads=1, check=0)
    assert "world size" not in one.stderr
    results = two_nodes(small_cache, "--out", tmp_path / "two", *TRAIN, "--memory-limit", 0, "--workers", 0)
    outputs = [(out, err) for _, out, err in results]
    assert [status for status, _, _ in results] == [0, 0], [err[-3000:] for _, err in outputs]
    stderr = "".join(err for _, err in outputs)
    assert stderr.count("world size 2 (gloo): global batch 4, 2 windows per process") == 1  # global rank 0 alone speaks
    assert "".join(out for out, _ in outputs).count("wrote") == 1
    assert_same_run(tmp_path / "one", tmp_path / "two")
    records = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["processes"] for r in records] == [2] * 5


@pytest.mark.slow
def test_a_setup_error_is_printed_on_every_node(small_cache, tmp_path):
    """Rank 0 may run on another machine: each machine's terminal shows the error once."""
    (tmp_path / "heads").mkdir()
    (tmp_path / "heads" / "mine.txt").write_text("keep")
    for status, out, err in two_nodes(small_cache, "--out", tmp_path / "heads", *TRAIN):
        assert status == 1 and out == ""
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("avfeat: error:") and "is a non-empty folder" in lines[0], err[-3000:]
    assert [p.name for p in (tmp_path / "heads").iterdir()] == ["mine.txt"]


@pytest.mark.parametrize("flags, words", [
    (["--nnodes", 0], ["--nnodes 0: must be 1 or more"]),
    (["--nnodes", -2], ["--nnodes -2"]),
    (["--nnodes", 2, "--node-rank", 0], ["--nnodes 2 needs --rdzv-endpoint HOST:PORT"]),
    (["--nnodes", 2, "--rdzv-endpoint", "127.0.0.1:29400"], ["--nnodes 2 needs --node-rank"]),
    (["--nnodes", 2, "--node-rank", 2, "--rdzv-endpoint", "127.0.0.1:29400"], ["--node-rank 2: must be from 0 to 1"]),
    (["--nnodes", 2, "--node-rank", -1, "--rdzv-endpoint", "127.0.0.1:29400"], ["--node-rank -1: must be from 0 to 1"]),
    (["--nnodes", 2, "--node-rank", 1, "--rdzv-endpoint", "127.0.0.1"], ["--rdzv-endpoint '127.0.0.1': expected HOST:PORT"]),
    (["--nnodes", 2, "--node-rank", 1, "--rdzv-endpoint", "host:70000"], ["expected HOST:PORT with a port from 1 to 65535"]),
    (["--nnodes", 2, "--node-rank", 1, "--rdzv-endpoint", "host:1", "--rdzv-id", " "], ["--rdzv-id is empty"]),
    (["--node-rank", 1], ["--node-rank is for a run over several machines"]),
    (["--rdzv-endpoint", "127.0.0.1:29400"], ["--rdzv-endpoint is for a run over several machines"]),
    (["--nnodes", 2, "--node-rank", 0, "--rdzv-endpoint", "127.0.0.1:29400", "--batch-size", 6, "--nproc", 2], ["--batch-size 6 is not divisible by the 4 processes"]),
])
def test_bad_node_options_are_one_line_errors(small_cache, tmp_path, flags, words):
    from avfeat.testing.runner import run_avfeat

    result = run_avfeat("train-head", small_cache, "--out", tmp_path / "heads", *TRAIN, *flags)
    one_line_error(result, *words)
    assert not (tmp_path / "heads").exists()


def test_the_node_flags_become_torchruns_rendezvous_and_are_dropped_for_the_children():
    nodes = distributed.Nodes(2, 1, "node0:29400", "job7")
    assert nodes.torchrun_args() == ["--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", "node0:29400", "--rdzv-id", "job7", "--rdzv-conf", "is_host=false"]
    assert distributed.Nodes(2, 0, "node0:29400").torchrun_args()[-3:] == ["avfeat", "--rdzv-conf", "is_host=true"]
    assert distributed.Nodes().torchrun_args() == ["--standalone"]
    args = ["train-head", "c", "--nnodes", "2", "--node-rank=1", "--rdzv-endpoint", "h:1", "--rdzv-id", "x", "--nproc", "2", "--dim", "8"]
    assert distributed.without_options(args, distributed.NODE_OPTIONS) == ["train-head", "c", "--dim", "8"]
    assert "--nnodes" in avfeat("train-head", "--help", check=0).stdout
    from avfeat.testing.runner import one_line_error as usage_error, run_avfeat

    usage_error(run_avfeat("train-head", "c", "--out", "o", "--nnodes", "nan"), "Invalid value for '--nnodes'")  # a usage error (status 2)


def _check_same_rank(rank: int, world: int, folder: str) -> None:
    """One rank of the check that every process sees the same cache: rank 1 sees another."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        group = distributed.Group(device=torch.device("cpu"), rank=rank, world_size=world, local_rank=rank)
        group.check_same({"the cache c": "same"})  # agreeing: passes
        try:
            group.check_same({"the cache c": f"fingerprint {rank}"})
            outcome = "passed"
        except distributed.PeerFailed:
            outcome = "peer"
        except AvfeatError as error:
            outcome = str(error)
        (Path(folder) / f"rank{rank}.txt").write_text(outcome)
    finally:
        torch.distributed.destroy_process_group()


def test_processes_that_see_another_cache_stop_with_one_line(tmp_path):
    """Machines without shared storage could see another cache (or none of the checkpoint) at
    the same path: the run stops instead of training on it silently."""
    torch.multiprocessing.spawn(_check_same_rank, args=(2, str(tmp_path)), nprocs=2)
    rank0, rank1 = ((tmp_path / f"rank{r}.txt").read_text() for r in range(2))
    assert rank0.startswith("the cache c differs between processes (rank 1 sees another than rank 0)"), rank0
    assert "storage they share, at the same path" in rank0
    assert rank1 == "peer"  # printed once, by rank 0


def test_a_store_gone_after_the_error_was_printed_adds_no_line(monkeypatch):
    """Machine 0's launcher, and the run's store with it, ends once its processes have printed the
    error; another machine's launcher may then fail to reach the store before it sees its own
    processes end. Its processes printed the error: the launcher adds nothing and exits 1."""
    import torch.distributed.run as torchrun
    from torch.distributed.elastic.rendezvous.api import RendezvousConnectionError

    def store_gone(printed):
        def main(args):
            if printed:
                distributed._note_reported()  # what a process does when it prints the run's error
            raise RendezvousConnectionError("The connection to the C10d store has failed.")
        return main

    nodes = distributed.Nodes(2, 1, "127.0.0.1:29400")
    monkeypatch.setattr(torchrun, "main", store_gone(printed=True))
    assert distributed.launch(["train-head"], 1, nodes=nodes) == 1
    assert distributed.LAUNCH_DIR not in os.environ
    monkeypatch.setattr(torchrun, "main", store_gone(printed=False))  # nothing printed: the launcher says why
    with pytest.raises(InputError, match=r"could not start 2 processes \(rendezvous at 127.0.0.1:29400, node 1 of 2\): The connection"):
        distributed.launch(["train-head"], 1, nodes=nodes)
