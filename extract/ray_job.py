"""`avfeat extract --ray`: the extraction job as a Ray Data pipeline, for clusters.

    shard plan ──▶ decode ──▶ audio backbone ──▶ visual backbone ──▶ shard writer ──▶ summary
    (driver)       (CPU       (actor pool,       (actor pool,        (CPU tasks:      (driver)
                   tasks)     GPU if any)        GPU if any)         HDF5 + part)

One row of the dataset is one planned shard. The driver numbers the shards before anything
runs (after the cache's last committed part, as the local job does), so every writer owns its
file names and writers never coordinate. Each writer commits its shard exactly like the local
job (HDF5 then manifest part, both through temp file + rename), so a cache written on a cluster
is the same cache: the other commands read it unchanged, and a crashed or stopped run is resumed
from the manifest by running the same command again (with or without ``--ray``).

Inside a shard the videos are encoded in the local job's groups (``encode_groups``), so on the
same device and dtype the tensors are bit-identical to the local job's, given the same torch
thread count on CPU (the count can change the order of float sums): Ray gives each actor
``OMP_NUM_THREADS`` = its CPU share unless the driver's environment sets it. The cache folder must be
on storage every node can reach, and avfeat must be installed on every node.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import re
import threading
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from avfeat.data.layout import CacheLayout
from avfeat.data.records import Status, VideoRecord
from avfeat.core.errors import AvfeatError, InputError
from avfeat.core.values import seconds_from_env
from avfeat.extract.media import DecodedMedia, DecodeSpec, MediaError

INSTALL_HINT = "--ray needs Ray, which is not installed: pip install 'ray[data]' (the ray extra of avfeat's wheel)"
LOCAL = "local"  # start a Ray on this machine
STALL_ENV = "AVFEAT_RAY_STALL_SECONDS"
DEFAULT_STALL = 900.0  # no shard committed for this long: stop (model loading on a cold node included)

_ADDRESS_RE = re.compile(r"^(auto|local|ray://\S+|[\w.\-]+:\d+)$")


def looks_like_address(text: str) -> bool:
    """``auto``, ``local``, ``ray://host:port`` or ``host:port``: what ``--ray`` accepts as a value."""
    return bool(_ADDRESS_RE.match(text))


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401 - the Data library is the part we need
    except ImportError:
        raise InputError(INSTALL_HINT) from None
    return ray


class RayJobError(AvfeatError):
    """The Ray pipeline stopped; committed shards are kept and a re-run resumes."""


@dataclass
class Shard:
    """A planned shard on its way through the pipeline (one dataset row)."""

    index: int
    records: list[VideoRecord]  # in input order; status says ok or why not
    media: list[DecodedMedia | None] = field(default_factory=list)  # decoded, where status is ok
    audio: dict[int, np.ndarray] = field(default_factory=dict)  # tokens by position in records
    visual: dict[int, np.ndarray] = field(default_factory=dict)
    compute: dict[str, str] = field(default_factory=dict)  # device and dtype the models ran with

    def decoded(self) -> list[int]:
        return [i for i, record in enumerate(self.records) if record.ok]


@dataclass
class Placement:
    """Ray resources per stage."""

    actors: int  # actors per backbone
    actor_gpus: float
    actor_cpus: float
    decode_cpus: float
    write_cpus: float


def plan_placement(resources: dict[str, float], device: str, node_cpus: float | None = None) -> Placement:
    """With GPUs each one hosts an audio and a visual actor (half a GPU each), and decoding
    uses the CPUs; without, one actor per backbone shares the CPUs with decoding.

    ``node_cpus`` is the smallest node's CPU count (default: all on one node). Every stage must
    fit on any one node, alongside the others: when a node dies, its actors and tasks are
    placed again on the nodes left, and a share that fits nowhere would wait for ever."""
    gpus = 0 if device == "cpu" else int(resources.get("GPU", 0))
    cpus = max(1.0, float(resources.get("CPU", 1)))
    node = min(cpus, max(1.0, float(node_cpus or cpus)))
    if gpus:
        return Placement(actors=gpus, actor_gpus=0.5, actor_cpus=min(1.0, node / 4), decode_cpus=min(1.0, node / 2), write_cpus=min(0.5, node / 4))
    # Decoding asks for a different CPU share than the actors: Ray Data would otherwise fuse the
    # decode step into the audio actor and decode one shard at a time.
    return Placement(actors=1, actor_gpus=0.0, actor_cpus=max(min(0.5, node / 4), node / 4), decode_cpus=min(1.0, node / 2), write_cpus=0.25)


