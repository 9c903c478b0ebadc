"""Small media made on the fly (valid clips, one of each kind of bad input) and the folder of
real test clips."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

# Environment variable naming the folder of real test clips (see ``test_media_dir``).
TEST_MEDIA_ENV = "AVFEAT_TEST_MEDIA"
MEDIA_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov", ".m4v", ".avi")

# Each case ``make_bad_input_cases`` writes, and the status ``avfeat.extract.media.decode``
# gives it (with the default DecodeSpec or any fps >= 1). Two cases share ``unreadable``, so
# cases are keyed by name; a case named after a status is the only case for that status.
BAD_INPUT_STATUS: dict[str, str] = {
    "empty_file": "empty_file",  # zero bytes
    "unreadable_truncated": "unreadable",  # the first 30% of a valid MP4: no moov atom
    "unreadable_text": "unreadable",  # a text file named .mp4
    "no_audio": "no_audio",  # H.264 video, no audio stream
    "no_video": "no_video",  # AAC audio only (an .mp4 without a video stream)
    "too_short": "too_short",  # 0.3 s: shorter than one frame interval at 1 or 2 fps
    # Garbage over 10% of the file's middle (inside mdat): FFmpeg's H.264 and AAC decoders
    # raise "Invalid data found" on the damaged packets, so the rule in ``decode`` fails it.
    "corrupt_middle": "decode_error",
}


def test_media_dir() -> Path | None:
    """The folder of real test clips, or None when it is absent.

    ``$AVFEAT_TEST_MEDIA`` when set, else ``<repository root>/../shared/media``.
    """
    raw = os.environ.get(TEST_MEDIA_ENV)
    folder = Path(raw) if raw else Path(__file__).resolve().parents[2].parent / "shared" / "media"
    if folder.is_dir() and any(p.suffix.lower() in MEDIA_SUFFIXES for p in folder.iterdir()):
        return folder
    return None


test_media_dir.__test__ = False  # not a pytest test despite the name


def clip_frames(seconds: float, size: tuple[int, int] = (64, 64), fps: float = 25) -> np.ndarray:
    """(F, H, W, 3) uint8 frames whose content changes every frame.

    Frame ``i`` has mean grey level ``frame_level(i)`` everywhere except a white square that
    moves one step per frame, so a decoded frame can be matched to its index.
    """
    h, w = size
    n = max(1, int(round(seconds * fps)))
    frames = np.empty((n, h, w, 3), dtype=np.uint8)
    side = max(2, min(h, w) // 6)
    for i in range(n):
        frames[i] = frame_level(i)
        x = (3 * i) % max(1, w - side)
        frames[i, h // 4 : h // 4 + side, x : x + side] = 255
    return frames


def frame_level(index: int) -> int:
    """Background grey level of synthetic frame ``index`` (see ``clip_frames``)."""
    return 16 + (index * 9) % 200


def clip_audio(seconds: float, sample_rate: int = 16000) -> np.ndarray:
    """A mono chirp (300 Hz rising) with a slow amplitude wobble, float32 in [-0.5, 0.5]."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    phase = 2 * np.pi * (300 * t + 100 * t**2)
    return (0.4 * np.sin(phase) * (0.8 + 0.2 * np.sin(2 * np.pi * 1.5 * t))).astype(np.float32)


def make_clip(
    path: str | os.PathLike,
    seconds: float = 2.0,
    size: tuple[int, int] = (64, 64),
    fps: float = 25,
    sample_rate: int = 16000,
    audio_start: float = 0.0,
) -> str:
    """Write a small valid H.264/AAC clip with changing content; returns its path.

    Args:
        path: output file (container from the extension).
        seconds: length of both the video and the audio.
        size: (height, width), even numbers.
        fps: video frame rate.
        sample_rate: audio rate.
        audio_start: seconds by which the audio starts after the video.
    """
    from avfeat.data.synth_media import write_media

    write_media(
        path,
        clip_frames(seconds, size, fps),
        fps,
        clip_audio(seconds, sample_rate),
        sample_rate,
        audio_start=audio_start,
    )
    return os.fspath(path)


def make_bad_inputs(folder: str | os.PathLike) -> dict[str, str]:
    """Write every bad input into ``folder``; returns {expected status: path}.

    All cases of ``make_bad_input_cases`` are written; where two share a status
    (``unreadable``: truncated MP4 and text file) the map names the first (the truncated MP4).
    Use ``make_bad_input_cases`` to get every file.
    """
    paths: dict[str, str] = {}
    for case, path in make_bad_input_cases(folder).items():
        paths.setdefault(BAD_INPUT_STATUS[case], path)
    return paths


def make_bad_input_cases(folder: str | os.PathLike) -> dict[str, str]:
    """Write one file per bad-input case into ``folder``; returns {case: path}.

    The expected decode status of each case is ``BAD_INPUT_STATUS[case]``.
    """
    from avfeat.data.synth_media import write_media

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}

    empty = folder / "empty.mp4"
    empty.write_bytes(b"")
    paths["empty_file"] = str(empty)

    valid = folder / "valid.mp4"
    make_clip(valid, seconds=2.0)
    data = valid.read_bytes()

    truncated = folder / "truncated.mp4"
    truncated.write_bytes(data[: int(len(data) * 0.3)])
    paths["unreadable_truncated"] = str(truncated)

    text = folder / "notes.mp4"
    text.write_text("This is a text file, not a video.\n" * 20)
    paths["unreadable_text"] = str(text)

    video_only = folder / "video_only.mp4"
    write_media(video_only, clip_frames(1.5), 25, None, 16000)
    paths["no_audio"] = str(video_only)

    audio_only = folder / "audio_only.mp4"
    write_media(audio_only, None, 25, clip_audio(1.5), 16000)
    paths["no_video"] = str(audio_only)

    short = folder / "short.mp4"
    make_clip(short, seconds=0.3)
    paths["too_short"] = str(short)

    corrupt = bytearray(data)
    begin, length = int(len(corrupt) * 0.4), int(len(corrupt) * 0.1)
    corrupt[begin : begin + length] = np.random.default_rng(0).integers(0, 256, length, dtype=np.uint8).tobytes()
    corrupt_path = folder / "corrupt_middle.mp4"
    corrupt_path.write_bytes(bytes(corrupt))
    paths["corrupt_middle"] = str(corrupt_path)

    valid.unlink()
    return paths
