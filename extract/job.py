"""The extraction job: decode workers, backbones and the shard writer, overlapped.

Decoding runs in worker processes (``DecodePool``) that stay ahead of the model; the model
runs in this process; a writer thread appends tokens to the open shard. Work is cut into
shards of ``shard_size`` consecutive input videos and every batch is formed inside one shard
from videos in input order, so a resumed run forms exactly the batches (and hence the exact
tensors) that an uninterrupted run would have.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from avfeat.core.bulk import collector_paused
from avfeat.core.errors import InputError
from avfeat.core.lock import writer_lock
from avfeat.core.outputs import OutputMode, prepare_output, refuse_inside
from avfeat.core.values import check_number, human_bytes
from avfeat.data.configs import CONFIG_DEFAULTS
from avfeat.data.layout import CACHE_OWN, CONFIG_FILE, CONFIG_MARKS, CacheLayout
from avfeat.data.manifest import ManifestRecords, Recorded, read_manifest
from avfeat.data.shards import ShardWriter, check_compute_dtype, check_config, compute_dtype, new_record, open_for_writing
from avfeat.data.records import Status, VideoRecord
from avfeat.extract.models.devices import COMPUTE_DTYPES
from avfeat.extract.encoder import Encoder, ExtractConfig, resolve_dtype
from avfeat.extract import sources
from avfeat.extract.inputs import IdPlan, MediaInput, assign_ids, from_layout, list_inputs, resolve_paths
from avfeat.extract.media import DecodedMedia, MediaError
from avfeat.extract.tasks import DecodeTask, decode_task, group_target, plan_shards, with_media


@dataclass
class RunOptions:
    """Settings that change how fast the job runs, not what it writes."""

    batch_size: int = 32  # frames per visual forward; audio windows per forward is a quarter of it
    workers: int = 2
    device: str = "auto"
    dtype: str = "auto"  # compute dtype, see resolve_dtype
    shard_size: int = 64  # videos per shard (the unit of commit and resume)
    limit: int | None = None
    retry_failed: bool = False
    refresh: bool = False  # extract again the inputs whose size or mtime changed since they were recorded
    timeout: float = 600.0  # seconds one file may take to decode
    quiet: bool = False


@dataclass
class ExtractSummary:
    ok: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    skipped: int = 0  # already recorded before this run
    ids: IdPlan = field(default_factory=IdPlan)  # duplicates, id collisions and changed files found
    processed: int = 0  # inputs handled by this run (each once)
    failed_before: int = 0  # recorded as failed by an earlier run and not tried again (no --retry-failed)
    left: int = 0  # inputs past --limit, for a later run
    media_seconds: float = 0.0  # ok videos' duration, whole cache of these inputs
    bytes_written: int = 0
    seconds: float = 0.0

    @property
    def any_failed(self) -> bool:
        return bool(self.failed) or bool(self.ids.collisions)

    def lines(self) -> list[str]:
        hours = self.media_seconds / 3600
        per_hour = self.bytes_written / hours if hours and self.processed else 0.0
        failed = ", ".join(f"{status} {count}" for status, count in sorted(self.failed.items())) or "none"
        return [
            f"videos: {self.ok} ok, failed: {failed} ({self.counts()})",
            f"media: {hours:.3f} h ok; wrote {human_bytes(self.bytes_written)} in {self.seconds:.1f} s"
            + (f" ({human_bytes(per_hour)} per media-hour)" if per_hour else ""),
            *([f"{self.failed_before} inputs failed in an earlier run and were not tried again (--retry-failed tries them again)"] if self.failed_before else []),
            *self._id_lines(),
        ]

    def counts(self) -> str:
        """Where each input went, once: the parts add up to the inputs."""
        extra = (
            (len(self.ids.changed), "changed", "changed"),
            (len(self.ids.duplicates), "duplicate", "duplicates"),
            (len(self.ids.collisions), "id collision", "id collisions"),
            (self.left, "left for a later run (--limit)", "left for a later run (--limit)"),
        )
        parts = [f"{self.processed} processed now", f"{self.skipped} already in the cache"]
        parts += [f"{count} {one if count == 1 else many}" for count, one, many in extra if count]
        return ", ".join(parts)

    def _id_lines(self, shown: int = 5) -> list[str]:
        lines = []
        for path, other, vid in self.ids.collisions[:shown]:
            lines.append(f"id collision: {path} and {other} differ but both get id {vid}; not extracted (give them ids with an input table's 'id' column)")
        for path, earlier in self.ids.duplicates[:shown]:
            lines.append(f"duplicate: {path} has the same bytes as {earlier}; extracted once")
        for path, vid in self.ids.changed[:shown]:
            lines.append(f"changed: {path} differs in size or mtime from when it was recorded as {vid}; that record is kept (--refresh extracts the file again)")
        for kind, found in (("id collisions", self.ids.collisions), ("duplicates", self.ids.duplicates), ("changed files", self.ids.changed)):
            if len(found) > shown:
                lines.append(f"... {len(found) - shown} more {kind}")
        return lines


@dataclass
class Extraction:
    """A prepared extraction: the job, ready to run over its inputs into ``out``."""

    extractor: "Extractor"
    inputs: list[MediaInput]
    out: Path
    ray_address: str | None = None

    def run(self, progress: Callable[[int, float], None] | None = None, on_plan: Callable[[int], None] | None = None) -> ExtractSummary:
        """``Extractor.run`` over the inputs (``on_plan`` and ``progress`` as there)."""
        return self.extractor.run(self.inputs, self.out, progress=progress, on_plan=on_plan, ray_address=self.ray_address)


def _list_request_inputs(input: str, layout: str | None, media_dir: Path | None) -> list[MediaInput]:
    """INPUT as a list of inputs: a published dataset CSV with ``layout``, else ``list_inputs``."""
    if layout is not None:
        if not Path(input).is_file():
            raise InputError(f"input {input} does not exist (--layout takes the dataset's CSV file)")
        return from_layout(Path(input), layout, media_dir or Path(input).parent)
    if media_dir is not None:
        raise InputError("--media-dir goes with --layout")
    return list_inputs(input)


def _check_run(options: RunOptions, fps: float | None) -> None:
    """Refuse settings that can never run, before anything is written."""
    from avfeat.core.devices import resolve_device

    if options.dtype not in COMPUTE_DTYPES:
        raise InputError(f"unknown --dtype {options.dtype!r} ({', '.join(COMPUTE_DTYPES)})")
    resolve_dtype(options.dtype, str(resolve_device(options.device)))  # --dtype int8 on a GPU is refused here
    check_number("--fps", fps, minimum=0.01, inclusive=True, maximum=1000.0)
    check_number("--timeout", options.timeout)


def _merge_config(out: Path, mode: OutputMode, given: dict[str, Any]) -> tuple[ExtractConfig, CacheLayout]:
    """The settings to extract with: defaults, then a resumed cache's stored ones, then those
    given (None: not given); checked against the cache before minutes of model loading."""
    given = {key: value for key, value in given.items() if value is not None}
    # A cache of before --storage/--pool-patches is float16 and unpooled (CONFIG_DEFAULTS).
    stored = {**CONFIG_DEFAULTS, **json.loads((out / CONFIG_FILE).read_text())} if mode is OutputMode.RESUME else {}
    config = ExtractConfig(**{**{k: v for k, v in stored.items() if k in ExtractConfig.__dataclass_fields__}, **given})
    return config, check_config(out, asdict(config), only_given_keys=True)


@contextmanager
def prepare_extraction(
    input: str,
    out: Path,
    given: dict[str, Any],
    options: RunOptions,
    *,
    layout: str | None = None,
    media_dir: Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    repair: bool = False,
    ray_address: str | None = None,
    note: Callable[[str], None] = lambda line: None,
) -> Iterator[Extraction]:
    """Everything `avfeat extract` does before the videos flow: check the settings, list the
    inputs, take the cache's writer lock (held until the block ends), apply --resume or
    --overwrite (and --repair), merge ``given`` (ExtractConfig fields, None: not given) with a
    resumed cache's config, keep its compute dtype under ``dtype="auto"``, refuse another
    dtype, and load the backbones (with ``ray_address`` only describe them: the cluster's
    actors run them). ``note`` is told what the user should know (repaired shards, random
    weights). Yields the :class:`Extraction` to run.
    """
    _check_run(options, given.get("fps"))
    refuse_inside(out, [(input, "input"), (media_dir, "media folder")])
    inputs = _list_request_inputs(input, layout, media_dir)
    # One writer at a time: the lock is taken before --overwrite removes anything and held until
    # the last shard is committed (Extractor.run takes it too, for callers other than this one).
    with writer_lock(out, "cache"):
        mode = prepare_output(out, marker=CONFIG_FILE, kind="cache", resume=resume, overwrite=overwrite, own=CACHE_OWN, marker_keys=CONFIG_MARKS)
        if repair:
            from avfeat.data.summary import repair_cache

            if mode is not OutputMode.RESUME:
                raise InputError("--repair works on an existing cache: pass it with --resume")
            repair_cache(out, note)
        config, cache_layout = _merge_config(out, mode, given)
        if options.dtype == "auto" and mode is OutputMode.RESUME:
            # auto keeps what computed the cache's tokens (auto's choice may have changed since)
            options = replace(options, dtype=compute_dtype(cache_layout) or options.dtype)
        if ray_address is None:  # a Ray run's workers pick their dtype; each shard is checked as it is written
            from avfeat.core.devices import resolve_device

            check_compute_dtype(cache_layout, resolve_dtype(options.dtype, str(resolve_device(options.device))))
        else:
            from avfeat.extract.ray_job import import_ray

            import_ray()  # says how to install it, before models load
        encoder = Encoder.describe(config) if ray_address is not None else Encoder(config, device=options.device, dtype=options.dtype, batch_size=options.batch_size)
        for spec in (config.audio_model, config.visual_model):
            if spec.startswith("random:"):
                note(f"note: {spec} has random weights (for tests, demos and benchmarks); its tokens carry no learned meaning")
        yield Extraction(Extractor(config, options, encoder), inputs, Path(out), ray_address)


class _WriterThread:
    """Runs shard writes in order on a background thread; re-raises its errors here."""

    def __init__(self):
        self._queue: queue.Queue = queue.Queue(maxsize=64)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="avfeat-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                if self._error is None:
                    job()
            except BaseException as error:  # handed to the main thread in submit()/drain()
                self._error = error
            finally:
                self._queue.task_done()

    def submit(self, job: Callable[[], None]) -> None:
        self._check()
        self._queue.put(job)

    def drain(self) -> None:
        self.wait()
        self._check()

    def wait(self) -> None:
        self._queue.join()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _check(self) -> None:
        if self._error is not None:
            raise self._error


class Extractor:
    """The extraction job: extracts lists of videos into a cache with one :class:`Encoder`."""

    def __init__(self, config: ExtractConfig, options: RunOptions, encoder: Encoder | None = None):
        self.config, self.options = config, options
        self.encoder = encoder or Encoder(config, device=options.device, dtype=options.dtype, batch_size=options.batch_size)

    def run(
        self,
        inputs: list[MediaInput],
        out: str | Path,
        progress: Callable[[int, float], None] | None = None,
        on_plan: Callable[[int], None] | None = None,
        ray_address: str | None = None,
    ) -> ExtractSummary:
        """Extract ``inputs`` (``extract.inputs.list_inputs``) into the cache at ``out``,
        skipping what it already records; ids follow ``extract.inputs.assign_ids``.

        ``on_plan(n)`` is told how many videos this run will process; ``progress(videos,
        media_seconds)`` is called as videos are written. With ``ray_address`` (``"local"``
        for a Ray started here) the work runs as a Ray Data pipeline (extract/ray_job.py) and
        writes the same shards and manifest parts. The cache's writer lock is held throughout
        (``avfeat.core.lock.writer_lock``): a second writer is refused before it touches anything.
        """
        with writer_lock(out, "cache"):
            return self._run(inputs, out, progress, on_plan, ray_address)

    def _run(self, inputs, out, progress, on_plan, ray_address) -> ExtractSummary:
        started = time.perf_counter()
        layout = open_for_writing(out, self.encoder.cache_config())
        summary, todo = plan_run(layout, inputs, self.options)
        if on_plan:
            on_plan(len(todo) - sum(record.status == Status.SUPERSEDED for record in todo))  # inputs, not the retired records that go with them

        if ray_address is None:
            self._extract(layout, todo, summary, progress)
        else:
            from avfeat.extract.ray_job import extract_on_ray

            extract_on_ray(self, layout, todo, summary, progress, address=ray_address)

        final = ManifestRecords(read_manifest(layout.root, Recorded._fields)).recorded()
        statuses = Counter()
        for _, vid in summary.ids.ids:
            record = final.get(vid)
            if record is None:
                continue  # left out by --limit
            statuses[record.status] += 1
            if record.ok:
                summary.media_seconds += record.duration
        summary.ok = statuses.pop(Status.OK, 0)
        summary.failed = dict(statuses)
        summary.seconds = time.perf_counter() - started
        return summary

    def _extract(self, layout: CacheLayout, todo: list[VideoRecord], summary: ExtractSummary, progress) -> None:
        from avfeat.extract.workers import DecodePool

        if not todo:
            return
        writer_thread = _WriterThread()
        tasks = (DecodeTask(record, self.encoder.spec) for record in todo if record.ok)
        try:
            with DecodePool(decode_task, workers=self.options.workers, timeout=self.options.timeout) as pool:
                decoded = pool.imap(tasks)
                for index, records in plan_shards(layout, todo, self.options.shard_size):
                    # Leaving the block commits the shard; an error removes it (after the writer
                    # thread's last write, so nothing touches the file while it is removed).
                    with ShardWriter(layout, index, attrs=self.encoder.shard_attrs(), **self.encoder.writer_dims()) as writer:
                        try:
                            self._fill_shard(writer, records, decoded, writer_thread, progress)
                        finally:
                            writer_thread.wait()
                        writer_thread.drain()
                    summary.processed += sum(record.status != Status.SUPERSEDED for record in records)  # each input once
                    summary.bytes_written += writer.final_path.stat().st_size
        finally:
            writer_thread.close()

    def _fill_shard(self, writer: ShardWriter, records: list[VideoRecord], decoded, writer_thread: _WriterThread, progress) -> None:
        """Decode, encode and append one shard's videos, batching across videos in input order."""
        group: list[tuple[VideoRecord, DecodedMedia]] = []
        group_frames = 0
        target = group_target(self.options.batch_size)

        def flush() -> None:
            nonlocal group, group_frames
            if group:
                tokens = self.encoder.encode([media for _, media in group])
                for (record, media), (audio, visual) in zip(group, tokens):
                    writer_thread.submit(lambda r=record, a=audio, v=visual, t=media.frame_times: writer.add(r, a, v, t))
                    if progress:
                        progress(1, record.duration)
            group, group_frames = [], 0

        for record in records:
            if not record.ok:  # missing before decoding, or the retired record of a changed file
                writer_thread.submit(lambda r=record: writer.add_failure(r, r.status, r.error))
                if progress and record.status != Status.SUPERSEDED:
                    progress(1, 0.0)
                continue
            task, result = next(decoded)
            assert task.record.video_id == record.video_id, "decode results out of order"
            if isinstance(result, MediaError):
                writer_thread.submit(lambda r=record, e=result: writer.add_failure(r, e.status, e.message))
                if progress:
                    progress(1, 0.0)
                continue
            group.append((with_media(record, result, self.encoder.audio.token_rate, self.config.fps), result))
            group_frames += len(result.frames)
            if group_frames >= target:
                flush()
        flush()


