"""Head-training throughput and the cost of the chunked max-mean. Prints figures; asserts nothing.

1. Data overhead: steps/s of `train-head`'s own step loop (plan sampling, on-device gathers,
   forward, backward, AdamW) against a bare loop that runs the same loss + backward + AdamW on
   one batch already in memory. The ratio is the price of sampling and gathering windows.
2. Chunked max-mean against the naive broadcast einsum at B windows: time and peak memory of
   forward + backward (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the rise of the
   process's resident memory, sampled by a thread, in a fresh child process per variant).

    python benchmarks/train.py                         # CPU, a small synthetic cache
    python benchmarks/train.py --device cuda --batch-size 512 --videos 600
    python benchmarks/train.py --smoke                 # 4 videos of 2 s, a few steps: does it run?
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from _bench import interleaved, machine, parse, parser, timed


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def data_overhead(cache: Path, out: Path, args) -> dict:
    """Steps/s of the real step loop against a bare loss + backward loop on resident tensors."""
    from avfeat.align import data, schedule
    from avfeat.align.config import RunOptions, TrainConfig
    from avfeat.align.train import Trainer

    config = TrainConfig(window=args.window, dim=args.dim, head="linear", batch_size=args.batch_size, epochs=1, passes_per_epoch=1000, val_fraction=0.0, lr=1e-3)
    trainer = Trainer(cache, out, config, RunOptions(device=args.device, quiet=True, overwrite=True), log=lambda _: None)
    device = trainer.device
    passes = -(-(args.steps + args.warmup) // schedule.steps_per_pass(len(trainer.train_videos), trainer.batch_size))

    def plan(steps: int) -> data.Plan:
        return data.epoch_plan(trainer.table, trainer.train_videos, trainer.batch_size, passes, 1.0, trainer.generator, steps)

    # Each loop ends waiting for the device, so the next one's clock starts on an idle device.
    def trainer_loop(steps: int) -> None:
        """What `Trainer.run` does per epoch: sample the plan, gather, step."""
        for audio, visual, shifted in trainer.epoch_batches(plan(steps)):
            trainer.train_step(audio, visual, shifted)
        sync(device)

    audio, visual = trainer.source.gather(plan(1).windows[0])

    def bare_loop(steps: int) -> None:
        for _ in range(steps):
            trainer.train_step(audio, visual, None)
        sync(device)

    trainer_loop(args.warmup), bare_loop(args.warmup)
    times = interleaved({"trainer": lambda: trainer_loop(args.steps), "bare": lambda: bare_loop(args.steps)}, args.repeats)
    trainer_rate, bare_rate = args.steps / min(times["trainer"]), args.steps / min(times["bare"])
    return {
        "batch_size": trainer.batch_size, "in_memory": trainer.in_memory, "data_mb": trainer.data_bytes / 2**20,
        "trainer_steps_per_s": trainer_rate, "bare_steps_per_s": bare_rate,
        "windows_per_s": trainer_rate * trainer.batch_size, "overhead_ratio": bare_rate / trainer_rate,
    }


class RssPeak:
    """Peak rise of this process's resident memory, sampled every millisecond by a thread
    (large CPU tensors are mmapped, so freeing them lowers the RSS again)."""

    def __init__(self):
        import threading

        self.base = self.peak = self._rss()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    @staticmethod
    def _rss() -> int:
        import os

        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _watch(self) -> None:
        while not self._done.wait(0.001):
            self.peak = max(self.peak, self._rss())

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        return max(self.peak, self._rss()) - self.base


def _score_inputs(b: int, t: int, n: int, d: int, device: torch.device):
    g = torch.Generator(device="cpu").manual_seed(0)
    audio = torch.nn.functional.normalize(torch.randn(b, t, d, generator=g), dim=-1).to(device).requires_grad_()
    visual = torch.nn.functional.normalize(torch.randn(b, n, d, generator=g), dim=-1).to(device).requires_grad_()
    return audio, visual


def run_scores(variant: str, b: int, t: int, n: int, d: int, device_name: str, repeats: int) -> dict:
    """Time and peak memory of one max-mean variant, forward + backward."""
    from avfeat.align.scores import max_mean_chunked, max_mean_naive

    device = torch.device(device_name)
    fn = max_mean_chunked if variant == "chunked" else max_mean_naive
    audio, visual = _score_inputs(b, t, n, d, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        sampler = RssPeak()
    times = []
    for _ in range(repeats):
        sync(device)
        seconds, _ = timed(lambda: (fn(audio, visual).sum().backward(), sync(device)))
        times.append(seconds)
    peak = torch.cuda.max_memory_allocated(device) - base if device.type == "cuda" else sampler.stop()
    return {"seconds": min(times), "peak_bytes": peak}


def scores_comparison(args) -> dict:
    """Each variant in its own child process, so one's peak does not hide the other's."""
    geometry = dict(b=args.batch_size if args.device == "cuda" else 64, t=int(args.window * 50), n=int(args.window * args.fps) * 64, d=args.dim)
    out = {"geometry": geometry}
    for variant in ("chunked", "naive"):
        code = (
            "import json, sys, torch; sys.path.insert(0, %r); from train import run_scores; torch.set_num_threads(%d); "
            "print(json.dumps(run_scores(%r, %d, %d, %d, %d, %r, %d)))"
        ) % (str(Path(__file__).parent), torch.get_num_threads(), variant, geometry["b"], geometry["t"], geometry["n"], geometry["d"], args.device, args.repeats)
        child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        out[variant] = json.loads(child.stdout) if child.returncode == 0 else {"error": child.stderr.strip().splitlines()[-1]}
    if "error" not in out["naive"] and "error" not in out["chunked"]:
        out["time_ratio_naive_over_chunked"] = out["naive"]["seconds"] / out["chunked"]["seconds"]
        out["memory_ratio_naive_over_chunked"] = out["naive"]["peak_bytes"] / max(1, out["chunked"]["peak_bytes"])
    return out


def main() -> None:
    options = parser(__doc__, repeats=3, repeats_help="interleaved runs of each loop (the best counts)")
    options.add_argument("--cache", type=Path, help="an existing cache (default: build a synthetic one)")
    options.add_argument("--videos", type=int, default=80)
    options.add_argument("--seconds", type=float, default=4.0)
    options.add_argument("--fps", type=float, default=2.0)
    options.add_argument("--window", type=float, default=2.0)
    options.add_argument("--dim", type=int, default=64)
    options.add_argument("--batch-size", type=int, default=32)
    options.add_argument("--steps", type=int, default=20)
    options.add_argument("--warmup", type=int, default=3)
    options.add_argument("--device", default="cpu")
    options.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    args = parse(options, smoke=dict(videos=4, seconds=2.0, window=1.0, dim=16, batch_size=4, steps=2, warmup=1))
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"# {machine()}, torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}")
    if args.device.startswith("cuda"):
        print(f"# GPU: {torch.cuda.get_device_name(0)}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.cache:
            cache = args.cache
        else:
            from avfeat.testing.recipes import build_cache

            _, cache = build_cache(tmp, videos=args.videos, seconds=args.seconds, classes=10, fps=args.fps, size=112)
        overhead = data_overhead(cache, tmp / "heads", args)
        print(f"step loop: {overhead['trainer_steps_per_s']:.2f} steps/s ({overhead['windows_per_s']:.0f} windows/s) at B={overhead['batch_size']}, "
              f"bare loss+backward {overhead['bare_steps_per_s']:.2f} steps/s -> data overhead ratio {overhead['overhead_ratio']:.3f} "
              f"(tokens in memory: {overhead['in_memory']}, {overhead['data_mb']:.1f} MB)")
        scores = scores_comparison(args)
        g = scores["geometry"]
        for variant in ("chunked", "naive"):
            r = scores[variant]
            text = r.get("error") or f"{r['seconds'] * 1000:.1f} ms fwd+bwd, peak {r['peak_bytes'] / 2**20:.1f} MB"
            print(f"max-mean {variant:>7} at B={g['b']} T={g['t']} N={g['n']} D={g['d']}: {text}")
        if "time_ratio_naive_over_chunked" in scores:
            print(f"naive / chunked: time {scores['time_ratio_naive_over_chunked']:.2f}x, peak memory {scores['memory_ratio_naive_over_chunked']:.2f}x")
        print(json.dumps({"overhead": overhead, "scores": scores}))


if __name__ == "__main__":
    main()
