"""Scores of held-out windows under trained heads: what validation, the acceptance test and
`avfeat eval` measure retrieval on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from avfeat.align import data
from avfeat.align.loss import info_nce
from avfeat.align.scores import pairwise_scores


@torch.no_grad()
def window_scores(heads, source, ids: torch.Tensor, aggregation: str, batch_size: int = 64, amp: bool = False) -> torch.Tensor:
    """(N, N) audio×visual scores of windows ``ids`` read through ``source`` (memory or stream)."""
    n, width = len(ids), max(2, batch_size)
    padded = torch.cat([ids, ids[-1:].repeat(-n % width)]).view(-1, width)  # equal-width batches
    audio, visual = [], []
    for a, v in source.batches(padded):
        with torch.autocast(a.device.type, dtype=torch.bfloat16, enabled=amp):
            audio.append(heads.project_audio(a).float())
            visual.append(heads.project_visual(v).float())
    audio, visual = torch.cat(audio)[:n], torch.cat(visual)[:n]
    return pairwise_scores(audio, visual, aggregation).float().cpu()


def validation_loss(scores: torch.Tensor, video: torch.Tensor, batch_size: int, logit_scale: torch.Tensor) -> float:
    """Mean InfoNCE over groups of up to ``batch_size`` validation windows from distinct videos
    (the k-th window of each video together), so it compares with the training loss.
    ``video``: (N,) video number of each window of ``scores``, each video's windows together."""
    slot = torch.zeros_like(video)
    for i in range(1, len(video)):
        slot[i] = slot[i - 1] + 1 if video[i] == video[i - 1] else 0
    losses = []
    for k in slot.unique():
        members = torch.nonzero(slot == k).flatten()
        for group in members.split(batch_size):
            if len(group) >= 2:
                losses.append(float(info_nce(scores[group][:, group], logit_scale.detach().float().cpu())))
    return sum(losses) / len(losses) if losses else float("nan")


def held_out_scores(checkpoint, cache_path: str | Path, per_video: int | None = None,
                    video_ids: list[str] | None = None) -> tuple[torch.Tensor, list[str], np.ndarray]:
    """Scores of the checkpoint's validation windows (or those of ``video_ids``): (scores, video
    id of each window, start times). ``per_video`` defaults to the training run's ``val_windows``."""
    cache = data.open_cache(cache_path)
    val_ids = checkpoint.config.split["val_videos"] if video_ids is None else list(video_ids)
    per_video = per_video or checkpoint.config.training["val_windows"]
    _, table = data.check_window(cache, val_ids, checkpoint.window)
    ids = torch.as_tensor(table.evenly_spaced(list(range(len(val_ids))), per_video))
    device = next(checkpoint.heads.parameters()).device
    source = data.MemoryWindows(cache, table, device)
    scores = window_scores(checkpoint.heads, source, ids, checkpoint.aggregation)
    return scores, [val_ids[k] for k in table.video[ids.numpy()]], table.start[ids.numpy()]
