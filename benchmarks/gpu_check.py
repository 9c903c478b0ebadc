"""GPU check: run every GPU path once, time-boxed, and print ONE JSON object of figures.

    make gpu-check                                   # = python3 benchmarks/gpu_check.py
    python benchmarks/gpu_check.py --peak-tflops 989 --out gpu-check.json
    python benchmarks/gpu_check.py --smoke                # smoke test on a CPU (~1.5-2 min): --device cpu --small

Stages (each in its own child process with its own time box, all within ``--budget`` seconds;
a stage that fails or runs out of time is recorded in the JSON under its name as
``{"error": ...}`` and the others still run):

- ``corpus``: synthetic videos written by ``avfeat.data.synth.make_corpus`` (parallel parts);
- ``extract``: ``avfeat extract --device cuda --dtype bfloat16`` with ``random:hubert-base`` +
  ``random:dinov2-base`` (one small warm-up run first): frames/s, audio-seconds/s, share of the
  bf16 peak (from the ``backbones`` stage's FLOP counts);
- ``backbones``: the two backbones alone in bfloat16 on batches already on the device: FLOPs per
  frame and per audio-second (``torch.utils.flop_counter.FlopCounterMode`` on one forward),
  frames/s, audio-seconds/s and share of the peak (``--peak-tflops``, default the H100/H200
  dense bf16 figure, 989 TFLOP/s);
- ``train``: ``avfeat train-head --device cuda`` on that cache: windows/s (epochs after the
  first, from metrics.jsonl), peak memory (``torch.cuda.max_memory_allocated``);
- ``index``: ``avfeat index`` on the cache and heads: build seconds, counts, chosen indexes;
- ``searcher``: a warm ``avfeat.index.Searcher``: median latency of queries by a media file,
  audio side and visual side, after one warm-up;
- ``scores``: the chunked max-mean (``pairwise_scores``) against the naive one that
  materialises (B, B, T, N), at B = 512, forward and forward + backward, under the training's
  bfloat16 autocast on CUDA; a naive variant that cannot fit in free GPU memory is reported so;
- ``faiss``: the automatic index choice (``build_faiss``) over clustered unit vectors with
  faiss-gpu when it sees a GPU, else faiss-cpu (the JSON says which): build seconds, recall,
  queries/s batched and one at a time.

Needs only what a stock CUDA PyTorch image has (torch, transformers, numpy, h5py, pyarrow, typer,
tqdm, matplotlib, safetensors) plus PyAV and a faiss wheel. avfeat itself need not be installed:
when ``import avfeat.extract`` does not resolve to this checkout, the script builds a folder of
symbolic links that maps the packages as pyproject.toml does and puts it on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from _bench import parse, parser

REPO = Path(__file__).resolve().parents[1]
STAGES = ("corpus", "backbones", "extract", "train", "index", "searcher", "audit", "scores", "faiss")
# Stages that need another's output.
NEEDS = {"extract": "corpus", "train": "extract", "index": "train", "searcher": "index", "audit": "train"}
H100_BF16_DENSE_TFLOPS = 989.0
MIN_STAGE_SECONDS = 15  # a stage is not started with less of the budget left


# ---- the only imports of avfeat internals: a refactor that moves one adjusts it here --------


def internal(name: str):
    """An avfeat object the check uses beyond the CLI and ``avfeat.index.Searcher``."""
    import importlib

    where = {
        "build_random": "avfeat.extract.models",  # random:<arch> -> (transformers model, processor)
        "pairwise_scores": "avfeat.align.scores",  # the chunked all-pairs max-mean
        "build_faiss": "avfeat.index.build",  # the automatic FAISS choice + tuning
        "set_search_params": "avfeat.index.build",
        "place": "avfeat.index.shards",  # shards -> one searchable index (on the GPUs when there)
    }
    return getattr(importlib.import_module(where[name]), name)


# ---- sizes -----------------------------------------------------------------------------------


@dataclass
class Sizes:
    videos: int = 256
    seconds: float = 8.0
    frame_size: int = 224
    audio_model: str = "random:hubert-base"
    visual_model: str = "random:dinov2-base"
    fps: float = 2.0
    extract_batch: int = 128
    warmup_videos: int = 4
    model_batch_frames: int = 64
    model_batch_clips: int = 8
    model_clip_seconds: float = 10.0
    model_seconds: float = 8.0  # timed seconds per backbone
    train_batch: int = 128
    train_steps: int = 240
    train_passes: int = 60  # steps per epoch = passes x (training videos // batch)
    window: float = 2.0
    dim: int = 256
    search_queries: int = 20
    scores_b: int = 512
    scores_t: int = 100  # 2 s of HuBERT tokens
    scores_frames: int = 4  # 2 s at 2 fps
    scores_patches: int = 256  # DINOv2 at 224: 16 x 16
    scores_d: int = 256
    scores_repeats: int = 3
    faiss_n: int = 1_000_000
    faiss_dim: int = 256
    faiss_queries: int = 10_000
    faiss_single: int = 200
    # Time boxes (seconds) per stage; the whole run is also capped by --budget.
    boxes: dict | None = None

    def __post_init__(self):
        default = {"corpus": 120, "backbones": 120, "extract": 180, "train": 150, "index": 90, "searcher": 90, "audit": 90, "scores": 120, "faiss": 150}
        self.boxes = {**default, **(self.boxes or {})}


def small_sizes() -> Sizes:
    """Tiny random models and a few short videos: a CPU smoke test of every stage."""
    return Sizes(
        videos=8, seconds=3.0, frame_size=112, audio_model="random:hubert-tiny", visual_model="random:dinov2-tiny",
        extract_batch=16, warmup_videos=2, model_batch_frames=4, model_batch_clips=2, model_clip_seconds=2.0,
        model_seconds=0.5, train_batch=4, train_steps=6, train_passes=3, window=1.0, dim=32, search_queries=3,
        scores_b=16, scores_t=50, scores_frames=2, scores_patches=16, scores_d=32, scores_repeats=2,
        faiss_n=5_000, faiss_dim=64, faiss_queries=200, faiss_single=20,
        boxes={"corpus": 60, "backbones": 60, "extract": 90, "train": 90, "index": 60, "searcher": 60, "audit": 60, "scores": 60, "faiss": 60},
    )


# ---- making avfeat importable without installing it ------------------------------------------


def package_dirs() -> dict[str, str]:
    """pyproject's ``package-dir`` map, e.g. {"avfeat": "avfeat", "avfeat.extract": "extract"}."""
    text = (REPO / "pyproject.toml").read_text()
    line = next((l for l in text.splitlines() if l.strip().startswith("package-dir")), "")
    found = dict(re.findall(r'"(avfeat(?:\.\w+)?)"\s*=\s*"([^"]+)"', line))
    return found or {"avfeat": "avfeat"}


