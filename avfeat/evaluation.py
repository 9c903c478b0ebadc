"""`avfeat eval`: retrieval, synchronization and localization scores of trained heads.

All three are measured on the checkpoint's held-out videos, so a number here is never one the
heads were trained on:

- retrieval: R@1/5/10 and median rank of the held-out windows in both directions, instance
  level (the positive is the same video and time) and, with ground truth, class level;
- synchronization: each held-out video's audio is shifted by every offset of a grid
  (−2.0 … +2.0 s in 0.2 s steps, 21 classes) and `avfeat sync`'s estimate is rounded to the
  grid: accuracy exact and within one step;
- localization (needs the ground truth of `avfeat synth`): the pointing game. At the middle
  of each sound event, the patch whose similarity with the event's audio tokens is highest
  must fall inside the sounding object's box; reported with the share of the frame the boxes
  cover (the score of pointing at random).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import typer

SYNC_GRID = np.round(np.arange(-2.0, 2.0 + 1e-9, 0.2), 1)  # 21 offsets, seconds


def _labels(path: str | Path | None) -> dict[str, dict] | None:
    """Ground truth rows by file name (the `path` column of `avfeat synth`)."""
    if path is None:
        return None
    import pyarrow.parquet as pq

    from avfeat.errors import InputError

    try:
        rows = pq.read_table(path).to_pylist()
    except (OSError, ValueError) as error:  # pyarrow raises ArrowInvalid (a ValueError) for non-Parquet
        raise InputError(f"cannot read ground truth {path}: {error}") from None
    if not rows or "path" not in rows[0] or "class" not in rows[0]:
        raise InputError(f"ground truth {path} needs 'path' and 'class' columns")
    return {Path(row["path"]).name: row for row in rows}


def _truth(labels, cache, video_id: str) -> dict | None:
    if labels is None:
        return None
    return labels.get(Path(cache.record(video_id).path).name)


def retrieval(checkpoint, cache, cache_path, labels) -> dict:
    from avfeat.align.evaluate import held_out_scores
    from avfeat.align.metrics import both_directions

    scores, video_ids, _ = held_out_scores(checkpoint, cache_path)
    result = both_directions(scores)
    if labels is not None:
        truths = [_truth(labels, cache, vid) for vid in video_ids]
        if all(t is not None for t in truths):
            classes = np.array([t["class"] for t in truths])
            by_class = both_directions(scores, classes, classes)
            result["class_a2v"], result["class_v2a"] = by_class["a2v"], by_class["v2a"]
    return {key: {k: round(v, 4) for k, v in metrics.items()} for key, metrics in result.items()}


def synchronization(checkpoint, cache, video_ids, labels) -> dict:
    """Shift each held-out video's audio by every grid offset and classify the estimate."""
    from avfeat.index.sync import sync_tokens

    exact = within = total = 0
    step = SYNC_GRID[1] - SYNC_GRID[0]
    for vid in video_ids:
        record = cache.record(vid)
        truth = _truth(labels, cache, vid)
        base = float(truth.get("offset", 0.0)) if truth else 0.0  # an offset already in the file
        audio, visual, times = cache.audio_tokens(vid), cache.visual_tokens(vid), cache.frame_times(vid)
        for k, shift in enumerate(SYNC_GRID):
            # Audio late by `shift`: every audio token is heard `shift` seconds later.
            result = sync_tokens(
                checkpoint.heads, audio, record.audio_start + shift, record.audio_rate, visual, times, record.fps,
                max_offset=float(SYNC_GRID[-1]),
            )
            predicted = int(np.clip(np.round((result.offset - base - SYNC_GRID[0]) / step), 0, len(SYNC_GRID) - 1))
            exact += predicted == k
            within += abs(predicted - k) <= 1
            total += 1
    return {"acc_exact": round(exact / total, 4), "acc_within_1": round(within / total, 4), "clips": total}


def patch_centre_in_source(patch: int, grid: tuple[int, int], geometry: dict, width: int, height: int) -> tuple[float, float]:
    """(x, y) in source-frame pixels of a patch's centre, undoing the decoder's resize and crop."""
    from avfeat.extract.media import DecodeSpec, resize_geometry

    spec = DecodeSpec(
        shortest_edge=geometry.get("shortest_edge"),
        size=tuple(geometry["size"]) if geometry.get("size") else None,
        crop=tuple(geometry["crop"]) if geometry.get("crop") else None,
    )
    resized_h, resized_w = resize_geometry(height, width, spec)
    crop_h, crop_w = spec.crop or (resized_h, resized_w)
    row, col = divmod(patch, grid[1])
    y = (row + 0.5) * crop_h / grid[0] + (resized_h - crop_h) // 2
    x = (col + 0.5) * crop_w / grid[1] + (resized_w - crop_w) // 2
    return x * width / resized_w, y * height / resized_h


