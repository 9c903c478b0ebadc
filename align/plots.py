"""Pictures: training curves, and "where the sound is" heat maps over a frame.

Matplotlib runs on the Agg backend (files only, no display needed).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: list[dict], path: str | Path) -> None:
    """Loss (train, validation) and validation R@1/5/10 both ways against the epoch."""
    from avfeat.core.io import write_atomic

    plt = _pyplot()
    epochs = [r["epoch"] for r in history]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    with_val = [r for r in history if "val" in r]
    if with_val:
        left.plot([r["epoch"] for r in with_val], [r["val_loss"] for r in with_val], "o-", label="validation")
        for direction, style in (("a2v", "-"), ("v2a", "--")):
            for k in (1, 5, 10):
                right.plot([r["epoch"] for r in with_val], [r["val"][direction][f"R@{k}"] for r in with_val], style, label=f"{direction} R@{k}")
        right.set_ylim(0, 1.02)
        right.legend(fontsize=7, ncol=2)
    left.set(xlabel="epoch", ylabel="InfoNCE loss", title="loss")
    right.set(xlabel="epoch", ylabel="recall", title="validation retrieval (same video and time)")
    left.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    write_atomic(Path(path), buffer.getvalue())


def decode_frame(path: str | Path, time: float, geometry: dict) -> np.ndarray | None:
    """The RGB frame on screen at ``time`` seconds, scaled and centre-cropped like the visual
    model saw it (``geometry``: the cache's ``frame_geometry``); None if it cannot be read."""
    from avfeat.extract.media import DecodeSpec, frame_at, to_model_geometry

    image = frame_at(str(path), time)
    if image is None:
        return None
    spec = DecodeSpec(
        shortest_edge=geometry.get("shortest_edge"),
        size=tuple(geometry["size"]) if geometry.get("size") else None,
        crop=tuple(geometry["crop"]) if geometry.get("crop") else None,
    )
    return to_model_geometry(image, spec)


@dataclass
class AttentionHeat:
    """Where the sound of a window is in a frame: each patch's best cosine with the window's
    audio tokens (``scores.token_map``), upsampled to the frame as the visual model saw it."""

    heat: np.ndarray  # (H, W)
    image: np.ndarray | None  # the frame (H, W, 3) uint8; None when the video cannot be decoded
    frame_time: float
    notes: list[str]


def attention_heat(heads, cache, video_id: str, time: float, window: float, frame_at: float | None = None) -> AttentionHeat:
    """The heat map of the audio of [time, time + window) over the frame nearest ``frame_at``
    (default ``time``): what `avfeat attention-map` draws and `avfeat serve` tints.

    Raises:
        QueryError: no audio tokens in the window.
    """
    import torch
    from torch.nn import functional as F

    from avfeat.align.scores import token_map
    from avfeat.core.errors import QueryError

    record = cache.ok_record(video_id)
    times = cache.frame_times(record)
    frame = int(np.argmin(np.abs(times - (time if frame_at is None else frame_at))))
    audio = cache.audio_tokens(video_id, start=time, end=time + window)
    if len(audio) == 0:
        raise QueryError(f"no audio tokens in [{time:g}, {time + window:g}) s of video {video_id}")
    visual = cache.read_frames(record, frame, frame + 1)[0]
    device = next(heads.parameters()).device
    with torch.no_grad():
        a = heads.project_audio(torch.from_numpy(np.asarray(audio)).float().to(device))
        v = heads.project_visual(torch.from_numpy(np.asarray(visual)).float().to(device))
        values = token_map(a, v).float().cpu()
    grid = cache.config.visual_grid if all(cache.config.visual_grid) else [int(round(len(values) ** 0.5))] * 2
    notes: list[str] = []
    image = None
    if Path(record.path).is_file():
        image = decode_frame(record.path, float(times[frame]), cache.config.frame_geometry)
        if image is None:
            notes.append(f"could not decode {record.path}; drawing the map alone")
    else:
        notes.append(f"video file {record.path} is gone; drawing the map alone")
    size = image.shape[:2] if image is not None else (grid[0] * 16, grid[1] * 16)
    heat = F.interpolate(values.view(1, 1, *grid), size=size, mode="bilinear", align_corners=False)[0, 0].numpy()
    return AttentionHeat(heat, image, float(times[frame]), notes)


def attention_map(checkpoint, cache, video_id: str, time: float, out: str | Path) -> list[str]:
    """Draw where the sound of the window starting at ``time`` is, over the frame nearest it
    (:func:`attention_heat`), into the image file ``out``.

    Returns:
        Notes for the user (e.g. that the video file is gone and the map is drawn alone).
    """
    from avfeat.core.errors import InputError
    from avfeat.core.io import write_output_file

    checkpoint.check_cache(cache)
    record = cache.ok_record(video_id)
    times = cache.frame_times(record)
    duration = record.audio_start + record.audio_length / record.audio_rate
    if not times[0] - 1.0 <= time <= duration:
        raise InputError(f"--time {time:g} is outside video {video_id} ({times[0]:.2f}-{duration:.2f} s)")
    drawn = attention_heat(checkpoint.heads, cache, video_id, time, checkpoint.window)
    heat, image, notes, size = drawn.heat, drawn.image, drawn.notes, drawn.heat.shape

    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5, 5 * size[0] / size[1] + 0.4))
    if image is not None:
        axis.imshow(image)
        shown = axis.imshow(heat, cmap="jet", alpha=0.45)
    else:
        shown = axis.imshow(heat, cmap="jet")
    figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.04, label="best cosine with the audio tokens")
    axis.set_title(f"{video_id}\nframe {drawn.frame_time:.2f} s, audio {time:.2f}-{time + checkpoint.window:.2f} s", fontsize=9)
    axis.axis("off")
    figure.tight_layout()
    # Through a buffer: exactly ``out`` (savefig would add ".png" to a name without a suffix),
    # written atomically, and an unusable path is one line. The suffix picks the format (png
    # when matplotlib cannot write it).
    suffix = Path(out).suffix[1:].lower()
    buffer = io.BytesIO()
    figure.savefig(buffer, format=suffix if suffix in figure.canvas.get_supported_filetypes() else "png", dpi=100)
    plt.close(figure)
    write_output_file(out, buffer.getvalue())
    return notes


def attention_map_file(cache_path: str | Path, video_id: str, heads: str | Path, time: float, out: str | Path, device: str = "auto") -> list[str]:
    """`avfeat attention-map`: ``out`` is checked before the checkpoint (on ``device``) and the
    cache are read, then the map is drawn (``attention_map``); returns its notes."""
    from avfeat.align.checkpoint import load_checkpoint
    from avfeat.core.devices import resolve_device
    from avfeat.core.io import PLOT_SUFFIXES, prepare_output_file
    from avfeat.data.cache import Cache

    prepare_output_file(out, "--out", PLOT_SUFFIXES, "a picture; no suffix: PNG", bare=True)
    checkpoint = load_checkpoint(heads, resolve_device(device))
    with Cache(cache_path) as store:
        return attention_map(checkpoint, store, store.resolve(video_id), time, out)