def _imports_this_checkout(python: str, env: dict) -> bool:
    code = "import avfeat.extract, avfeat.index, avfeat.align, avfeat.data; print(avfeat.extract.__file__)"
    child = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env, cwd=str(REPO))
    return child.returncode == 0 and Path(child.stdout.strip()).resolve().is_relative_to(REPO)


def importable_env(work: Path, force_shim: bool = False) -> tuple[dict, str]:
    """Environment for the stage processes in which ``import avfeat`` is this checkout."""
    env = dict(os.environ)
    if not force_shim and _imports_this_checkout(sys.executable, env):
        return env, "installed (this checkout)"
    shim = work / "import-shim"
    root = shim / "avfeat"
    root.mkdir(parents=True, exist_ok=True)
    dirs = package_dirs()
    for entry in (REPO / dirs.get("avfeat", "avfeat")).iterdir():
        if entry.name != "__pycache__":
            (root / entry.name).symlink_to(entry)
    for package, folder in dirs.items():
        if package != "avfeat":
            (root / package.split(".", 1)[1]).symlink_to(REPO / folder, target_is_directory=True)
    env["PYTHONPATH"] = os.pathsep.join([str(shim), *filter(None, [env.get("PYTHONPATH")])])
    if not _imports_this_checkout(sys.executable, env):
        raise RuntimeError("avfeat is not importable even through the symlink folder; run `pip install --no-deps -e .`")
    return env, f"symlink folder on PYTHONPATH ({shim}), mapped as pyproject.toml's package-dir"


