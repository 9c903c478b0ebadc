"""Pictures outside the decode path: an image file at the model geometry (``load_image``) and the
full-size frame on screen at one time of a video (``frame_at``, for pictures of results)."""

from __future__ import annotations

import os

import av
import numpy as np

from avfeat.data.records import Status
from avfeat.extract.media.containers import one_line
from avfeat.extract.media.geometry import to_model_geometry
from avfeat.extract.media.spec import DecodeSpec, MediaError

def load_image(path: str | os.PathLike, spec: DecodeSpec) -> np.ndarray:
    """An image file (png, jpg, ...) as one (H, W, 3) uint8 RGB frame at the model geometry.

    Scaled by libswscale (bicubic) and centre-cropped exactly like decoded video frames, so an
    image and a video frame of the same picture give the same tokens.

    Raises:
        MediaError: ``unreadable`` when the file is missing, not an image, or too large to decode.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"))
    except Image.DecompressionBombError:  # the header claims more pixels than PIL will decode (a bomb)
        raise MediaError(Status.UNREADABLE, f"image too large to decode (over {2 * Image.MAX_IMAGE_PIXELS} pixels)") from None
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise MediaError(Status.UNREADABLE, f"not a readable image: {one_line(exc)}") from None
    return to_model_geometry(rgb, spec)


def frame_at(path: str, time: float) -> np.ndarray | None:
    """The full-size RGB frame on screen at ``time`` seconds of the timeline (0 = the container's
    start, as in ``decode``), or None when the file cannot be decoded: for pictures of results."""
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            origin = (container.start_time or 0) / av.time_base
            container.seek(int((origin + max(0.0, time)) * av.time_base), backward=True)
            shown = None
            for frame in container.decode(stream):
                if frame.time is not None and frame.time - origin > time + 1e-6 and shown is not None:
                    break
                shown = frame
            return None if shown is None else shown.to_ndarray(format="rgb24")
    except (av.error.FFmpegError, OSError, IndexError):
        return None
