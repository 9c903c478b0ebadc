"""Training from disk against training from memory. Prints figures; asserts nothing.

Builds a synthetic cache (tiny random backbones), then runs `train-head`'s own step loop
(``Trainer.epoch_batches`` + ``Trainer.train_step``, one epoch's plan per timed loop, so a
streaming epoch pays for starting its DataLoader) twice on the same recipe:
- memory: the default, tokens loaded once and windows gathered in memory;
- stream: ``RunOptions(memory_limit=0)``, every batch read from the HDF5 shards by DataLoader workers.

Printed: steps/s of each (best of ``--repeats`` interleaved epochs), their ratio, and the bytes
read from disk per step: the ``rchar`` rise (bytes through read/pread syscalls, page cache
included) of this process while it builds the epoch's batches in process with the streaming
dataset, next to the bytes of the tokens one step actually needs.

    python benchmarks/stream.py                     # 120 videos x 4 s at 5 fps, CPU
    python benchmarks/stream.py --h5py              # and the per-window h5py reader it replaced
    python benchmarks/stream.py --smoke             # 6 videos of 2 s, both readers: does it run?
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from _bench import machine, parse, parser, timed


def rchar() -> int:
    with open("/proc/self/io") as handle:
        for line in handle:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    return 0


def make_trainer(cache: Path, out: Path, args, memory_limit: int | None):
    from avfeat.align.config import RunOptions, TrainConfig
    from avfeat.align.train import Trainer

    config = TrainConfig(window=args.window, dim=args.dim, head="linear", batch_size=args.batch_size, epochs=1,
                         passes_per_epoch=args.passes, val_fraction=0.2, lr=1e-3, temporal_negatives=args.temporal_negatives, min_shift=1.0)
    options = RunOptions(device=args.device, quiet=True, overwrite=True, memory_limit=memory_limit, workers=args.workers)
    return Trainer(cache, out, config, options, log=lambda _: None)


def epoch_rate(trainer) -> float:
    """Steps/s of one epoch of the real step loop: sample the plan, read or gather, step."""
    from avfeat.align import data

    plan = data.epoch_plan(trainer.table, trainer.train_videos, trainer.batch_size, trainer.config.passes_per_epoch,
                           trainer.config.min_shift, trainer.generator)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)

    def epoch() -> None:
        for audio, visual, shifted in trainer.epoch_batches(plan):
            trainer.train_step(audio, visual, shifted)
        float(trainer.heads.logit_scale.detach().float().cpu())  # wait for the device

    seconds, _ = timed(epoch)
    return len(plan) / seconds


def bytes_per_step(trainer) -> dict:
    """rchar rise per step while this process builds one epoch's streamed batches, the bytes
    of the tokens a step needs, and the reader alone: batches/s built in this process."""
    from avfeat.align import data, streaming

    plan = data.epoch_plan(trainer.table, trainer.train_videos, trainer.batch_size, trainer.config.passes_per_epoch,
                           trainer.config.min_shift, torch.Generator().manual_seed(99))
    ids = data.plan_ids(plan, trainer.config.temporal_negatives)
    dataset = streaming.StreamBatches(trainer.cache_path, trainer.table, ids)
    dataset[0]  # open the shards outside the count

    def read_epoch() -> int:
        """Build every batch (one at a time: an epoch's batches need not fit in memory) → their bytes."""
        needed = 0
        for s in range(len(dataset)):
            audio, visual = dataset[s]
            needed += audio.nbytes + visual.nbytes
        return needed

    before = rchar()
    seconds, needed = timed(read_epoch)
    return {"read_per_step": (rchar() - before) / len(dataset), "needed_per_step": needed / len(dataset), "reader_batches_per_s": len(dataset) / seconds}


def h5py_reads(self, window_ids):
    """The reader before direct reads: ``Cache.read_windows``, two h5py slices per window."""
    from avfeat.align.windows import Window
    from avfeat.data.cache import Cache

    if getattr(self, "_h5py_cache", None) is None or self._h5py_pid != os.getpid():
        self._h5py_cache, self._h5py_pid = Cache(self.cache_path), os.getpid()
    table = self.table
    windows = [Window(table.video_ids[table.video[w]], int(table.frame[w]), int(table.audio[w]), 0.0, 0.0) for w in window_ids]
    return self._h5py_cache.read_windows(windows, table.geometry)


def measure(trainers: dict, args) -> dict:
    """Best steps/s of each trainer over interleaved epochs; the "h5py" trainer streams with
    the per-window h5py reader swapped in (DataLoader workers fork, so they inherit it)."""
    from avfeat.align import streaming

    direct = streaming.StreamBatches.read
    rates = {name: [] for name in trainers}
    for repeat in range(args.repeats + 1):  # the first round warms up
        for name, trainer in trainers.items():
            streaming.StreamBatches.read = h5py_reads if name == "h5py" else direct
            try:
                rate = epoch_rate(trainer)
            finally:
                streaming.StreamBatches.read = direct
            if repeat:
                rates[name].append(rate)
    return rates


def main() -> None:
    options = parser(__doc__, repeats=3, repeats_help="interleaved epochs of each (the best counts; one more warms up)")
    options.add_argument("--cache", type=Path, help="an existing cache (default: build a synthetic one)")
    options.add_argument("--videos", type=int, default=120)
    options.add_argument("--seconds", type=float, default=4.0)
    options.add_argument("--fps", type=float, default=5.0)
    options.add_argument("--window", type=float, default=1.5)
    options.add_argument("--dim", type=int, default=64)
    options.add_argument("--batch-size", type=int, default=32)
    options.add_argument("--passes", type=int, default=10, help="passes per epoch (an epoch is passes x steps per pass)")
    options.add_argument("--temporal-negatives", action="store_true")
    options.add_argument("--workers", type=int, default=2)
    options.add_argument("--h5py", action="store_true", help="also stream with the per-window h5py reader (the reader before direct reads)")
    options.add_argument("--device", default="cpu")
    options.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    # --smoke streams with both readers and temporal negatives: every read path, at toy sizes.
    args = parse(options, smoke=dict(videos=6, seconds=2.0, fps=2.0, window=1.0, dim=16, batch_size=4, passes=1, workers=1,
                                     h5py=True, temporal_negatives=True))
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"# {machine()}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"device {args.device}, {args.workers} workers")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.cache:
            cache = args.cache
        else:
            from avfeat.testing.recipes import build_cache

            seconds, (_, cache) = timed(lambda: build_cache(tmp, videos=args.videos, seconds=args.seconds, classes=10, fps=args.fps))
            print(f"# built the cache: {args.videos} videos x {args.seconds:g} s at {args.fps:g} fps in {seconds:.0f} s")
        trainers = {"memory": make_trainer(cache, tmp / "memory", args, None), "stream": make_trainer(cache, tmp / "stream", args, 0)}
        if args.h5py:
            trainers["h5py"] = make_trainer(cache, tmp / "h5py", args, 0)
        assert trainers["memory"].in_memory and not trainers["stream"].in_memory
        rates = measure(trainers, args)  # interleaved, so drifting machine load hits all alike
        stream = trainers["stream"]
        result = {
            "batch_size": stream.batch_size, "steps_per_epoch": stream.config.passes_per_epoch * len(stream.train_videos) // stream.batch_size,
            "data_mb": stream.data_bytes / 2**20, "rates": rates, "steps_per_s": {k: max(v) for k, v in rates.items()},
        }
        import avfeat.align.streaming as streaming

        direct = streaming.StreamBatches.read
        for name in [n for n in trainers if n != "memory"]:
            streaming.StreamBatches.read = h5py_reads if name == "h5py" else direct
            result.setdefault("io", {})[name] = bytes_per_step(trainers[name])
            streaming.StreamBatches.read = direct
        memory_rate = result["steps_per_s"]["memory"]
        print(f"memory: {memory_rate:.2f} steps/s (B={result['batch_size']}, {result['steps_per_epoch']} steps an epoch, {result['data_mb']:.1f} MB of tokens)")
        for name in [n for n in trainers if n != "memory"]:
            io = result["io"][name]
            label = "stream (direct reads)" if name == "stream" else "stream (h5py per window, the reader before)"
            print(f"{label}: {result['steps_per_s'][name]:.2f} steps/s, ratio to memory {result['steps_per_s'][name] / memory_rate:.3f}; "
                  f"read per step {io['read_per_step'] / 2**20:.2f} MB (rchar), tokens needed {io['needed_per_step'] / 2**20:.2f} MB; "
                  f"the reader alone {io['reader_batches_per_s']:.0f} batches/s in one process")
        print(json.dumps(result))


if __name__ == "__main__":
    main()