def plan_run(layout: CacheLayout, inputs: list[MediaInput], options: RunOptions) -> tuple[ExtractSummary, list[VideoRecord]]:
    """What a run of ``inputs`` into the cache does before decoding anything: each input's id,
    those the cache already records (skipped), those past ``options.limit`` (left), and the
    records to write, in order (a changed file's retired record before its successor's)."""
    with collector_paused():  # a million inputs and records: see collector_paused
        return _plan(layout, inputs, options)


def _plan(layout: CacheLayout, inputs: list[MediaInput], options: RunOptions) -> tuple[ExtractSummary, list[VideoRecord]]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:  # pyarrow reads the parts off the GIL while the inputs' paths are resolved
        reading = pool.submit(read_manifest, layout.root, Recorded._fields)  # a third of the manifest's bytes
        resolved = resolve_paths(inputs)
        records = ManifestRecords(reading.result())
    recorded = records.recorded()  # what deciding needs of each record
    summary = ExtractSummary(ids=assign_ids(inputs, recorded, options.refresh, options.retry_failed, resolved))
    if summary.ids.superseded:  # a changed file's retired record is written whole, its metadata included
        records = ManifestRecords(read_manifest(layout.root))
    todo: list[VideoRecord] = []
    planned = skipped = failed_before = 0  # counted in locals, names bound once: a million inputs
    again, retry_failed, find, OK = summary.ids.again, options.retry_failed, recorded.get, Status.OK
    for (item, vid), path in zip(summary.ids.ids, summary.ids.paths, strict=True):
        previous = find(vid)
        if previous is not None and vid not in again and (previous.status == OK or not retry_failed):
            skipped += 1
            failed_before += previous.status != OK
            continue
        if options.limit is not None and planned >= options.limit:
            summary.left += 1
            continue
        old = summary.ids.superseded.get(vid)
        if old is not None and old in records:  # in the same shard as its successor, so the old tokens are never read again
            todo.append(records[old].with_(status=Status.SUPERSEDED, error=f"its file changed; extracted again as {vid}"))
        todo.append(_new_record(vid, item, path))
        planned += 1
    summary.skipped, summary.failed_before = skipped, failed_before
    return summary, todo


def _new_record(vid: str, item: MediaInput, resolved: str) -> VideoRecord:
    """The record of an input before decoding (``new_record``, with its segment and metadata):
    its path (a URL or ``<tar>#<member>`` as given), size and mtime, or the status that says why
    it cannot be read (``missing``; for URLs also ``access_denied``, ``remote_timeout``; a
    problem its listing found, such as ``no_media``)."""
    fields = dict(segment_start=item.start, segment_end=item.end, metadata=dict(item.metadata))
    try:
        stat = item.stat or sources.stat(item.path)
    except OSError as error:
        if sources.is_plain_local(item.path):
            return new_record(vid, resolved, status=Status.MISSING, error=f"cannot read file: {error.strerror}", **fields)
        return new_record(vid, resolved, status=sources.status_of(error), error=" ".join(str(error).split()), **fields)
    if item.problem is not None:
        fields.update(status=item.problem[0], error=item.problem[1])
    return new_record(vid, resolved, stat.size, stat.mtime, **fields)