# ---- helpers used inside stages --------------------------------------------------------------


def cli(*args) -> str:
    """Run one avfeat command in this process, as ``python -m avfeat ARGS`` would; returns its
    stdout. A user error or a non-zero exit raises RuntimeError with the message."""
    import contextlib
    import io

    from avfeat.cli import app
    from avfeat.core.errors import AvfeatError

    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            app(args=[str(a) for a in args], prog_name="avfeat")
    except SystemExit as exit_:
        if exit_.code not in (None, 0):
            raise RuntimeError(f"avfeat {args[0]} exited with {exit_.code}: {out.getvalue().strip()[-500:]}") from None
    except AvfeatError as error:
        raise RuntimeError(f"avfeat {args[0]}: {error}") from None
    return out.getvalue()


def sig(x: float, digits: int = 4) -> float:
    """``x`` to ``digits`` significant digits (figures of tiny CPU models stay readable)."""
    return float(f"{x:.{digits}g}")


def sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed_rate(fn, device, target_seconds: float, min_iters: int = 3, max_iters: int = 500) -> tuple[float, int]:
    """Seconds per call of ``fn`` after two warm-up calls, timed over about ``target_seconds``."""
    fn(), fn()
    sync(device)
    started = time.perf_counter()
    fn()
    sync(device)
    one = max(time.perf_counter() - started, 1e-6)
    iters = int(min(max_iters, max(min_iters, target_seconds / one)))
    started = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - started) / iters, iters


