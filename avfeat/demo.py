"""`avfeat demo`: the whole tool on a synthetic corpus, offline, with a report.

Stages, each kept in its own folder of DIR so every one can be inspected or rerun by hand:
``synth`` (videos + ground truth) → ``cache`` (tokens) → ``heads`` (checkpoint) → ``index``;
then example searches, a sync estimate, a locate query and `avfeat eval`, all summed up with
pictures in ``DIR/report.md``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

STAGE_DIRS = ("synth", "cache", "heads", "index", "queries", "figures")
DEMO_MARKER = ".avfeat-demo"  # says that a demo made this folder, so --overwrite may replace it


@dataclass
class DemoConfig:
    """The demo's recipe: sized to finish in a few minutes on a 2-core CPU."""

    videos: int = 200
    seconds: float = 6.0
    classes: int = 8
    seed: int = 0
    audio_model: str = "random:hubert-tiny"
    visual_model: str = "random:dinov2-tiny"
    fps: float = 5.0
    window: float = 1.5
    head: str = "mlp"
    dim: int = 64
    batch_size: int = 32
    lr: float = 1e-2
    epochs: int = 6
    passes_per_epoch: int = 10
    temporal_negatives: bool = True
    min_shift: float = 0.4
    val_fraction: float = 0.2
    sync_offset: float = 0.6  # injected into the separate sync example video (audio late)

    def train_config(self):
        """The heads' training recipe (benchmarks/storage.py trains on it too)."""
        from avfeat.align.config import TrainConfig

        return TrainConfig(
            window=self.window, head=self.head, dim=self.dim, batch_size=self.batch_size, lr=self.lr,
            epochs=self.epochs, passes_per_epoch=self.passes_per_epoch, temporal_negatives=self.temporal_negatives,
            min_shift=self.min_shift, val_fraction=self.val_fraction, seed=self.seed,
        )


class _Stages:
    """Numbered stage headers and their timings, for the console and the report."""

    def __init__(self, total: int, say: Callable[[str], None]):
        self.total, self.say, self.number = total, say, 0
        self.timings: list[tuple[str, float]] = []
        self._started: float | None = None
        self._name = ""

    def next(self, name: str) -> None:
        self._close()
        self.number += 1
        self._name, self._started = name, time.perf_counter()
        self.say(f"[{self.number}/{self.total}] {name}")

    def _close(self) -> None:
        if self._started is not None:
            self.timings.append((self._name, time.perf_counter() - self._started))
            self._started = None

    def finish(self) -> None:
        self._close()


def prepare_out(out: Path, overwrite: bool) -> None:
    """The shared output rule (``avfeat.core.outputs.prepare_output``): a non-empty folder is replaced
    only with ``overwrite`` and only when a demo made it, and then only the demo's own files go."""
    from avfeat.core.io import write_atomic
    from avfeat.core.outputs import prepare_output, stamped

    own = (*STAGE_DIRS, "report.md", DEMO_MARKER)
    prepare_output(out, marker=DEMO_MARKER, kind="demo", overwrite=overwrite, can_resume=False, own=own)
    note = "written by `avfeat demo`; `avfeat demo --overwrite` replaces this folder's demo files"
    write_atomic(out / DEMO_MARKER, json.dumps(stamped(out, "demo", own, {"note": note}), indent=2, sort_keys=True) + "\n")


def run_demo(out: Path, config: DemoConfig, quiet: bool = False, device: str = "auto", overwrite: bool = False,
             say: Callable[[str], None] | None = None) -> Path:
    """Run every stage into ``out`` and write ``out/report.md``; returns the report's path.

    ``say`` gets the console's lines: each stage's numbered header and, unless ``quiet``, what
    the stages report (the extraction summary, training, the metrics).

    The demo folder's writer lock is held throughout, from before ``--overwrite`` removes the
    previous demo's files (each stage's folder takes its own lock too)."""
    from avfeat.core.lock import writer_lock

    with writer_lock(out, "demo"):
        return _run_demo(out, config, quiet, device, overwrite, say or (lambda line: None))


