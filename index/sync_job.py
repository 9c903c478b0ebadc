"""`avfeat sync` as one call: the videos (or a cache) it is given, checked before any model
loads, then synchronised one by one (``avfeat.index.sync``), the table and the repaired copy
written.

One VIDEO that names a file (not a folder) is a single job: one result, which ``--plot`` can
draw and ``--fix`` can repair. Anything else is a many-video job whose rows stream as they come
(one load of the models for all); a video that fails is a row with its error.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from avfeat.core.errors import InputError

# The least sync confidence (the curve's peak margin, 0 to 1) at which --fix moves the audio.
DEFAULT_FIX_CONFIDENCE = 0.3


@dataclass
class SyncJob:
    """What `avfeat sync` was asked for, checked."""

    videos: list[Path]  # the VIDEO arguments
    paths: list[Path]  # the files they name (folders expanded)
    cache: Path | None = None
    single: bool = False  # one VIDEO naming a file: the one-video output

    @property
    def with_id(self) -> bool:
        """Rows name the cached video's id too (cache mode)."""
        return self.cache is not None


@dataclass
class SyncDone:
    """Every row of a job, in order; ``fixed``: the repaired copy written (single job only)."""

    job: SyncJob
    rows: list = field(default_factory=list)  # avfeat.index.sync.SyncRow
    fixed: Path | None = None
    unfixed: str | None = None  # why --fix wrote nothing (the estimate is too uncertain)

    @property
    def failed(self) -> list:
        return [row for row in self.rows if row.error is not None]


def plan_sync(videos: list[Path] | None, cache: Path | None = None, max_offset: float = 2.0, out: Path | None = None,
              fix: Path | None = None, overwrite: bool = False, plot: Path | None = None,
              min_confidence: float = DEFAULT_FIX_CONFIDENCE, heads: Path | None = None) -> SyncJob:
    """Check everything a sync job is given before any model loads: a refusal costs nothing."""
    from avfeat.core.io import PLOT_SUFFIXES, check_output_suffix, prepare_output_file
    from avfeat.core.outputs import refuse_inside
    from avfeat.core.values import check_number
    from avfeat.index.sync import check_remux_target, check_table_path, list_videos

    check_number("--max-offset", max_offset)
    check_number("--min-confidence", min_confidence, inclusive=True, maximum=1.0)
    videos = list(videos or [])
    if cache is not None and videos:
        raise InputError("give VIDEO arguments or --cache CACHE, not both")
    if cache is None and not videos:
        raise InputError("no video: give VIDEO arguments (files or folders) or --cache CACHE")
    paths = list_videos(videos)  # folders expanded (and an empty one refused) before anything loads
    # One VIDEO that names a file (not a folder) keeps the one-video output: a line, or one JSON object.
    single = cache is None and len(videos) == 1 and paths == [videos[0]]
    if not single and plot is not None:
        raise InputError("--plot draws one video's curve; give a single VIDEO")
    if not single and fix is not None:
        raise InputError("--fix repairs one VIDEO; for a corpus, `avfeat audit CACHE --heads HEADS --fix-dir DIR` repairs every video it finds out of sync")
    for path, option in ((out, "--out"), (fix, "--fix"), (plot, "--plot")):
        if path is not None:
            refuse_inside(path, ((cache, "cache"), (heads, "heads")), option)  # would change what sync reads
            prepare_output_file(path, option)
    if out is not None:
        check_table_path(out)
    if plot is not None:
        check_output_suffix(plot, "--plot", PLOT_SUFFIXES, "a picture; no suffix: PNG", bare=True)
    if fix is not None:
        if os.path.realpath(fix) == os.path.realpath(videos[0]):
            raise InputError(f"--fix {fix} is the input video itself; write the repaired copy to another file")
        if not videos[0].is_file():
            raise InputError(f"video {videos[0]} does not exist")
    for path, option in ((out, "--out"), (fix, "--fix")):
        if path is not None and path.exists() and not overwrite:
            raise InputError(f"{option} {path} exists; pass --overwrite to replace it")
    if fix is not None:
        check_remux_target(videos[0], fix)  # a suffix no container fits fails now, not after the models ran
    return SyncJob(videos, paths, cache, single)


