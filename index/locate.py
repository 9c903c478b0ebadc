"""Where a clip comes from: voting over (video, time offset) of its windows' matches.

Every window of the clip is searched; each of its top matches votes for "the clip starts at
``hit start − query window start`` in ``hit video``". Votes are binned at one frame interval.
A clip cut from an indexed video makes its windows agree on one (video, offset) while chance
matches scatter, so the fullest bin wins. A bin's support counts its two neighbours too, since
a cut between two frames splits its votes across two bins; the reported time is the mean
offset of the bin's own votes (neighbours' votes lean toward where the video has more windows),
and after a candidate is taken, bins within two frame intervals of it
in the same video are dropped so one source is not listed twice.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass


@dataclass
class Candidate:
    video_id: str
    path: str
    time: float  # seconds into the video where the clip starts
    votes: int

    def to_dict(self) -> dict:
        return asdict(self)


def vote(matches, fps: float, k: int = 5) -> list[Candidate]:
    """``matches``: iterable of (video_id, path, offset seconds) → the best ``k`` candidates."""
    bins: dict[tuple[str, int], list[float]] = defaultdict(list)
    paths: dict[str, str] = {}
    for video, path, offset in matches:
        bins[(video, int(round(offset * fps)))].append(offset)
        paths[video] = path

    def near(key, reach):
        video, b = key
        return [bins[(video, b + d)] for d in range(-reach, reach + 1) if (video, b + d) in bins]

    support = {key: sum(len(v) for v in near(key, 1)) for key in bins}
    taken: list[Candidate] = []
    dropped: set[tuple[str, int]] = set()
    for key in sorted(support, key=lambda key: (-support[key], key)):
        if key in dropped:
            continue
        offsets = bins[key]
        taken.append(Candidate(key[0], paths[key[0]], float(sum(offsets) / len(offsets)), support[key]))
        if len(taken) == k:
            break
        dropped.update((key[0], key[1] + d) for d in range(-2, 3))
    return taken