def smallest_node_cpus(ray) -> float | None:
    """The CPU count of the smallest live node that has CPUs (None when Ray reports none)."""
    counts = [node["Resources"].get("CPU", 0) for node in ray.nodes() if node.get("Alive")]
    counts = [count for count in counts if count > 0]
    return min(counts) if counts else None


def _decode_shard(item: dict[str, Any], spec: DecodeSpec, timeout: float, token_rate: float, fps: float) -> dict[str, Any]:
    """CPU task: decode a shard's videos in one decoder process (a hang or codec crash there
    costs one video, as in the local job)."""
    from avfeat.extract.tasks import DecodeTask, decode_task, with_media
    from avfeat.extract.workers import DecodePool

    shard: Shard = item["shard"]
    tasks = [DecodeTask(record, spec) for record in shard.records if record.ok]
    with DecodePool(decode_task, workers=1, timeout=timeout) as pool:
        results = {task.record.video_id: result for task, result in pool.imap(tasks)}
    shard.media = [None] * len(shard.records)
    for position, record in enumerate(shard.records):
        result = results.get(record.video_id)
        if not record.ok:
            continue
        if isinstance(result, MediaError):
            shard.records[position] = record.with_(status=result.status, error=result.message)
        else:
            shard.records[position] = with_media(record, result, token_rate, fps)
            shard.media[position] = result
    return item


class BackboneStage:
    """Actor: one backbone (``modality`` audio or visual) loaded once, encoding whole shards in
    the local job's groups."""

    def __init__(self, config, options, modality: str):
        from avfeat.core.devices import resolve_device
        from avfeat.extract import encoder, models

        self.modality, self.batch_size = modality, options.batch_size
        self.device = str(resolve_device(options.device))
        self.dtype = encoder.resolve_dtype(options.dtype, self.device)
        if modality == "audio":
            self.backbone = models.load_audio_backbone(config.audio_model, config.audio_layer, device=self.device, dtype=self.dtype)
            self.encode = encoder.encode_audio_group
        else:
            self.backbone = models.load_visual_backbone(config.visual_model, config.visual_layer, device=self.device, dtype=self.dtype)
            pool = encoder.check_pool(self.backbone, config.pool_patches)  # --pool-patches, as the local Encoder does
            self.encode = functools.partial(encoder.encode_visual_group, pool=pool)

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        from avfeat.extract.tasks import encode_groups

        shard: Shard = item["shard"]
        positions = shard.decoded()
        frames = [len(shard.media[p].frames) for p in positions]
        for group in encode_groups(frames, self.batch_size):
            members = [positions[g] for g in group]
            tokens = self.encode(self.backbone, [shard.media[p] for p in members], self.batch_size)
            getattr(shard, self.modality).update(zip(members, tokens))
        shard.compute = {"device": self.device, "dtype": self.dtype}
        return item


def _write_shard(item: dict[str, Any], writer_args: dict[str, Any]) -> dict[str, Any]:
    """CPU task: write and commit one shard and its manifest part; report what it holds."""
    from avfeat.data.shards import ShardWriter

    shard: Shard = item["shard"]
    attrs = dict(writer_args["attrs"])
    if shard.compute:
        attrs.update(compute_device=shard.compute["device"], compute_dtype=shard.compute["dtype"])
    with ShardWriter(CacheLayout(Path(writer_args["root"])), shard.index, attrs=attrs, **writer_args["dims"]) as writer:
        for position, record in enumerate(shard.records):
            if record.ok:
                writer.add(record, shard.audio[position], shard.visual[position], shard.media[position].frame_times)
            else:
                writer.add_failure(record, record.status, record.error)
    return {
        "index": shard.index,
        "videos": sum(record.status != Status.SUPERSEDED for record in shard.records),  # each input once
        "media_seconds": sum(record.duration for record in shard.records if record.ok),
        "bytes": writer.final_path.stat().st_size,
    }


def stall_seconds() -> float:
    """How long the job waits for the next committed shard before it stops (``AVFEAT_RAY_STALL_SECONDS``)."""
    return seconds_from_env(STALL_ENV, DEFAULT_STALL)


