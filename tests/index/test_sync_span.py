"""A frame is compared with the sound of its own instant: at 1 fps, 0.2 s of audio around its
shifted time (``sync.SPAN_SECONDS``), not the whole second, whose average has a flat top as wide
as the second less the sound and cannot place the offset within it."""

import numpy as np
import torch

from avfeat.index.sync import SPAN_SECONDS, estimate, frame_scores, lag_curve

RATE = 50.0


def test_a_sound_shorter_than_a_frame_interval_places_the_offset():
    # Frames at 2, 3, 4 s (1 fps) each show their own object; each object's sound is 0.2 s long
    # and starts 0.6 s after its frame, so the sound of each picture is heard 0.7 s late.
    dim, times, late = 8, np.array([2.0, 3.0, 4.0]), 0.7
    basis = torch.eye(dim)
    audio = basis[7].repeat(int(8 * RATE), 1)  # a sound no picture matches
    for k, time in enumerate(times):
        first = int(round((time + late - 0.1) * RATE))
        audio[first : first + int(round(0.2 * RATE))] = basis[k]
    visual = torch.stack([torch.stack([basis[6], basis[k]]) for k in range(len(times))])  # (F, CLS + 1 patch, dim)
    lags, scores, valid = frame_scores(torch.nn.Linear(1, 1), audio, 0.0, RATE, visual, times, fps=1.0, max_offset=1.5, projected=True)
    result = estimate(lags, lag_curve(scores, valid), fps=1.0)
    assert SPAN_SECONDS == 0.2
    assert abs(result.offset - late) <= 0.05, result.offset
