"""CPU inference paths of the backbones: float32, bfloat16 (where the CPU has it natively) and
int8 (dynamically quantized linears, ``--dtype int8``).

Prints the CPU's relevant flags, which path ``--dtype auto`` picks here, then per path the
visual rate (frames/s through DINOv2), the audio rate (audio-seconds/s through HuBERT), each
model's achieved FLOP/s as a share of the CPU's peak for the path (``_flops.py`` says how both
are counted) and the tokens' cosine against float32 on the same inputs (mean and min over
tokens). ``--profile`` adds each model's ops with the most CPU time per path. Asserts nothing.
Paths are timed interleaved (one repeat of each in turn) and medians reported, so a shared
machine's load drifts over all of them alike.

    python benchmarks/cpu_inference.py                      # random:hubert-base + random:dinov2-small
    python benchmarks/cpu_inference.py --isa avx2           # the same with torch's kernels held to AVX2
    python benchmarks/cpu_inference.py --json
    python benchmarks/cpu_inference.py --profile            # where the time goes, op by op
    python benchmarks/cpu_inference.py --smoke              # tiny models, 2 frames, 1 s of audio: does it run?

``--isa avx2`` re-runs this script with ATEN_CPU_CAPABILITY=avx2, MKL_ENABLE_INSTRUCTIONS=AVX2,
FBGEMM_ENABLE_INSTRUCTIONS=AVX2 and ONEDNN_MAX_CPU_ISA=AVX2: an emulation of an AVX2-only CPU
(no AVX-512, no VNNI, no bfloat16) on a newer one. It is not the real hardware (clocks, cache and
port counts differ), so it shows the ratio int8/float32 to expect there, not the absolute rates.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys

import numpy as np

from _bench import parse, parser, timed
from _flops import clock_ghz, count_flops, peak_flops, top_ops

FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def cpu_flags() -> dict:
    """The model name and which of :data:`FLAGS` /proc/cpuinfo lists (Linux; empty elsewhere)."""
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return {"model": platform.processor(), "flags": {}}
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    return {"model": model, "flags": {flag: flag in flags for flag in FLAGS}}


def synthetic_inputs(frames: int, seconds: float, sample_rate: int, size: int, seed: int = 0):
    """Structured (not white-noise) frames and audio: moving gradients and discs, a chord with
    a little noise, so the tokens are not those of noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    images = []
    for i in range(frames):
        t = i / max(1, frames)
        r = 127 + 120 * np.sin(6.28 * (xx + t))
        g = 127 + 120 * np.cos(6.28 * (yy - 2 * t))
        b = 255 * (((xx - 0.5 - 0.3 * np.cos(6.28 * t)) ** 2 + (yy - 0.5) ** 2) < 0.04)
        image = np.stack([r, g, b], axis=-1) + rng.normal(0, 8, (size, size, 3))
        images.append(np.clip(image, 0, 255).astype(np.uint8))
    n = int(seconds * sample_rate)
    time_axis = np.arange(n, dtype=np.float32) / sample_rate
    wave = sum(0.2 * np.sin(2 * np.pi * f * time_axis * (1 + 0.1 * np.sin(time_axis))) for f in (220.0, 330.0, 440.0))
    wave = (wave + rng.normal(0, 0.02, n)).astype(np.float32)
    return np.stack(images), wave


def cosines(a: np.ndarray, b: np.ndarray) -> dict:
    a = a.reshape(-1, a.shape[-1]).astype(np.float64)
    b = b.reshape(-1, b.shape[-1]).astype(np.float64)
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)
    return {"mean": float(cos.mean()), "min": float(cos.min())}


