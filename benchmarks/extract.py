"""Extraction throughput: decode-only, model-only, end to end, and a naive per-video loop.

Prints figures and ratios; asserts nothing. All four paths run on the same videos in one
process run, each repeated ``--repeats`` times; medians are reported.

    python benchmarks/extract.py                       # synthetic corpus, real-size random models
    python benchmarks/extract.py --media ../shared/media --device cuda --dtype bfloat16
    python benchmarks/extract.py --ray                 # also the Ray Data pipeline (avfeat[ray])
    python benchmarks/extract.py --smoke               # 2 tiny videos, tiny models: does it run?
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from _bench import machine, median_time, parse, parser, print_figures, work_folder


def decode_all(paths, spec, workers):
    from avfeat.data.shards import new_record
    from avfeat.extract.inputs import video_id
    from avfeat.extract.tasks import DecodeTask, decode_task
    from avfeat.extract.workers import DecodePool

    tasks = [DecodeTask(new_record(video_id(p), str(p), 0, 0.0), spec) for p in paths]
    with DecodePool(decode_task, workers=workers, timeout=600) as pool:
        return [media for _, media in pool.imap(tasks)]


def model_only(extractor, decoded, modality: str):
    """One backbone over pre-decoded videos, in the groups the job forms."""
    from avfeat.extract.encoder import encode_audio_group, encode_visual_group
    from avfeat.extract.tasks import encode_groups

    batch_size, encoder = extractor.options.batch_size, extractor.encoder
    for group in encode_groups([len(media.frames) for media in decoded], batch_size):
        medias = [decoded[i] for i in group]
        if modality == "audio":
            encode_audio_group(encoder.audio, medias, batch_size)
        else:
            encode_visual_group(encoder.visual, medias, batch_size)


def ray_run(extractor, inputs, out):
    """The job as a Ray Data pipeline on the Ray started by main (startup not timed)."""
    return extractor.run(inputs, out, ray_address="local")


def naive_loop(paths, audio_spec, visual_spec, fps, device):
    """What a user would write: per clip, transformers processors + models, no batching or overlap."""
    import av
    import torch

    from avfeat.extract.models import build_random

    audio_model, audio_processor = build_random(audio_spec.removeprefix("random:"))
    visual_model, visual_processor = build_random(visual_spec.removeprefix("random:"))
    audio_model.to(device).eval()
    visual_model.to(device).eval()
    with torch.inference_mode():
        for path in paths:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                rate = float(stream.average_rate or 25)
                step = max(1, int(round(rate / fps)))
                images = [f.to_image() for i, f in enumerate(container.decode(video=0)) if i % step == 0]
            with av.open(str(path)) as container:
                resampler = av.AudioResampler(format="flt", layout="mono", rate=16000)
                chunks = [r.to_ndarray().reshape(-1) for f in container.decode(audio=0) for r in resampler.resample(f)]
                wave = np.concatenate(chunks)
            pixels = visual_processor(images=images, return_tensors="pt")["pixel_values"].to(device)
            visual_model(pixel_values=pixels)
            values = audio_processor(wave, sampling_rate=16000, return_tensors="pt")["input_values"].to(device)
            audio_model(values)


def main() -> None:
    options = parser(__doc__, repeats=3)
    options.add_argument("--media", type=Path, help="folder of videos (default: a synthetic corpus)")
    options.add_argument("--videos", type=int, default=8)
    options.add_argument("--seconds", type=float, default=10.0)
    options.add_argument("--size", type=int, default=224, help="frame size of the synthetic videos (pixels)")
    options.add_argument("--audio-model", default="random:hubert-base")
    options.add_argument("--visual-model", default="random:dinov2-small")
    options.add_argument("--fps", type=float, default=1.0)
    options.add_argument("--workers", type=int, default=2)
    options.add_argument("--batch-size", type=int, default=32)
    options.add_argument("--shard-size", type=int, default=64)
    options.add_argument("--device", default="auto")
    options.add_argument("--dtype", default="auto")
    options.add_argument("--skip-naive", action="store_true")
    options.add_argument("--ray", action="store_true", help="also time the job as a Ray Data pipeline on a local Ray")
    args = parse(options, smoke=dict(videos=2, seconds=2.0, size=64, audio_model="random:hubert-tiny", visual_model="random:dinov2-tiny",
                                     workers=1, batch_size=8))

    import torch

    from avfeat.data.synth import make_corpus
    from avfeat.extract.inputs import list_inputs
    from avfeat.extract.encoder import ExtractConfig
    from avfeat.extract.job import Extractor, RunOptions

    work = work_folder(None, "avfeat-bench-")
    if not args.media:
        make_corpus(work / "videos", videos=args.videos, seconds=args.seconds, classes=4, seed=0, size=args.size)
    inputs = list_inputs(str(args.media or work / "videos"))
    paths = [item.path for item in inputs]
    config = ExtractConfig(audio_model=args.audio_model, visual_model=args.visual_model, fps=args.fps)
    options = RunOptions(
        batch_size=args.batch_size, workers=args.workers, device=args.device, dtype=args.dtype, shard_size=args.shard_size, quiet=True
    )
    extractor = Extractor(config, options)
    device, dtype = extractor.encoder.device, extractor.encoder.dtype  # the encoder resolved "auto"

    decode_s, decoded = median_time(lambda: decode_all(paths, extractor.encoder.spec, args.workers), args.repeats)
    media_seconds = sum(m.duration for m in decoded)
    frames = sum(len(m.frames) for m in decoded)
    model_s = {}
    for modality in ("audio", "visual"):
        model_only(extractor, decoded, modality)  # warm-up (allocations, lazy kernels)
        model_s[modality], _ = median_time(lambda: model_only(extractor, decoded, modality), args.repeats)

    runs = iter(range(1000))
    e2e_s, _ = median_time(lambda: extractor.run(inputs, work / f"cache-{next(runs)}"), args.repeats)

    ray_s = None
    if args.ray:
        import ray

        ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        ray_s, _ = median_time(lambda: ray_run(extractor, inputs, work / f"cache-{next(runs)}"), args.repeats)
        ray.shutdown()

    naive_s = None
    if not args.skip_naive and args.audio_model.startswith("random:") and args.visual_model.startswith("random:"):
        naive_s, _ = median_time(lambda: naive_loop(paths, args.audio_model, args.visual_model, args.fps, device), args.repeats)

    figures = {
        "machine": f"{machine()}, {torch.get_num_threads()} torch threads" + (f", {torch.cuda.get_device_name()}" if device.startswith("cuda") else ""),
        "device": device,
        "dtype": dtype,
        "videos": len(paths),
        "media_seconds": round(media_seconds, 1),
        "frames": frames,
        "workers": args.workers,
        "shard_size": args.shard_size,
        "decode_s": round(decode_s, 3),
        "decode_media_seconds_per_s_per_worker": round(media_seconds / decode_s / max(1, args.workers), 1),
        "audio_model_s": round(model_s["audio"], 3),
        "audio_model_media_seconds_per_s": round(media_seconds / model_s["audio"], 1),
        "visual_model_s": round(model_s["visual"], 3),
        "visual_model_frames_per_s": round(frames / model_s["visual"], 1),
        "model_s": round(sum(model_s.values()), 3),
        "e2e_s": round(e2e_s, 3),
        "e2e_over_max_decode_model": round(e2e_s / max(decode_s, sum(model_s.values())), 3),
        "e2e_frames_per_s": round(frames / e2e_s, 1),
        "e2e_media_seconds_per_s": round(media_seconds / e2e_s, 1),
    }
    if ray_s is not None:
        figures["ray_e2e_s"] = round(ray_s, 3)
        figures["ray_over_local"] = round(ray_s / e2e_s, 2)
    if naive_s is not None:
        figures["naive_s"] = round(naive_s, 3)
        figures["naive_over_ours"] = round(naive_s / e2e_s, 2)
    print_figures(figures)


if __name__ == "__main__":
    main()
