"""Every seconds → index conversion goes through the one rule (``nearest_index``: halves round
up): frames at 0.25, 0.75 and 1.25 s sit on audio tokens 13, 38 and 63 at 50 tokens per second
in windows, sync, the audit's excerpts and queries alike (halves to even would give 12, 38, 62).
"""

import numpy as np
import torch

from avfeat.align.heads import AVHeads, HeadConfig
from avfeat.align.windows import WindowGeometry, video_windows
from avfeat.data.records import VideoRecord, nearest_indices
from avfeat.index.audit.measure import Tokens
from avfeat.index.query import QueryTokens
from avfeat.index.sync import frame_scores

RATE = 50.0
HALF_STEPS = np.array([0.25, 0.75, 1.25])
RULE = [13, 38, 63]


def test_the_rule_rounds_halves_up():
    assert nearest_indices(HALF_STEPS, RATE).tolist() == RULE
    assert nearest_indices(np.array([0.97, 0.969]), RATE).tolist() == [49, 48]  # 0.97 is stored as 0.96999...


def test_windows_start_on_the_rule_and_hop_by_it():
    record = VideoRecord("v", "p", audio_start=0.0, audio_rate=RATE, audio_length=200)
    geometry = WindowGeometry(seconds=0.5, audio_rate=RATE, fps=2.0)
    assert [w.audio for w in video_windows(record, HALF_STEPS, geometry)] == RULE
    times = np.arange(12) / 2.0
    record = VideoRecord("v", "p", audio_start=0.0, audio_rate=RATE, audio_length=1000)
    assert [w.frame for w in video_windows(record, times, geometry, hop=1.25)] == [0, 3, 6, 9]  # 2.5 frames → 3


def test_sync_centres_each_frame_on_the_rule():
    """The last lag a frame can take ends its band at the track's last token: total - 1 - base."""
    total, generator = 70, torch.Generator().manual_seed(0)
    audio = torch.nn.functional.normalize(torch.randn(total, 8, generator=generator), dim=-1)
    visual = torch.nn.functional.normalize(torch.randn(3, 5, 8, generator=generator), dim=-1)
    lags, _, valid = frame_scores(torch.nn.Linear(1, 1), audio, 0.0, RATE, visual, HALF_STEPS, fps=RATE, max_offset=0.2, projected=True)
    last = [int(round(lags[row.numpy()].max() * RATE)) for row in valid]
    assert last == [min(10, total - 1 - base) for base in RULE]


def test_audit_excerpts_and_audio_queries_count_by_the_rule():
    heads = AVHeads(HeadConfig(audio_dim=4, visual_dim=4, dim=4))
    tokens = Tokens(np.zeros((200, 4), np.float32), 0.0, RATE, np.zeros((4, 2, 4), np.float32), np.array([0.0, 0.5, 1.0, 1.5]), 2.0)
    assert len(tokens.excerpt(heads, 0.25).audio) == 13
    assert len(tokens.excerpt(heads, 0.242).audio) == 12  # 12.1 tokens: the nearest, not the next
    query = QueryTokens("q", "audio", audio=np.zeros((25, 4), np.float32), audio_start=0.0, audio_rate=RATE)
    assert len(query.timeline(fps=5.0).frame_times) == 3  # 0.5 s at 5 fps: 2.5 steps → 3