def localization(checkpoint, cache, video_ids, labels) -> dict:
    """Pointing game over the sound events of the held-out videos."""
    import torch

    from avfeat.align.scores import token_map
    from avfeat.index.vectors import project_audio, project_visual

    grid = tuple(cache.config["visual_grid"])
    geometry = cache.config["frame_geometry"]
    hits = events = 0
    shares = []
    for vid in video_ids:
        truth = _truth(labels, cache, vid)
        if truth is None:
            continue
        record = cache.record(vid)
        times = cache.frame_times(vid)
        offset = float(truth.get("offset", 0.0))
        for start, end, box in zip(truth["event_starts"], truth["event_ends"], truth["boxes"]):
            middle = (start + end) / 2
            frame = int(np.argmin(np.abs(times - middle)))
            if not start <= times[frame] < end:
                continue  # no frame sampled while the object was visible
            audio = cache.audio_tokens(vid, start + offset, end + offset)
            if len(audio) == 0:
                continue
            with torch.no_grad():
                values = token_map(project_audio(checkpoint.heads, audio), project_visual(checkpoint.heads, cache.visual_tokens(vid)[frame : frame + 1])[0])
            x, y = patch_centre_in_source(int(values.argmax()), grid, geometry, record.width, record.height)
            x0, y0, x1, y1 = box
            hits += x0 <= x < x1 and y0 <= y < y1
            shares.append((x1 - x0) * (y1 - y0) / (record.width * record.height))
            events += 1
    if not events:
        return {}
    return {"pointing_game": round(hits / events, 4), "box_area_share": round(float(np.mean(shares)), 4), "events": events}


def evaluate(heads: str | Path, cache_path: str | Path, labels_path: str | Path | None = None, device: str = "cpu", quiet: bool = True) -> dict:
    """The metrics of `avfeat eval` as a dict (see the module docstring); a progress bar over
    its stages unless ``quiet``."""
    from tqdm import tqdm

    from avfeat.common import resolve_device

    from avfeat.align.checkpoint import load_checkpoint
    from avfeat.align.data import open_cache
    from avfeat.errors import IndexMismatchError

    checkpoint = load_checkpoint(heads, device=resolve_device(device))
    cache = open_cache(cache_path)
    checkpoint.check_cache(cache)
    held_out = [vid for vid in checkpoint.config["split"]["val_videos"] if vid in cache]
    if not held_out:
        raise IndexMismatchError(f"none of the held-out videos of {heads} is in the cache {cache_path}")
    labels = _labels(labels_path)
    stages = ["retrieval", "sync"] + (["localization"] if labels is not None else [])
    report: dict = {"held_out_videos": len(held_out)}
    with tqdm(stages, desc="eval", unit="stage", disable=quiet, dynamic_ncols=True) as bar:
        for stage in bar:
            bar.set_postfix_str(stage, refresh=True)
            if stage == "retrieval":
                report["retrieval"] = retrieval(checkpoint, cache, cache_path, labels)
            elif stage == "sync":
                report["sync"] = synchronization(checkpoint, cache, held_out, labels)
            else:
                found = localization(checkpoint, cache, held_out, labels)
                if found:
                    report["localization"] = found
    return report


def format_report(report: dict) -> list[str]:
    lines = ["direction        R@1     R@5     R@10    median rank"]
    for key, metrics in report["retrieval"].items():
        lines.append(f"{key:<16} {metrics['R@1']:<7.3f} {metrics['R@5']:<7.3f} {metrics['R@10']:<7.3f} {metrics['median_rank']:g}")
    sync = report["sync"]
    lines.append(f"sync             exact {sync['acc_exact']:.3f}, within one 0.2 s step {sync['acc_within_1']:.3f} ({sync['clips']} clips)")
    if "localization" in report:
        loc = report["localization"]
        lines.append(f"localization     pointing game {loc['pointing_game']:.3f} (boxes cover {loc['box_area_share']:.3f} of the frame; {loc['events']} events)")
    return lines


def eval_command(
    cache: Path = typer.Argument(..., help="The token cache the heads were trained on."),
    heads: Path = typer.Option(..., "--heads", help="A checkpoint folder from `avfeat train-head`."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="ground_truth.parquet from `avfeat synth` (class-level retrieval, localization)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1, ..."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Retrieval R@k both ways, sync accuracy over a grid of offsets, and the pointing game."""
    report = evaluate(heads, cache, labels, device=device, quiet=quiet)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        for line in format_report(report):
            typer.echo(line)


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