def _watched(rows, stall: float):
    """Yield ``rows``, read in a thread of their own; no row for ``stall`` seconds stops the job.

    Ray waits for ever for resources that no live node has (work of a lost node that fits
    nowhere else), so without this a job could hang with no progress and no error."""
    box: queue.Queue = queue.Queue()

    def pump() -> None:
        try:
            for row in rows:
                box.put(("row", row))
            box.put(("end", None))
        except BaseException as error:  # noqa: BLE001 - handed to the caller's thread
            box.put(("error", error))

    threading.Thread(target=pump, name="avfeat-ray-rows", daemon=True).start()
    while True:
        try:
            kind, value = box.get(timeout=stall)
        except queue.Empty:
            raise RayJobError(
                f"the Ray pipeline made no progress for {stall:g} s (no shard committed: a lost node's work that fits "
                f"on no live node?); committed shards are kept, run again to resume (or raise {STALL_ENV})"
            ) from None
        if kind == "end":
            return
        if kind == "error":
            raise value
        yield value


def _user_error(error: BaseException) -> BaseException:
    """The exception our code raised inside a Ray task, under Ray's wrappers (or the Ray error
    itself when nothing of ours failed, e.g. a lost node)."""
    seen = error
    while type(seen).__module__.startswith("ray.") or type(seen).__name__ == "UserCodeException":
        inner = getattr(seen, "cause", None)
        inner = inner if isinstance(inner, BaseException) and inner is not seen else seen.__cause__
        if inner is None:
            break
        seen = inner
    return seen


def _start(ray, address: str) -> bool:
    """Connect to (or start) Ray; True when this call started it and must shut it down."""
    if ray.is_initialized():
        return False
    quiet = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        if address == LOCAL:
            ray.init(**quiet)
        else:
            ray.init(address=address, **quiet)
    except Exception as error:  # noqa: BLE001 - any failure to connect is the user's to fix
        raise InputError(f"cannot start or reach Ray at {address!r}: {' '.join(str(error).split())[:300]}") from None
    return True


def extract_on_ray(extractor, layout: CacheLayout, todo: list[VideoRecord], summary, progress, address: str) -> None:
    """Run the planned shards of ``todo`` through Ray Data and commit them into ``layout``."""
    from avfeat.extract.tasks import plan_shards

    ray = import_ray()
    if not todo:
        return
    shards = plan_shards(layout, todo, extractor.options.shard_size)
    stall = stall_seconds()  # a bad setting stops the job before Ray starts
    started = _start(ray, address)
    ray_logger = logging.getLogger("ray.data")
    previous_level = ray_logger.level
    try:
        ray_logger.setLevel(logging.CRITICAL)  # errors reach the user as one line below
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.raise_original_map_exception = True  # our exception, not Ray's "UDF failed" wrapper
        placement = plan_placement(ray.cluster_resources(), extractor.options.device, smallest_node_cpus(ray))
        config, options = extractor.config, extractor.options
        actor_resources = dict(
            num_cpus=placement.actor_cpus,
            num_gpus=placement.actor_gpus,
            compute=ray.data.ActorPoolStrategy(size=placement.actors),
        )
        writer_args = {
            "root": str(layout.root),
            "attrs": extractor.encoder.shard_attrs(),
            "dims": extractor.encoder.writer_dims(),
        }
        dataset = (
            ray.data.from_items([{"shard": Shard(index, records)} for index, records in shards], override_num_blocks=len(shards))
            .map(
                _decode_shard,
                fn_kwargs=dict(spec=extractor.encoder.spec, timeout=options.timeout, token_rate=extractor.encoder.audio.token_rate, fps=config.fps),
                num_cpus=placement.decode_cpus,
            )
            .map(BackboneStage, fn_constructor_kwargs=dict(config=config, options=options, modality="audio"), **actor_resources)
            .map(BackboneStage, fn_constructor_kwargs=dict(config=config, options=options, modality="visual"), **actor_resources)
            .map(_write_shard, fn_kwargs=dict(writer_args=writer_args), num_cpus=placement.write_cpus)
        )
        for result in _watched(dataset.iter_rows(), stall):
            summary.processed += result["videos"]
            summary.bytes_written += result["bytes"]
            if progress:
                progress(result["videos"], result["media_seconds"])
    except ray.exceptions.RayError as error:
        cause = _user_error(error)
        # Ray appends its retry advice to the exception's message on lines of its own.
        message = (str(cause).strip().splitlines() or [""])[0][:300]
        if isinstance(cause, AvfeatError):
            raise type(cause)(message) from None
        raise RayJobError(f"the Ray pipeline stopped ({type(cause).__name__}: {message}); committed shards are kept, run again to resume") from None
    finally:
        ray_logger.setLevel(previous_level)
        if started:
            ray.shutdown()
