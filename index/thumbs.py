"""Contact sheets: one tile per hit, the frame on screen mid-window, from the source file."""

from __future__ import annotations

import io
import os

from avfeat.core.io import write_output_file
from avfeat.extract.media import frame_at

TILE = (160, 120)  # width, height of a tile's picture
CAPTION = 28  # pixels of text under each picture


def contact_sheet(hits, out: str | os.PathLike, columns: int = 5) -> None:
    """Save a grid of the hits' frames (each window's middle frame) with rank, score and span;
    a grey tile where a file is gone. The format follows ``out``'s suffix (PNG for an unknown
    one); the file is written atomically to exactly ``out``, missing parent folders created,
    and an unusable path is an InputError."""
    from PIL import Image, ImageDraw

    width, height = TILE
    rows = max(1, -(-len(hits) // columns))
    sheet = Image.new("RGB", (columns * width, rows * (height + CAPTION)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, hit in enumerate(hits):
        x, y = (i % columns) * width, (i // columns) * (height + CAPTION)
        frame = frame_at(hit.path, (hit.start + hit.end) / 2)
        if frame is None:
            tile = Image.new("RGB", TILE, (90, 90, 90))
            ImageDraw.Draw(tile).text((8, height // 2 - 6), "file missing", fill="white")
        else:
            tile = Image.fromarray(frame)
            tile.thumbnail(TILE)
            backdrop = Image.new("RGB", TILE, "black")
            backdrop.paste(tile, ((width - tile.width) // 2, (height - tile.height) // 2))
            tile = backdrop
        sheet.paste(tile, (x, y))
        draw.text((x + 4, y + height + 2), f"#{hit.rank} {hit.score:.3f}", fill="black")
        draw.text((x + 4, y + height + 14), f"{os.path.basename(hit.path)[:16]} {hit.start:.1f}-{hit.end:.1f}s", fill="black")
    # PIL would refuse a suffix it cannot write (or none) with a traceback: that gets a PNG.
    image_format = Image.registered_extensions().get(os.path.splitext(os.fspath(out))[1].lower())
    if image_format not in Image.SAVE:
        image_format = "PNG"
    buffer = io.BytesIO()
    sheet.save(buffer, format=image_format)
    write_output_file(out, buffer.getvalue())