def main() -> None:
    options = parser(__doc__, repeats=3)
    options.add_argument("--audio-model", default="random:hubert-base")
    options.add_argument("--visual-model", default="random:dinov2-small")
    options.add_argument("--paths", default="float32,bfloat16,int8", help="comma-separated; bfloat16 is skipped where the CPU lacks it natively")
    options.add_argument("--frames", type=int, default=16, help="frames per repeat")
    options.add_argument("--audio-seconds", type=float, default=10.0, help="audio per repeat")
    options.add_argument("--batch-size", type=int, default=16)
    options.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    options.add_argument("--isa", choices=("native", "avx2"), default="native", help="avx2: emulate an AVX2-only CPU (see the module docstring)")
    options.add_argument("--json", action="store_true")
    options.add_argument("--profile", action="store_true", help="print each model's ops with the most CPU time, per path")
    options.add_argument("--ghz", type=float, default=None, help="the clock for the peak (default: cpu MHz of /proc/cpuinfo)")
    args = parse(options, smoke=dict(audio_model="random:hubert-tiny", visual_model="random:dinov2-tiny", frames=2, audio_seconds=1.0, batch_size=2))

    if args.isa == "avx2" and os.environ.get("AVFEAT_BENCH_ISA") != "avx2":
        env = {**os.environ, **AVX2_ENV, "AVFEAT_BENCH_ISA": "avx2"}
        sys.exit(subprocess.call([sys.executable, *sys.argv], env=env))

    import torch

    from avfeat.extract.encoder import resolve_dtype
    from avfeat.extract.models import load_audio_backbone, load_visual_backbone

    if args.threads:
        torch.set_num_threads(args.threads)
    emulated = os.environ.get("AVFEAT_BENCH_ISA") == "avx2"
    native_bf16 = bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()) and not emulated
    cpu = cpu_flags()
    report = {
        "cpu": cpu, "isa": "avx2 (emulated)" if emulated else "native", "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "quantized_engine": torch.backends.quantized.engine,
        "threads": torch.get_num_threads(), "native_bf16": native_bf16, "auto": resolve_dtype("auto", "cpu"),
        "models": [args.audio_model, args.visual_model], "frames": args.frames, "audio_seconds": args.audio_seconds, "paths": {},
    }
    if not args.json:
        print(f"cpu: {cpu['model']}  ({report['threads']} torch threads, torch {torch.__version__}, kernels {report['cpu_capability']}, isa {report['isa']})")
        print("flags: " + "  ".join(f"{flag}={'yes' if on else 'no'}" for flag, on in cpu["flags"].items()))
        print(f"native bfloat16: {native_bf16}; --dtype auto on cpu picks: {report['auto']}")

    paths = [p for p in args.paths.split(",") if p and not (p == "bfloat16" and not native_bf16)]
    if "float32" not in paths:
        paths.insert(0, "float32")
    backbones = {}
    for path in paths:
        audio = load_audio_backbone(args.audio_model, device="cpu", dtype=path)
        visual = load_visual_backbone(args.visual_model, device="cpu", dtype=path)
        backbones[path] = (audio, visual)
    audio0, visual0 = backbones["float32"]
    frames, wave = synthetic_inputs(args.frames, args.audio_seconds, audio0.sample_rate, visual0.input_size[0])

    def run(path):
        audio, visual = backbones[path]
        tv, v = timed(lambda: encode_visual(visual))
        ta, (a,) = timed(lambda: encode_audio(audio))
        return tv, ta, a, v

    encode_visual = lambda visual: visual.encode(frames, batch_size=args.batch_size)  # noqa: E731
    encode_audio = lambda audio: audio.encode([wave], batch_size=max(1, args.batch_size // 4))  # noqa: E731
    flops = {"visual": count_flops(lambda: encode_visual(visual0)), "audio": count_flops(lambda: encode_audio(audio0))}
    report["gflops_per_repeat"] = {side: round(count / 1e9, 3) for side, count in flops.items()}
    ghz = args.ghz or clock_ghz()
    tokens, times = {}, {path: ([], []) for path in paths}
    for path in paths:  # warm-up (first calls pack weights and pick kernels), also the tokens compared
        _, _, a, v = run(path)
        tokens[path] = (a, v)
    for _ in range(args.repeats):
        for path in paths:
            tv, ta, _, _ = run(path)
            times[path][0].append(tv)
            times[path][1].append(ta)
    for path in paths:
        tv, ta = statistics.median(times[path][0]), statistics.median(times[path][1])
        entry = {"frames_per_s": args.frames / tv, "audio_s_per_s": args.audio_seconds / ta,
                 "visual_gflop_per_s": flops["visual"] / tv / 1e9, "audio_gflop_per_s": flops["audio"] / ta / 1e9}
        peak, entry["peak_basis"] = peak_flops(path, cpu["flags"], report["threads"], ghz)
        if peak:
            entry["peak_gflop_per_s"] = peak / 1e9
            entry["visual_share_of_peak"] = flops["visual"] / tv / peak
            entry["audio_share_of_peak"] = flops["audio"] / ta / peak
        if args.profile:
            audio, visual = backbones[path]
            entry["profile"] = {"visual": top_ops(lambda: encode_visual(visual)), "audio": top_ops(lambda: encode_audio(audio))}
        if path != "float32":
            entry["audio_cosine"] = cosines(tokens[path][0], tokens["float32"][0])
            entry["visual_cosine"] = cosines(tokens[path][1], tokens["float32"][1])
        report["paths"][path] = entry
    base = report["paths"]["float32"]
    for entry in report["paths"].values():
        entry["visual_speedup"] = entry["frames_per_s"] / base["frames_per_s"]
        entry["audio_speedup"] = entry["audio_s_per_s"] / base["audio_s_per_s"]

    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"\nper repeat: visual {report['gflops_per_repeat']['visual']:.1f} GFLOP, audio {report['gflops_per_repeat']['audio']:.1f} GFLOP")
    print(f"\n{'path':<9} {'frames/s':>9} {'x f32':>6} {'audio-s/s':>10} {'x f32':>6} {'visual GFLOP/s':>15} {'audio GFLOP/s':>14}   cosine vs float32 (mean / min): visual, audio")
    for path, e in report["paths"].items():
        cos = ""
        if "visual_cosine" in e:
            vc, ac = e["visual_cosine"], e["audio_cosine"]
            cos = f"{vc['mean']:.5f} / {vc['min']:.5f},  {ac['mean']:.5f} / {ac['min']:.5f}"
        shares = [f"{e[side + '_gflop_per_s']:.1f} ({e[side + '_share_of_peak']:.1%})" if "peak_gflop_per_s" in e else f"{e[side + '_gflop_per_s']:.1f}"
                  for side in ("visual", "audio")]
        print(f"{path:<9} {e['frames_per_s']:>9.2f} {e['visual_speedup']:>6.2f} {e['audio_s_per_s']:>10.2f} {e['audio_speedup']:>6.2f} {shares[0]:>15} {shares[1]:>14}   {cos}")
    print("\n(share of peak) peaks: " + "; ".join(f"{path} {e.get('peak_gflop_per_s', float('nan')):.0f} GFLOP/s = {e['peak_basis']}" for path, e in report["paths"].items()))
    for path, e in report["paths"].items():
        for side, ops in e.get("profile", {}).items():
            print(f"\n{path} {side}: ops by self CPU time")
            for name, ms, share in ops:
                print(f"  {share:6.1%} {ms:9.1f} ms  {name}")


if __name__ == "__main__":
    main()
