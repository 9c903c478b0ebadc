"""Contact sheets: one tile per hit, the frame on screen mid-window, from the source file."""

from __future__ import annotations

import os

from avfeat.extract.media import frame_at

TILE = (160, 120)  # width, height of a tile's picture
CAPTION = 28  # pixels of text under each picture


def contact_sheet(hits, out: str | os.PathLike, columns: int = 5) -> None:
    """Save a grid of the hits' frames (each window's middle frame) with rank, score and span;
    a grey tile where a file is gone."""
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
    sheet.save(out)
