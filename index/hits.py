"""A search hit and the modalities: torch-free, so that `avfeat search --server` prints hits without the models."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

AUDIO, VISUAL = "audio", "visual"
MODALITIES = (AUDIO, VISUAL)


def other(modality: str) -> str:
    return VISUAL if modality == AUDIO else AUDIO


@dataclass
class Hit:
    rank: int
    score: float
    video_id: str
    path: str
    start: float
    end: float
    metadata: dict[str, Any] = field(default_factory=dict)  # the video's metadata columns (label, split, ...)

    def to_dict(self) -> dict:
        return asdict(self)