def _sync_one(job: SyncJob, heads: Path, max_offset: float, device: str, plot: Path | None, report) -> SyncDone:
    from avfeat.index.store import load_heads
    from avfeat.index.sync import SyncRow, plot_curve, sync_file

    video = job.videos[0]
    checkpoint = load_heads(heads)
    result = sync_file(video, checkpoint, max_offset=max_offset, device=device)
    if plot is not None:
        plot_curve(result, plot, title=video.name)
    row = SyncRow(str(video), result=result)
    report(job, row)
    return SyncDone(job, [row])


def _sync_many(job: SyncJob, heads: Path, max_offset: float, device: str, quiet: bool, begin, report) -> SyncDone:
    from tqdm import tqdm

    from avfeat.index.store import load_heads
    from avfeat.index.sync import sync_cache, sync_files

    with contextlib.ExitStack() as stack:
        if job.cache is None:
            checkpoint = load_heads(heads)
            rows, total = sync_files(job.paths, checkpoint, max_offset=max_offset, device=device), len(job.paths)
        else:
            from avfeat.data.cache import Cache

            store = stack.enter_context(Cache(job.cache))
            checkpoint = load_heads(heads)
            checkpoint.check_cache(store)  # tokens of other backbones would give meaningless offsets
            total = len(store.records(status="ok"))
            if not total:
                raise InputError(f"the cache {job.cache} has no video with tokens")
            rows = sync_cache(store, checkpoint, max_offset=max_offset)
        begin(job)
        done = SyncDone(job)
        for row in tqdm(rows, total=total, unit="video", disable=quiet, dynamic_ncols=True):
            done.rows.append(row)
            report(job, row)  # printed with tqdm.write, above the bar: results stream while it runs
    return done


def sync_videos(
    videos: list[Path] | None,
    heads: Path,
    cache: Path | None = None,
    max_offset: float = 2.0,
    out: Path | None = None,
    fix: Path | None = None,
    overwrite: bool = False,
    plot: Path | None = None,
    min_confidence: float = DEFAULT_FIX_CONFIDENCE,
    device: str = "auto",
    quiet: bool = True,
    begin: Callable[[SyncJob], None] = lambda job: None,
    report: Callable[[SyncJob, object], None] = lambda job, row: None,
) -> SyncDone:
    """`avfeat sync`: the audio-visual offset of ``videos`` (files or folders) or of every video
    of ``cache`` with tokens, with the heads checkpoint ``heads``.

    ``report(job, row)`` receives each ``SyncRow`` as it comes; ``begin(job)`` is called once the
    models are loaded, before the first row of a many-video job. With ``out`` the rows are
    written as a table; with ``fix`` (a single video) a copy in sync is written there when the
    estimate's confidence reaches ``min_confidence`` (else ``unfixed`` says why not)."""
    from avfeat.core.devices import resolve_device

    job = plan_sync(videos, cache, max_offset, out, fix, overwrite, plot, min_confidence, heads)
    device = str(resolve_device(device))
    if not job.single:
        done = _sync_many(job, heads, max_offset, device, quiet, begin, report)
    else:
        done = _sync_one(job, heads, max_offset, device, plot, report)
    if out is not None:
        from avfeat.index.sync import write_table

        write_table(done.rows, out, job.with_id)
    if job.single and fix is not None:
        from avfeat.index.sync import remux_shifted

        result = done.rows[0].result
        if result.silent:
            done.unfixed = f"{job.videos[0]}: not fixed: its sound is silent, there is no offset to correct; {fix} not written"
        elif result.confidence < min_confidence:
            # Another lag scores nearly as well: moving the audio by this guess may make it worse.
            done.unfixed = (f"{job.videos[0]}: not fixed: confidence {result.confidence:.2f} is below --min-confidence "
                            f"{min_confidence:g} (another offset scores nearly as well); {fix} not written")
        else:
            remux_shifted(job.videos[0], fix, result.offset)
            done.fixed = fix
    return done