def peak_memory(device) -> dict:
    import torch

    if torch.device(device).type == "cuda":
        return {"peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3), "peak_memory_source": "torch.cuda.max_memory_allocated"}
    import resource

    return {"peak_memory_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3), "peak_memory_source": "ru_maxrss of the process (CPU)"}


# ---- stages: each takes the run context and returns a dict of figures ------------------------


def _corpus_part(folder: str, videos: int, seconds: float, seed: int, size: int) -> None:
    from avfeat.data.synth import make_corpus

    make_corpus(folder, videos=videos, seconds=seconds, classes=8, seed=seed, size=size)


def stage_corpus(ctx: dict) -> dict:
    from concurrent.futures import ProcessPoolExecutor

    s = Sizes(**ctx["sizes"])
    folder = Path(ctx["work"]) / "corpus"
    parts = max(1, min(s.videos, (os.cpu_count() or 2) - 1, 16))
    per = [s.videos // parts + (i < s.videos % parts) for i in range(parts)]
    started = time.perf_counter()
    with ProcessPoolExecutor(parts) as pool:
        jobs = [pool.submit(_corpus_part, str(folder / f"part{i:02d}"), n, s.seconds, i, s.frame_size) for i, n in enumerate(per) if n]
        for job in jobs:
            job.result()
    paths = sorted(str(p) for p in folder.rglob("*.mp4"))
    return {"videos": len(paths), "seconds_each": s.seconds, "frame_size": s.frame_size, "processes": parts,
            "generate_s": round(time.perf_counter() - started, 2), "folder": str(folder)}


def stage_extract(ctx: dict) -> dict:
    s = Sizes(**ctx["sizes"])
    work = Path(ctx["work"])
    corpus = work / "corpus"
    paths = sorted(str(p) for p in corpus.rglob("*.mp4"))
    warm_list = work / "warmup.txt"
    warm_list.write_text("\n".join(paths[: s.warmup_videos]) + "\n")
    workers = max(1, min(12, (os.cpu_count() or 2) - 2))
    common = ["--audio-model", s.audio_model, "--visual-model", s.visual_model, "--fps", s.fps, "--device", ctx["device"],
              "--dtype", ctx["dtype"], "--batch-size", s.extract_batch, "--workers", workers, "--quiet"]
    started = time.perf_counter()
    cli("extract", warm_list, "--out", work / "cache-warmup", *common)  # CUDA context, kernels, allocator
    warm_s = time.perf_counter() - started
    started = time.perf_counter()
    summary = cli("extract", corpus, "--out", work / "cache", *common)
    wall_s = time.perf_counter() - started
    # The job's own time (after the models are built): "... wrote X in S s" in its summary.
    found = re.search(r"\bin ([0-9.]+) s\b", summary)
    job_s = float(found.group(1)) if found else None
    info = json.loads(cli("info", work / "cache", "--json"))
    frames, media_s = info["frames"], info["media_hours"] * 3600
    seconds = job_s or wall_s
    return {
        "models": f"{s.audio_model} + {s.visual_model}", "dtype": ctx["dtype"], "fps": s.fps, "decode_workers": workers,
        "batch_size": s.extract_batch, "videos": info["videos"], "status_counts": info.get("status_counts"),
        "frames": frames, "audio_seconds": round(media_s, 1), "warmup_run_s": round(warm_s, 2), "wall_s": round(wall_s, 2),
        "job_s": job_s, "rates_over": "job_s (the job after model loading)" if job_s else "wall_s (job time not found in the summary)",
        "frames_per_s": sig(frames / seconds), "audio_seconds_per_s": sig(media_s / seconds),
        "cache_bytes": info.get("bytes"),
    }


def stage_backbones(ctx: dict) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    s = Sizes(**ctx["sizes"])
    device, dtype = torch.device(ctx["device"]), getattr(torch, ctx["dtype"])
    build_random = internal("build_random")
    peak = ctx["peak_tflops"] * 1e12
    out = {"dtype": ctx["dtype"], "flops_counted_with": "torch.utils.flop_counter.FlopCounterMode, one forward"}
    generator = torch.Generator().manual_seed(0)
    for family, spec in (("visual", s.visual_model), ("audio", s.audio_model)):
        model, processor = build_random(spec)
        model = model.to(device=device, dtype=dtype).eval()
        params = sum(p.numel() for p in model.parameters())
        if family == "visual":
            crop = getattr(processor, "crop_size", None) or {"height": 224, "width": 224}
            x = torch.randn(s.model_batch_frames, 3, crop["height"], crop["width"], generator=generator)
            units, unit = s.model_batch_frames, "frame"
            call = lambda x=x.to(device, dtype), m=model: m(pixel_values=x)  # noqa: E731
        else:
            x = 0.1 * torch.randn(s.model_batch_clips, int(16000 * s.model_clip_seconds), generator=generator)
            units, unit = s.model_batch_clips * s.model_clip_seconds, "audio_second"
            call = lambda x=x.to(device, dtype), m=model: m(input_values=x)  # noqa: E731
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:  # not inference_mode: HuBERT's weight-norm parametrization fails under it there
            call()
        flops = counter.get_total_flops() / units
        with torch.inference_mode():
            per_call, iters = timed_rate(call, device, s.model_seconds)
        rate = units / per_call
        out[family] = {
            "model": spec, "params_m": sig(params / 1e6), "batch": f"{units:g} {unit}s", f"gflops_per_{unit}": sig(flops / 1e9),
            f"{unit}s_per_s": sig(rate), "tflops_achieved": sig(flops * rate / 1e12), "share_of_peak": sig(flops * rate / peak, 3),
            "timed_calls": iters,
        }
        del model, call
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def stage_train(ctx: dict) -> dict:
    import torch

    s = Sizes(**ctx["sizes"])
    work = Path(ctx["work"])
    heads = work / "heads"
    started = time.perf_counter()
    cli("train-head", work / "cache", "--out", heads, "--device", ctx["device"], "--batch-size", s.train_batch,
        "--steps", s.train_steps, "--passes-per-epoch", s.train_passes, "--window", s.window, "--dim", s.dim, "--quiet")
    wall_s = time.perf_counter() - started
    records = [json.loads(line) for line in (heads / "metrics.jsonl").read_text().splitlines() if line.strip()]
    batch = json.loads((heads / "config.json").read_text()).get("training", {}).get("batch_size", s.train_batch)
    steady = records[1:] or records  # the first epoch carries the warm-up (kernels, allocator)
    steps = records[-1]["step"] - (records[0]["step"] if len(records) > 1 else 0)
    train_s = sum(r["seconds"] for r in steady)
    out = {
        "device": ctx["device"], "batch_size": batch, "window_s": s.window, "dim": s.dim, "epochs": len(records), "steps": records[-1]["step"],
        "wall_s": round(wall_s, 2), "windows_per_s": sig(steps * batch / train_s), "steps_per_s": sig(steps / train_s),
        "rate_over": "epochs after the first (training steps only, validation excluded)" if len(records) > 1 else "the only epoch",
        "final_train_loss": round(records[-1]["train_loss"], 4),
    }
    if "val" in records[-1]:
        out["val_r1"] = {k: round(v["R@1"], 3) for k, v in records[-1]["val"].items()}
    out.update(peak_memory(ctx["device"]))
    if torch.device(ctx["device"]).type == "cuda":
        out["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return out


def stage_index(ctx: dict) -> dict:
    work = Path(ctx["work"])
    started = time.perf_counter()
    cli("index", work / "cache", "--heads", work / "heads", "--out", work / "index", "--quiet")
    wall_s = time.perf_counter() - started
    meta = json.loads((work / "index" / "meta.json").read_text())
    out = {"wall_s": round(wall_s, 2), "faiss": faiss_backend()}
    for modality, info in meta.get("modalities", {}).items():
        out[modality] = {k: info.get(k) for k in ("count", "factory", "params", "build_seconds")}
    return out


def stage_searcher(ctx: dict) -> dict:
    import numpy as np

    from avfeat.index import Searcher

    s = Sizes(**ctx["sizes"])
    work = Path(ctx["work"])
    started = time.perf_counter()
    searcher = Searcher(work / "index", device=ctx["device"])
    out = {"open_s": round(time.perf_counter() - started, 2), "device": ctx["device"], "queries": s.search_queries}
    query = sorted((work / "corpus").rglob("*.mp4"))[-1]
    out["query"] = f"{query.name}, {s.seconds:g} s, {s.frame_size}px"
    for side in ("audio", "visual"):
        searcher.search(query, side=side, k=10)  # warm-up
        times = []
        for _ in range(s.search_queries):
            started = time.perf_counter()
            hits = searcher.search(query, side=side, k=10)
            times.append((time.perf_counter() - started) * 1000)
        out[f"{side}_query_ms"] = {"median": round(statistics.median(times), 2), "min": round(min(times), 2), "max": round(max(times), 2), "hits": len(hits)}
    dim = searcher.meta["dim"]
    vectors = np.random.default_rng(0).standard_normal((1000, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    searcher.search_vectors(vectors[:10], "visual")
    started = time.perf_counter()
    searcher.search_vectors(vectors, "visual", k=10)
    out["search_vectors_per_s"] = sig(len(vectors) / (time.perf_counter() - started))
    return out


def stage_audit(ctx: dict) -> dict:
    """`avfeat audit` of the extracted cache with the trained heads (projections and the sync
    search's products on the device)."""
    import pyarrow.parquet as pq

    work = Path(ctx["work"])
    started = time.perf_counter()
    cli("audit", work / "cache", "--heads", work / "heads", "--out", work / "audit.parquet", "--device", ctx["device"], "--overwrite", "--quiet")
    wall_s = time.perf_counter() - started
    rows = pq.read_table(work / "audit.parquet").to_pylist()
    hours = sum(r["duration"] for r in rows) / 3600
    return {"device": ctx["device"], "videos": len(rows), "media_hours": round(hours, 4), "wall_s": round(wall_s, 2),
            "seconds_per_media_hour": sig(wall_s / hours) if hours else None}


def stage_scores(ctx: dict) -> dict:
    import torch

    s = Sizes(**ctx["sizes"])
    device = torch.device(ctx["device"])
    pairwise_scores = internal("pairwise_scores")
    b, t, f, p, d = s.scores_b, s.scores_t, s.scores_frames, s.scores_patches, s.scores_d
    n = f * p
    amp = device.type == "cuda"  # as train-head: bfloat16 autocast on CUDA, float32 on the CPU
    element = 2 if amp else 4
    g = torch.Generator().manual_seed(0)
    audio0 = torch.nn.functional.normalize(torch.randn(b, t, d, generator=g), dim=-1).to(device)
    visual0 = torch.nn.functional.normalize(torch.randn(b, f, 1 + p, d, generator=g), dim=-1).to(device)

    def naive(audio, visual):  # max_mean_naive of align/scores.py: materialises (B, B, T, N)
        return torch.einsum("atd,vnd->avtn", audio, visual[..., 1:, :].flatten(-3, -2)).max(dim=-1).values.mean(dim=-1)

    def chunked(audio, visual):
        return pairwise_scores(audio, visual, "max-mean")

    out = {"geometry": {"B": b, "T": t, "N": n, "frames": f, "patches": p, "D": d},
           "compute": "bfloat16 autocast (as train-head on CUDA)" if amp else "float32",
           "naive_bytes_gib": sig(b * b * t * n * element / 2**30, 3)}
    results = {}
    for name, fn in (("chunked", chunked), ("naive", naive)):
        for mode in ("forward", "forward_backward"):
            key = f"{name}_{mode}"
            if name == "naive" and device.type == "cuda":
                need = b * b * t * n * element * (1 if mode == "forward" else 2)
                free = torch.cuda.mem_get_info()[0]
                if need > 0.95 * free:
                    out[key] = {"would_not_fit": True, "needs_gib": round(need / 2**30, 1), "free_gib": round(free / 2**30, 1)}
                    continue
            audio = audio0.clone().requires_grad_(mode != "forward")
            visual = visual0.clone().requires_grad_(mode != "forward")

            def step():
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp), torch.set_grad_enabled(mode != "forward"):
                    scores = fn(audio, visual)
                if mode != "forward":
                    scores.float().sum().backward()
                return scores

            try:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                times = []
                for i in range(s.scores_repeats + 1):
                    sync(device)
                    started = time.perf_counter()
                    scores = step()
                    sync(device)
                    if i:  # the first call is the warm-up
                        times.append(time.perf_counter() - started)
                    results[key] = scores.detach().float()
                    del scores
                out[key] = {"ms": round(min(times) * 1000, 2)}
                if device.type == "cuda":
                    out[key]["peak_gib"] = round((torch.cuda.max_memory_allocated() - base) / 2**30, 2)
            except torch.cuda.OutOfMemoryError as error:
                out[key] = {"out_of_memory": str(error).splitlines()[0][:200]}
            finally:
                audio = visual = None
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    for mode in ("forward", "forward_backward"):
        c, nv = out.get(f"chunked_{mode}", {}), out.get(f"naive_{mode}", {})
        if "ms" in c and "ms" in nv:
            out[f"naive_over_chunked_{mode}"] = round(nv["ms"] / c["ms"], 3)
    if "chunked_forward" in results and "naive_forward" in results:
        out["max_abs_difference"] = float((results["chunked_forward"] - results["naive_forward"]).abs().max())
    return out


def faiss_backend() -> dict:
    import faiss

    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    built_for_gpu = hasattr(faiss, "StandardGpuResources")
    name = "faiss-gpu" if gpus else ("faiss-gpu build, no GPU visible" if built_for_gpu else "faiss-cpu")
    return {"backend": name, "version": getattr(faiss, "__version__", "?"), "gpus": gpus}


def stage_faiss(ctx: dict) -> dict:
    import numpy as np

    s = Sizes(**ctx["sizes"])
    build_faiss, place, set_search_params = internal("build_faiss"), internal("place"), internal("set_search_params")

    def clustered(n: int, seed: int, centres: int = 5000) -> np.ndarray:
        """Unit vectors around random centres: data with the cluster structure IVF relies on."""
        rng = np.random.default_rng(seed)
        middle = np.random.default_rng(99).standard_normal((centres, s.faiss_dim), dtype=np.float32)
        x = middle[rng.integers(centres, size=n)] + 0.6 * rng.standard_normal((n, s.faiss_dim), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    vectors, queries = clustered(s.faiss_n, 0), clustered(s.faiss_queries, 1)
    built = build_faiss(vectors, queries=clustered(1000, 2))
    index = place(built.shards)
    set_search_params(index, built.params)
    index.search(queries[:10], 10)  # warm-up
    started = time.perf_counter()
    index.search(queries, 10)
    batched = len(queries) / (time.perf_counter() - started)
    started = time.perf_counter()
    for q in queries[: s.faiss_single]:
        index.search(q[None], 10)
    single = s.faiss_single / (time.perf_counter() - started)
    return {**faiss_backend(), "vectors": s.faiss_n, "dim": s.faiss_dim, "data": "clustered unit vectors (5000 centres)",
            "factory": built.factory, "params": built.params, "recall_at_10": built.recall_at_10,
            "build_s": round(built.build_seconds, 2), "queries": len(queries), "queries_per_s_batched": sig(batched),
            "queries_per_s_single": sig(single)}


STAGE_FUNCTIONS = {name: globals()[f"stage_{name}"] for name in STAGES}


# ---- the driver ------------------------------------------------------------------------------


def run_stage_child(name: str, context: Path, result: Path) -> int:
    """Child mode: run one stage and write its figures (or its error) as JSON."""
    ctx = json.loads(context.read_text())
    try:
        figures = STAGE_FUNCTIONS[name](ctx)
    except Exception as error:  # recorded, not raised: the parent goes on with the other stages
        import traceback

        traceback.print_exc()
        figures = {"error": f"{type(error).__name__}: {str(error).strip().splitlines()[-1] if str(error).strip() else ''}"[:600]}
    result.write_text(json.dumps(figures))
    return 0


def run_stage(name: str, ctx: dict, env: dict, timeout: float) -> dict:
    """One stage in a child process of its own session, killed with its workers at ``timeout``."""
    work = Path(ctx["work"])
    context, result, log = work / f"{name}.context.json", work / f"{name}.result.json", work / "logs" / f"{name}.log"
    log.parent.mkdir(exist_ok=True)
    context.write_text(json.dumps(ctx))
    result.unlink(missing_ok=True)
    started = time.perf_counter()
    with open(log, "w") as stderr:
        child = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--stage", name, "--context", str(context), "--result", str(result)],
                                 stdout=stderr, stderr=stderr, env=env, cwd=str(REPO), start_new_session=True)
        try:
            child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)  # the stage's own process group (decode workers too)
            child.wait()
            figures = {"error": f"timed out after {timeout:.0f} s (time box)"}
        else:
            if result.exists():
                figures = json.loads(result.read_text())
            else:
                tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-3:]
                figures = {"error": f"stage process exited with {child.returncode}: " + " | ".join(tail)[-600:]}
    try:  # workers a crashed stage may have left behind
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    figures["stage_s"] = round(time.perf_counter() - started, 1)
    return figures


def environment(device: str) -> dict:
    """Versions and the GPU, read in a child process: CUDA is never initialised in this driver,
    so the stages find the whole GPU memory free."""
    code = """
import json, os, platform, sys, torch
info = {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(), "device": sys.argv[1]}
if sys.argv[1].startswith("cuda") and torch.cuda.is_available():
    index = torch.device(sys.argv[1]).index or 0
    props = torch.cuda.get_device_properties(index)
    info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda, gpus=torch.cuda.device_count())
try:
    import transformers
    info["transformers"] = transformers.__version__
except ImportError:
    pass
print(json.dumps(info))
"""
    child = subprocess.run([sys.executable, "-c", code, device], capture_output=True, text=True, timeout=120)
    if child.returncode != 0:
        return {"error": (child.stderr.strip().splitlines() or ["?"])[-1][:300]}
    return json.loads(child.stdout)


def main(argv: list[str] | None = None) -> int:
    options = parser(__doc__)
    options.add_argument("--device", default="cuda", help="cuda (default), cuda:1, or cpu (with --small, a smoke test)")
    options.add_argument("--dtype", default="bfloat16", help="extraction and backbone compute dtype")
    options.add_argument("--small", action="store_true", help="tiny random models, a few short videos (CPU smoke test)")
    options.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS,
                         help="peak dense bf16 TFLOP/s the FLOP rates are divided by (default 989: H100/H200 SXM)")
    options.add_argument("--budget", type=float, default=465.0, help="seconds for the stages (default 465: under 8 min in all)")
    options.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    options.add_argument("--work", type=Path, help="working folder (default: a temporary one, removed afterwards)")
    options.add_argument("--keep", action="store_true", help="keep the working folder (corpus, cache, heads, index, logs)")
    options.add_argument("--out", type=Path, help="also write the JSON to this file")
    options.add_argument("--shim", action="store_true", help="import avfeat through the symlink folder even when it is installed")
    options.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)  # child mode
    options.add_argument("--context", type=Path, help=argparse.SUPPRESS)
    options.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parse(options, smoke=dict(device="cpu", small=True), argv=argv)  # --smoke: exactly --device cpu --small
    if args.stage:
        return run_stage_child(args.stage, args.context, args.result)

    started = time.perf_counter()
    chosen = [name for name in STAGES if name in set(args.stages.split(","))]
    sizes = small_sizes() if args.small else Sizes()
    work = Path(args.work or tempfile.mkdtemp(prefix="avfeat-gpu-check-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "check": "avfeat GPU check (benchmarks/gpu_check.py)", "mode": "small" if args.small else "full",
        "peak_assumption": f"{args.peak_tflops:g} TFLOP/s dense bf16"
        + (" (H100/H200 SXM spec sheet, no sparsity)" if args.peak_tflops == H100_BF16_DENSE_TFLOPS else " (--peak-tflops)"),
    }
    try:
        report["environment"] = environment(args.device)
        if args.device.startswith("cuda") and "gpu" not in report["environment"]:
            report["error"] = f"--device {args.device}: torch sees no CUDA GPU (use --smoke, i.e. --device cpu --small, for a smoke test)"
            print(json.dumps(report, indent=2))
            return 1
        env, report["environment"]["avfeat_import"] = importable_env(work, force_shim=args.shim)
        ctx = {"work": str(work), "device": args.device, "dtype": args.dtype, "peak_tflops": args.peak_tflops, "sizes": asdict(sizes)}
        for name in chosen:
            left = args.budget - (time.perf_counter() - started)
            need = NEEDS.get(name)  # a stage not chosen this run may have left its output in --work
            if need and "error" in report.get(need, {}):
                report[name] = {"error": f"skipped: needs the {need} stage, which failed"}
            elif left < MIN_STAGE_SECONDS:
                report[name] = {"error": f"skipped: {left:.0f} s of the {args.budget:.0f} s budget left"}
            if name in report:
                continue
            print(f"gpu-check: {name} (box {min(sizes.boxes[name], left):.0f} s) ...", file=sys.stderr, flush=True)
            report[name] = run_stage(name, ctx, env, min(sizes.boxes[name], left))
            print(f"gpu-check: {name} done in {report[name]['stage_s']} s" + (f": {report[name]['error']}" if "error" in report[name] else ""),
                  file=sys.stderr, flush=True)
        extract, backbones = report.get("extract", {}), report.get("backbones", {})
        if "frames_per_s" in extract and "visual" in backbones and "audio" in backbones:
            flops = extract["frames_per_s"] * backbones["visual"]["gflops_per_frame"] * 1e9
            flops += extract["audio_seconds_per_s"] * backbones["audio"]["gflops_per_audio_second"] * 1e9
            extract["tflops_achieved"] = sig(flops / 1e12)
            extract["share_of_peak"] = sig(flops / (args.peak_tflops * 1e12), 3)
            extract["flops_from"] = "backbones stage: FLOPs per frame and per audio-second x these rates"
            # The backbones alone, one after the other on one device, per second of video at --fps.
            model_only = 1 / (1 / backbones["audio"]["audio_seconds_per_s"] + extract["fps"] / backbones["visual"]["frames_per_s"])
            extract["model_only_media_seconds_per_s"] = sig(model_only)
            extract["e2e_over_model_only"] = sig(extract["audio_seconds_per_s"] / model_only, 3)  # << 1: decoding is the bound
    finally:
        report["total_s"] = round(time.perf_counter() - started, 1)
        report["failed_stages"] = [name for name in chosen if "error" in report.get(name, {})]
        if args.keep or args.work:
            report["work"] = str(work)
        else:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 1 if report["failed_stages"] else 0


if __name__ == "__main__":
    sys.exit(main())
