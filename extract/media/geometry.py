"""Frame geometry: the size a picture is scaled to before the model (as transformers' DINOv2 / BiT
processors compute it), the centre crop, and scaling one RGB picture the way decoded frames are."""

from __future__ import annotations

import av
import numpy as np

from avfeat.extract.media.spec import DecodeSpec

def resize_geometry(height: int, width: int, spec: DecodeSpec) -> tuple[int, int]:
    """The (h, w) a source frame is scaled to before the centre crop.

    ``spec.size`` wins when given; otherwise ``shortest_edge`` scales the shorter side to that
    many pixels with the longer side truncated exactly as transformers'
    ``get_resize_output_image_size(..., default_to_square=False)`` does, so the frames match the
    DINOv2 / BiT processor's geometry. With neither, the source size is kept.
    """
    if spec.size is not None:
        return int(spec.size[0]), int(spec.size[1])
    if spec.shortest_edge is not None:
        edge = int(spec.shortest_edge)
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(edge * long / short)
        return (new_long, edge) if width <= height else (edge, new_long)
    return height, width


def center_crop(image: np.ndarray, crop: tuple[int, int]) -> np.ndarray:
    """Centre-crop an (H, W, C) image to ``crop`` (h, w), zero-padding axes that are too small.

    Offsets follow transformers' default (torchvision) image processor backend: the crop starts
    at ``(H - h) // 2``; an axis shorter than the crop is padded with ``(h - H) // 2`` zeros
    before it and the rest after it.
    """
    ch, cw = int(crop[0]), int(crop[1])
    h, w = image.shape[:2]
    if h >= ch and w >= cw:
        top, left = (h - ch) // 2, (w - cw) // 2
        return image[top : top + ch, left : left + cw]
    out = np.zeros((ch, cw) + image.shape[2:], dtype=image.dtype)
    src_y, dst_y, n_y = ((h - ch) // 2, 0, ch) if h >= ch else (0, (ch - h) // 2, h)
    src_x, dst_x, n_x = ((w - cw) // 2, 0, cw) if w >= cw else (0, (cw - w) // 2, w)
    out[dst_y : dst_y + n_y, dst_x : dst_x + n_x] = image[src_y : src_y + n_y, src_x : src_x + n_x]
    return out


def to_model_geometry(rgb: np.ndarray, spec: DecodeSpec) -> np.ndarray:
    """An (H, W, 3) uint8 RGB picture scaled by libswscale (bicubic) and centre-cropped to the
    geometry of ``spec``, as ``decode`` does with video frames."""
    h, w = resize_geometry(rgb.shape[0], rgb.shape[1], spec)
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    scaled = frame.reformat(width=w, height=h, format="rgb24", interpolation="BICUBIC").to_ndarray()
    return np.ascontiguousarray(center_crop(scaled, spec.crop) if spec.crop is not None else scaled)