def _run_demo(out: Path, config: DemoConfig, quiet: bool, device: str, overwrite: bool, say: Callable[[str], None]) -> Path:
    import pyarrow.parquet as pq

    from avfeat.align.checkpoint import load_checkpoint
    from avfeat.align.config import RunOptions as TrainOptions
    from avfeat.align.train import train
    from avfeat.data.cache import Cache
    from avfeat.data.synth import cut_clip, make_corpus
    from avfeat.evaluation import evaluate, format_report
    from avfeat.extract.inputs import list_inputs
    from avfeat.extract.encoder import ExtractConfig
    from avfeat.extract.job import Extractor
    from avfeat.extract.job import RunOptions as ExtractOptions
    from avfeat.index.build import build_index
    from avfeat.index.search import Searcher
    from avfeat.index.sync import plot_curve, sync_file

    prepare_out(out, overwrite)
    for name in ("queries", "figures"):
        (out / name).mkdir(exist_ok=True)
    stages = _Stages(total=7, say=say)
    log = (lambda line: None) if quiet else say

    stages.next(f"synthetic corpus: {config.videos} videos of {config.seconds:g} s, {config.classes} classes")
    make_corpus(out / "synth", videos=config.videos, seconds=config.seconds, classes=config.classes, seed=config.seed)
    truth = {row["path"]: row for row in pq.read_table(out / "synth" / "ground_truth.parquet").to_pylist()}

    stages.next(f"extract tokens with {config.audio_model} + {config.visual_model} at {config.fps:g} fps")
    extractor = Extractor(
        ExtractConfig(audio_model=config.audio_model, visual_model=config.visual_model, fps=config.fps),
        ExtractOptions(device=device, quiet=quiet),
    )
    summary = extractor.run(list_inputs(str(out / "synth")), out / "cache")
    for line in summary.lines():
        log(line)

    stages.next("train projection heads (max-mean InfoNCE with temporal negatives)")
    train(out / "cache", out / "heads", config.train_config(), TrainOptions(device=device, quiet=quiet), log=log)
    checkpoint = load_checkpoint(out / "heads")
    cache = Cache(out / "cache")

    stages.next("build the FAISS indexes")
    meta = build_index(cache, checkpoint, out / "index", quiet=quiet)

    stages.next("example searches (sound → video, video → sound) and where the sound is")
    searcher = Searcher(out / "index", heads=checkpoint, cache=cache)
    held_out = checkpoint.config.split["val_videos"][:3]
    searches, attention = _examples(out, searcher, checkpoint, cache, held_out, truth)

    stages.next("synchronization and locate")
    make_corpus(out / "queries" / "sync", videos=1, seconds=max(config.seconds, 6.0), classes=config.classes, seed=config.seed + 1)
    # The sync example gets a known offset: audio late by sync_offset seconds.
    sync_source = out / "queries" / "sync" / "video_00000.mp4"
    sync_video = out / "queries" / "out-of-sync.mp4"
    _delay_audio(sync_source, sync_video, config.sync_offset)
    sync = sync_file(sync_video, checkpoint, device="cpu" if device == "auto" else device, backbones=searcher.backbones)
    plot_curve(sync, out / "figures" / "sync-curve.png", title=f"out-of-sync.mp4 (audio made {config.sync_offset:+.1f} s late)")
    locate_source = cache.record(held_out[-1])
    clip_start = round(min(1.0, config.seconds / 3), 2)
    clip = out / "queries" / "clip.mp4"
    cut_clip(locate_source.path, clip, clip_start, config.seconds - clip_start)
    located = searcher.locate(clip, k=3)

    stages.next("evaluate held-out retrieval, synchronization and localization")
    report = evaluate(out / "heads", out / "cache", out / "synth" / "ground_truth.parquet")
    (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    for line in format_report(report):
        log(line)
    stages.finish()

    path = out / "report.md"
    path.write_text(
        _report_markdown(out, config, summary, meta, searches, attention, sync, sync_video, located, locate_source, clip_start, report, stages.timings)
    )
    return path


def _examples(out: Path, searcher, checkpoint, cache, held_out: list[str], truth: dict) -> tuple[list, list]:
    """Example searches both ways (with contact sheets) and where the sound is in held-out
    videos (attention maps): the report's (searches, attention)."""
    from avfeat.align.plots import attention_map
    from avfeat.core.io import fitted_name
    from avfeat.index.thumbs import contact_sheet

    searches = []
    for video_id, side in zip(held_out, ("audio", "visual")):
        record = cache.record(video_id)
        hits = searcher.search(record.path, side=side, k=5, rerank=20)
        searches.append((record, side, hits, truth))
        contact_sheet(hits, out / "figures" / f"hits-{side}.png")
    attention = []
    for video_id in held_out:
        record = cache.record(video_id)
        gt = truth[Path(record.path).name]
        event = round((gt["event_starts"][0] + gt["event_ends"][0]) / 2, 2)  # the object is on screen
        figure = out / "figures" / fitted_name(f"attention-{video_id}", out / "figures", ".png")
        attention_map(checkpoint, cache, video_id, float(event), figure)
        attention.append((record, event, figure))
    return searches, attention


def _delay_audio(source: Path, out: Path, seconds: float) -> None:
    """Re-write ``source`` with its sound ``seconds`` late (silence first, tail cut)."""
    import av
    import numpy as np

    from avfeat.data.synth_media import write_media

    with av.open(str(source)) as container:
        fps = float(container.streams.video[0].average_rate)
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    with av.open(str(source)) as container:
        rate = container.streams.audio[0].rate
        audio = np.concatenate([f.to_ndarray()[0] for f in container.decode(audio=0)]).astype(np.float32)
    shift = int(round(seconds * rate))
    delayed = np.concatenate([np.zeros(shift, np.float32), audio])[: len(audio)] if shift >= 0 else np.concatenate([audio[-shift:], np.zeros(-shift, np.float32)])
    write_media(out, frames, fps, delayed, rate)


def _rel(out: Path, path: Path) -> str:
    return str(Path(path).relative_to(out))


def _report_markdown(out, config, summary, meta, searches, attention, sync, sync_video, located, locate_source, clip_start, report, timings) -> str:
    from avfeat.evaluation import format_report

    lines = [
        "# avfeat demo report",
        "",
        f"Synthetic corpus of {config.videos} videos ({config.seconds:g} s, {config.classes} classes; each class pairs a shape",
        "and colour with a sound, and the object shows while its sound plays). Backbones "
        f"`{config.audio_model}` + `{config.visual_model}` (random weights: the heads learn from what random features keep).",
        "",
        "## Metrics (held-out videos)",
        "",
        "```",
        *format_report(report),
        "```",
        "",
        "Retrieval rows: `a2v` = sound → picture, `v2a` = picture → sound; instance level (same video and time) and",
        "class level (`class_*`). Sync: accuracy of the offset over 21 injected offsets from −2.0 to +2.0 s.",
        "Localization: pointing game against the object's box, next to the share of the frame the boxes cover.",
        "",
        "## Training curves",
        "",
        "![training curves](heads/curves.png)",
        "",
        "## Example searches",
        "",
    ]
    for record, side, hits, truth in searches:
        target = "pictures" if side == "audio" else "sounds"

        def name(path):
            return truth.get(Path(path).name, {}).get("class_name", "?")

        lines += [f"Query: the {side} of held-out `{Path(record.path).name}` ({name(record.path)}) searching {target},",
                  "reranked by exact max-mean.", "",
                  "| rank | score | video | class | start | end |", "|---|---|---|---|---|---|"]
        lines += [f"| {h.rank} | {h.score:.3f} | {Path(h.path).name} | {name(h.path)} | {h.start:.2f} | {h.end:.2f} |" for h in hits]
        lines += ["", f"![hits of the {side} query](figures/hits-{side}.png)", ""]
    lines += ["## Where the sound is", "", "Each patch's best similarity with the audio tokens of the window from the middle of the first sound event, over that frame:", ""]
    for record, event, figure in attention:
        lines += [f"`{Path(record.path).name}` at {event:.2f} s:", "", f"![attention map]({_rel(out, figure)})", ""]
    lines += [
        "## Synchronization",
        "",
        f"`{_rel(out, sync_video)}` has its sound made {config.sync_offset:+.2f} s late. `avfeat sync` estimates "
        f"**{sync.offset:+.3f} s** (confidence {sync.confidence:.2f}; positive = audio late).",
        "",
        "![sync curve](figures/sync-curve.png)",
        "",
        "## Locate",
        "",
        f"`queries/clip.mp4` was cut from `{Path(locate_source.path).name}` at {clip_start:.2f} s. Candidates:",
        "",
        "| video | time | votes |",
        "|---|---|---|",
        *[f"| {Path(c.path).name} | {c.time:.2f} | {c.votes} |" for c in located],
        "",
        "## The run",
        "",
        f"Cache: {summary.ok} videos ok, {summary.media_seconds / 60:.1f} media-minutes; index: "
        + ", ".join(f"{m} {d['count']} windows" for m, d in meta["modalities"].items()) + ".",
        "",
        "| stage | seconds |",
        "|---|---|",
        *[f"| {name} | {seconds:.1f} |" for name, seconds in timings],
        "",
        f"Recipe: `{json.dumps(asdict(config))}`",
        "",
    ]
    return "\n".join(lines)
