"""The audit's HTML report: one self-contained page (``report.html.j2``, rendered by Jinja2 with
autoescaping, so every text that comes from the cache is escaped) with the score distributions,
what each cut on p_match keeps and the videos least likely to match."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from avfeat.data.audit_table import AuditRow
from avfeat.index.audit.calibration import SYNC_STEP

REPORT_CUTS = (0.1, 0.3, 0.5, 0.7, 0.9)
TEMPLATE = "report.html.j2"


def counts(rows: list[AuditRow]) -> dict[str, int]:
    """Videos likely mismatched, out of sync (both at p ≥ 0.5), silent and static."""
    return {
        "mismatched": sum(r.p_match < 0.5 for r in rows),
        "shifted": sum(abs(r.offset) > SYNC_STEP / 2 and r.p_sync >= 0.5 for r in rows),
        "silent": sum(bool(r.silent) for r in rows),
        "static": sum(bool(r.static) for r in rows),
    }


def threshold_table(rows: list[AuditRow]) -> list[dict]:
    """What each cut on p_match keeps: videos, their share, media hours."""
    hours = sum(r.duration or 0.0 for r in rows) / 3600
    table = []
    for cut in REPORT_CUTS:
        kept = [r for r in rows if r.p_match >= cut]
        kept_hours = sum(r.duration or 0.0 for r in kept) / 3600
        table.append({"cut": cut, "videos": len(kept), "share": len(kept) / max(1, len(rows)), "hours": kept_hours,
                      "hours_share": kept_hours / hours if hours else 0.0})
    return table


def write_report(path: str | Path, rows: list[AuditRow], meta: dict, worst: int = 20) -> None:
    """A self-contained HTML page: score distributions, the threshold table and the ``worst``
    videos (lowest p_match) with a thumbnail of each one's worst window. Every text that comes
    from the cache (ids, paths) is escaped."""
    from avfeat.core.io import write_output_file

    score = np.array([r.correspondence for r in rows])
    p_match = np.array([r.p_match for r in rows])
    offset = np.array([r.offset for r in rows], dtype=float)

    def draw(axes):
        draw_distributions(axes, score, p_match, offset)

    lowest = sorted(rows, key=lambda r: (r.p_match, r.correspondence))[:worst]
    page = _template().render(
        rows=rows, meta=meta, counts=counts(rows), half_step=SYNC_STEP / 2, figure=_figure_png(draw), cuts=threshold_table(rows),
        worst=[_worst_line(row) for row in lowest],
        match_calibration=json.dumps(meta["match_calibration"]), sync_calibration=json.dumps(meta["sync_calibration"]),
    )
    write_output_file(path, page.encode())


def draw_distributions(axes, score, p_match, offset) -> None:
    """The report's three histograms, each axis named (what is counted, and in what unit)."""
    axes[0].hist(score, bins=40, color="tab:blue")
    axes[0].set_title("correspondence")
    axes[0].set_xlabel("correspondence score")
    axes[1].hist(p_match, bins=20, range=(0, 1), color="tab:green")
    axes[1].set_title("P(sound belongs to the pictures)")
    axes[1].set_xlabel("p_match")
    axes[2].hist(offset[np.isfinite(offset)], bins=41, color="tab:orange")
    axes[2].set_title("estimated offset")
    axes[2].set_xlabel("offset (s), positive = audio late")
    for axis in axes:
        axis.set_ylabel("videos")


def _worst_line(row: AuditRow) -> dict:
    """One video of the report's worst list: the row, a thumbnail of its worst window (base64
    JPEG; None: no picture) and its flags."""
    window = row.worst_windows[0] if row.worst_windows else None
    picture = _thumbnail(row.path, (window.start + window.end) / 2) if window else None
    flags = ", ".join(name for name in ("silent", "static") if getattr(row, name)) or "–"
    return {"row": row, "picture": picture, "flags": flags}


@lru_cache(maxsize=1)
def _template():
    from importlib.resources import files

    from jinja2 import Environment, StrictUndefined

    environment = Environment(autoescape=True, keep_trailing_newline=True, undefined=StrictUndefined)
    environment.filters["fmt"] = format  # {{ x|fmt(".3f") }}: Python's format spec
    return environment.from_string(files(__package__).joinpath(TEMPLATE).read_text(encoding="utf-8"))


def _figure_png(draw) -> str:
    """A matplotlib figure drawn by ``draw(axes)`` as a base64 PNG for an <img>."""
    import base64
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(12, 3.2), dpi=90)
    draw(axes)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def _thumbnail(path: str, time: float) -> str | None:
    import base64
    import io

    from PIL import Image

    from avfeat.extract.media import frame_at

    frame = frame_at(path, time) if Path(path).is_file() else None
    if frame is None:
        return None
    image = Image.fromarray(frame)
    image.thumbnail((160, 120))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return base64.b64encode(buffer.getvalue()).decode()
