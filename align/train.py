"""The head-training loop: contrastive projection heads on cached tokens.

An epoch is ``passes_per_epoch`` passes over the training videos with one window per video
per pass, in batches of B distinct videos; batch size, passes and epochs left unset are sized
to the collection (``schedule.plan_schedule``) and stored resolved in config.json. After each epoch
the heads are scored on fixed validation windows, and the checkpoint (heads, config, resumable
state, metrics, curves) is saved. ``resume`` continues exactly: the same subsequent losses as
an uninterrupted run.

An audit table (``avfeat audit``) can leave out the videos whose sound likely does not belong to
their pictures (``exclude``, before the split) and weight each remaining video's positive pair by
that probability (``weight_by``); config.json records each table's path and sha256, and a resume
refuses a table that changed since (``audit_tables.py``).

Several processes (torchrun, ``--nproc``: see ``distributed.py``) share each global batch of B
windows; rank 0 validates and saves while the others wait.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from avfeat import __version__
from avfeat.align import checkpoint as ckpt
from avfeat.align import data, schedule, streaming
from avfeat.align.audit_tables import AuditTables, recorded_tables
from avfeat.align.config import RunOptions, TrainConfig
from avfeat.align.distributed import Group, check_batch
from avfeat.align.distributed import start as start_group
from avfeat.align.heads import AVHeads, HeadConfig
from avfeat.align.loss import LossWeights, contrastive_loss
from avfeat.align.epoch_log import MIN_CHOOSING_VIDEOS, EpochLog, best_epoch, summary_line
from avfeat.align.evaluate import validation_loss, window_scores
from avfeat.align.metrics import both_directions
from avfeat.align.scores import paired_scores, pairwise_scores
from avfeat.core.devices import resolve_device
from avfeat.core.lock import has_entries, writer_lock
from avfeat.core.outputs import claim_output, prepare_output, refuse_inside
from avfeat.data.configs import TrainedOn
from avfeat.data.shards import compute_dtype
from avfeat.core.errors import CheckpointError, InputError, TrainingDiverged


@dataclass
class TrainResult:
    out: Path
    history: list[dict]  # one record per epoch, as in metrics.jsonl
    losses: list[float]  # every step's loss of this run, in order
    in_memory: bool
    data_bytes: int
    notes: list[str] = field(default_factory=list)
    rank: int = 0  # this process's rank when several train together (only rank 0 wrote files)
    warnings: list[str] = field(default_factory=list)  # e.g. a run too short to learn
    best_epoch: int | None = None  # the epoch heads.safetensors holds


def window_loss(heads: AVHeads, audio: torch.Tensor, visual: torch.Tensor, config: TrainConfig, shifted: torch.Tensor | None = None, group: Group | None = None,
                pair_weights: torch.Tensor | None = None):
    """Loss of one batch. With temporal negatives, ``audio``/``visual`` hold 2B windows (the
    batch, then each one's shifted window) and ``shifted`` says which shifts exist.
    ``pair_weights``: optional (B,) weight of each window's positive pair (this rank's windows).

    With a ``group`` of several processes, the inputs are this rank's share of the global batch
    and the loss is the mean over this rank's rows of the global score matrix."""
    a, v = heads.project_audio(audio), heads.project_visual(visual)
    b = a.shape[0] if shifted is None else a.shape[0] // 2
    rows = {}
    if group is None or group.world_size == 1:
        scores = pairwise_scores(a[:b], v[:b], config.aggregation)
        audio_all, visual_all = a[:b], v[:b]
    else:
        # Every rank's projected tokens, carrying gradients back to the rank they came from:
        # this rank's audio against all visual windows, its visual against all audio windows.
        audio_all, visual_all = group.gather(a[:b]), group.gather(v[:b])
        scores = pairwise_scores(a[:b], visual_all, config.aggregation)
        rows = {"v2a_scores": pairwise_scores(audio_all, v[:b], config.aggregation).T, "first": group.rank * b}
    if shifted is not None:  # a window's shifted twin lives on the same rank: no gather
        missing = ~shifted
        rows["shifted_a2v"] = paired_scores(a[:b], v[b:], config.aggregation).masked_fill(missing, float("-inf"))
        rows["shifted_v2a"] = paired_scores(a[b:], v[:b], config.aggregation).masked_fill(missing, float("-inf"))
    weights = LossWeights(offdiag=config.offdiag_weight, centroid=config.centroid_weight)
    return contrastive_loss(scores, heads.logit_scale, weights, audio_tokens=audio_all, visual_tokens=visual_all, pair_weights=pair_weights, **rows)


class Trainer:
    """Sets up data, heads and optimizer for one checkpoint folder, then runs epochs.

    With a ``group`` of several processes every rank builds a Trainer: all of them sample the
    same plans and take their share of each batch; rank 0 alone validates and writes the
    checkpoint.
    """

    def __init__(self, cache_path: str | Path, out: str | Path, config: TrainConfig, options: RunOptions, log: Callable[[str], None] = print, group: Group | None = None):
        self.cache_path, self.out, self.options, self.log = Path(cache_path), Path(out), options, log
        self.group = group or Group(device=resolve_device(options.device))
        self.notes: list[str] = []
        self.warnings: list[str] = []
        self._recorded: dict = {}  # on resume: the audit tables' records in the checkpoint's config.json
        with self.group.together():  # the checks first, so a bad run fails before loading data
            self.cache = data.open_cache(cache_path)
            refuse_inside(self.out, [(cache_path, "cache")])
            if options.resume and not (self.out.is_dir() and has_entries(self.out)):
                # A job rerun until it is done may pass --resume from the start (prepare_output's rule).
                options = self.options = replace(options, resume=False)
                self.notes.append(f"nothing to resume in {self.out}: starting a new checkpoint")
            if options.resume:
                config = self._resume_config()
                if self.group.is_main:
                    self._prepare_out()  # checks the folder is this avfeat's (adopts an older avfeat's)
            elif self.group.is_main:
                self._prepare_out()
            self.config = config
            self.audit_tables = AuditTables(config, self.cache, self.out, log, self._recorded)
            self.audit = self.audit_tables.records  # config.json records of the audit tables this run uses
            self.device = self.group.device
            self.amp = self.device.type == "cuda"

            ok_ids = [r.video_id for r in self.cache.records(status="ok")]
            kept_ids = self.audit_tables.exclude(ok_ids) if config.exclude else ok_ids
            train_ids, val_ids, self.split, split_note = data.choose_split(self.cache, kept_ids, config.val_fraction, config.seed)
            if split_note:
                self.notes.append(split_note)
            if config.exclude:
                self.audit_tables.report_exclusion(len(ok_ids), len(train_ids))
            self.geometry, self.table = data.check_window(self.cache, train_ids + val_ids, config.window)
            has_windows = self.table.count > 0
            self.train_videos = [k for k in range(len(train_ids)) if has_windows[k]]
            self.val_videos = [k for k in range(len(train_ids), len(train_ids) + len(val_ids)) if has_windows[k]]
            if len(self.train_videos) < 2:
                raise InputError(f"only {len(self.train_videos)} training video(s) can hold a {config.window:g} s window; need at least 2")
            self.video_weights = self.audit_tables.video_weights(self.table, self.train_videos) if config.weight_by else None
            self.batch_size = self._global_batch_size()
            self.val_ids = torch.as_tensor(self.table.evenly_spaced(self.val_videos, config.val_windows))
            self.by_validation = len(self.val_videos) >= MIN_CHOOSING_VIDEOS  # else the last epoch is kept
            if not options.resume and config.val_fraction > 0 and len(self.val_videos) < MIN_CHOOSING_VIDEOS:
                self.warnings.append(f"only {len(self.val_videos)} videos held out for validation (fewer than {MIN_CHOOSING_VIDEOS}): their figures "
                                     "are noisy and the last epoch is kept, not the best; raise --val-fraction or add videos")

            # The schedule: what was left unset is sized to the collection and stored resolved
            # (config.json's "training"), so a resume and eval see the values this run used.
            if config.temporal_negatives is None:  # automatic: resolved here and stored, as the schedule is
                on, why = data.temporal_negatives_fit(self.table, self.train_videos, config.min_shift)
                config = replace(config, temporal_negatives=on)
                self.notes.append(why)
            train_windows = self.table.disjoint_count(self.train_videos)
            planned = schedule.plan_schedule(len(self.train_videos), train_windows, self.batch_size, config.passes_per_epoch, config.epochs, config.steps)
            self.config = config = replace(
                config, batch_size=config.batch_size or planned.batch_size, passes_per_epoch=planned.passes_per_epoch, epochs=planned.epochs)
            self.steps_per_epoch, self.total_steps, self.epochs = planned.steps_per_epoch, planned.total_steps, planned.epochs
            warning = schedule.short_run_warning(planned, train_windows)
            if warning:
                self.warnings.append(warning)

        with self.group.together():
            self._load_data()
            torch.manual_seed(config.seed)
            head_config = HeadConfig(
                audio_dim=self.cache.config.audio_dim, visual_dim=self.cache.config.visual_dim, dim=config.dim,
                head=config.head, aggregation=config.aggregation, init_temperature=config.temperature,
            )
            self.heads = AVHeads(head_config).to(self.device)
            self.optimizer = torch.optim.AdamW(self.heads.parameters(), lr=config.lr, weight_decay=config.weight_decay)
            self.generator = torch.Generator().manual_seed(config.seed + 1)
            self.epoch, self.step, self.history = 0, 0, []
            self.best_epoch: int | None = None  # the epoch heads.safetensors holds
            self.epoch_log = EpochLog(self.out)
            if options.resume:
                self._restore()
            elif self.group.is_main:
                ckpt.save_config(self.out, self.checkpoint_config())
        self.group.check_same({f"the cache {cache_path}": self.cache.fingerprint(), f"the checkpoint {self.out} to resume": (self.options.resume, self.step)})
        self.group.broadcast_parameters(self.heads)

    # ---- setup -------------------------------------------------------------------------

    def _prepare_out(self) -> None:
        # --overwrite keeps the old heads until the first save replaces them, so a run that fails
        # or is killed before then leaves the old checkpoint loadable: its config travels inside
        # heads.safetensors. A heads file of an earlier version goes now: its config is only
        # config.json, which this run rewrites when it starts.
        own = [*ckpt.OWN_FILES, ckpt.TENSORBOARD_DIR]
        if ckpt.has_embedded_config(self.out / ckpt.HEADS_FILE):
            own.remove(ckpt.HEADS_FILE)
        prepare_output(self.out, marker=ckpt.CONFIG_FILE, kind=ckpt.KIND, resume=self.options.resume, overwrite=self.options.overwrite, own=own,
                       marker_keys=ckpt.CONFIG_MARKS)

    def _resume_config(self) -> TrainConfig:
        stored = ckpt.read_heads_config(self.out)
        if not (self.out / ckpt.STATE_FILE).is_file():
            raise CheckpointError(f"{self.out} has no {ckpt.STATE_FILE}: nothing to resume (no epoch finished yet?)")
        fingerprint = self.cache.fingerprint()
        if stored.cache.fingerprint != fingerprint:
            raise CheckpointError(f"{self.out} was trained on another cache (fingerprint {stored.cache.fingerprint or None}, this cache {fingerprint})")
        self.notes.append("resuming with the checkpoint's own training options")
        self._recorded = recorded_tables(stored.training)
        return TrainConfig.from_dict(stored.training)

    def _global_batch_size(self) -> int:
        """The configured global batch (unset: ``schedule.auto_batch_size``), lowered when there are
        fewer training videos (to a multiple of the number of processes, which share each batch
        equally)."""
        world, batch, videos = self.group.world_size, self.config.batch_size, len(self.train_videos)
        if batch is None:
            batch = schedule.auto_batch_size(videos, world)
            if batch < schedule.MIN_AUTO_BATCH:
                self.warnings.append(f"batch size {batch}, below {schedule.MIN_AUTO_BATCH}: only {videos} training videos can hold a "
                                     f"{self.config.window:g} s window (a batch holds distinct videos), so each positive has {batch - 1} negatives")
        check_batch(batch, world)
        if videos < batch:
            batch = videos - videos % world
            if batch < max(2, world):
                raise InputError(f"only {videos} training videos can hold a {self.config.window:g} s window: too few for batches shared by {world} processes")
            self.notes.append(f"batch size lowered to {batch}: there are only {videos} training videos with a full window")
        return batch

    def _load_data(self) -> None:
        ids = self.table.video_ids
        self.data_bytes = data.token_bytes(self.cache, ids)
        limit = self.options.memory_limit
        if limit is None:  # every process on a CPU loads its own copy: share the default
            shared = self.group.local_world_size if self.device.type == "cpu" else 1
            limit = data.default_memory_limit(self.device) // shared
        where = "GPU memory" if self.device.type == "cuda" else "memory"
        if self.data_bytes <= limit:
            started = time.perf_counter()
            self.source = data.MemoryWindows(self.cache, self.table, self.device)
            self.in_memory = True
            self.log(f"loaded {len(ids)} videos' tokens into {where}: {self.data_bytes / 2**20:.1f} MB in {time.perf_counter() - started:.1f} s")
        else:
            self.source = streaming.StreamWindows(self.cache_path, self.table, self.device, self.options.workers)
            self.in_memory = False
            self.log(f"streaming windows from HDF5 with {self.options.workers} workers: the tokens take {self.data_bytes / 2**20:.1f} MB, over the {limit / 2**20:.0f} MB memory limit")

    def checkpoint_config(self) -> dict:
        # How the tokens were made travels with the heads: queries (search, sync) decode and compute the same way.
        trained_on = TrainedOn.of(self.cache.config, str(self.cache_path.resolve()), self.cache.fingerprint(), compute_dtype(self.cache.layout))
        return ckpt.HeadsConfig(
            heads=self.heads.config, window=self.config.window, cache=trained_on,
            hop=self.config.hop if self.config.hop else self.config.window / 2,
            training=self.config.to_dict(self.audit), split=self.split, avfeat_version=__version__, best_epoch=self.best_epoch,
            output_id=claim_output(self.out, ckpt.KIND, [*ckpt.OWN_FILES, ckpt.TENSORBOARD_DIR]).id,
        ).to_dict()

    def _rng_states(self) -> dict[str, torch.Tensor]:
        states = {"sampler": self.generator.get_state(), "torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            states["cuda"] = torch.cuda.get_rng_state(self.device)
        return states

    def _restore(self) -> None:
        rng, meta = ckpt.load_state(self.out, self.heads, self.optimizer)
        self.generator.set_state(rng["sampler"])
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.epoch, self.step, self.history = meta["epoch"], meta["step"], meta["history"]
        self.best_epoch = best_epoch(self.history, self.by_validation) if self.history else None

    # ---- training ----------------------------------------------------------------------

    def train_step(self, audio: torch.Tensor, visual: torch.Tensor, shifted: torch.Tensor | None, pair_weights: torch.Tensor | None = None) -> torch.Tensor:
        """One optimizer step; returns the loss (a detached device scalar: no sync here)."""
        for group in self.optimizer.param_groups:
            group["lr"] = schedule.lr_at(self.step, self.total_steps, self.config)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            out = window_loss(self.heads, audio, visual, self.config, shifted, self.group, pair_weights)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        self.group.average_gradients(self.heads.parameters())
        if self.config.clip:
            torch.nn.utils.clip_grad_norm_(self.heads.parameters(), self.config.clip)
        self.optimizer.step()
        self.step += 1
        return self.group.mean(out.loss.detach())  # the global batch's loss

    def epoch_batches(self, plan: data.Plan):
        """(audio, visual, shifted mask or None) for each step of the plan: this rank's share
        of each batch (all of it in one process)."""
        plan = plan.columns(self.group.share_of(plan.windows.shape[1]))
        ids = data.plan_ids(plan, self.config.temporal_negatives)
        shifted = (plan.shifted >= 0).to(self.device) if self.config.temporal_negatives else None
        for s, (audio, visual) in enumerate(self.source.batches(ids)):
            yield audio, visual, None if shifted is None else shifted[s]

    def plan_weights(self, plan: data.Plan) -> torch.Tensor | None:
        """(steps, b) pair weight of each window of this rank's share of the plan (the rows this
        rank's loss covers), or None without --weight-by."""
        if self.video_weights is None:
            return None
        windows = plan.columns(self.group.share_of(plan.windows.shape[1])).windows
        return self.video_weights[torch.as_tensor(self.table.video)[windows]].to(self.device)

    def run(self, progress=None, on_epoch=None) -> TrainResult:
        """Train until the last epoch (or ``options.stop_after`` epochs of this run).

        Args:
            progress: called with (steps done, loss tensor) after each step.
            on_epoch: called with each epoch's metrics record once it is saved.
        """
        self.heads.train()
        losses: list[float] = []
        epochs_run = 0
        while self.epoch < self.epochs:
            if self.options.stop_after is not None and epochs_run >= self.options.stop_after:
                break
            steps = min(self.steps_per_epoch, self.total_steps - self.step)
            passes = self.config.passes_per_epoch
            plan = data.epoch_plan(self.table, self.train_videos, self.batch_size, passes, self.config.min_shift, self.generator, steps)
            started = time.perf_counter()
            epoch_losses = []
            weights = self.plan_weights(plan)
            for s, (audio, visual, shifted) in enumerate(self.epoch_batches(plan)):
                epoch_losses.append(self.train_step(audio, visual, shifted, None if weights is None else weights[s]))
                if progress is not None:
                    progress(1, epoch_losses[-1])
            epoch_losses = torch.stack(epoch_losses).float().cpu().tolist()
            self._stop_if_diverged(epoch_losses)  # before saving: the last good checkpoint stays
            losses.extend(epoch_losses)
            self.epoch += 1
            epochs_run += 1
            record = {"epoch": self.epoch, "step": self.step, "train_loss": sum(epoch_losses) / len(epoch_losses),
                      "lr": self.optimizer.param_groups[0]["lr"], "temperature": float(1 / self.heads.logit_scale.detach()),
                      "seconds": time.perf_counter() - started, "processes": self.group.world_size}
            if self.group.is_main:
                record.update(self.validate())
                self.history.append(record)
                self.save()
                self.epoch_log.tensorboard(record)
            record = self.group.share(record)  # the other ranks wait here for validation and saving
            if not self.group.is_main:
                self.history.append(record)
            if on_epoch is not None:
                on_epoch(record)
        if self.group.is_main:
            self.epoch_log.plot(self.history)
        return TrainResult(self.out, self.history, losses, self.in_memory, self.data_bytes, self.notes, self.group.rank, self.warnings,
                           self.best_epoch)

    def _stop_if_diverged(self, epoch_losses: list[float]) -> None:
        """A non-finite loss or weight ends the run with one line: the step, the likely cause."""
        bad = next((i for i, loss in enumerate(epoch_losses) if not math.isfinite(loss)), None)
        weights_ok = all(bool(torch.isfinite(p).all()) for p in self.heads.parameters())
        if bad is None and weights_ok:
            return
        step = self.step - len(epoch_losses) + 1 + (bad if bad is not None else len(epoch_losses) - 1)
        what = f"the loss became {epoch_losses[bad]}" if bad is not None else "the weights became non-finite"
        kept = f"{self.out} keeps epoch {self.epoch}, the last good one" if self.epoch else f"nothing was saved in {self.out}"
        raise TrainingDiverged(
            f"training stopped at step {step}: {what} (likely --lr {self.config.lr:g} too high"
            f"{' with --clip 0' if not self.config.clip else ''}, or non-finite tokens: `avfeat info CACHE --verify`); {kept}"
        )

    @torch.no_grad()
    def validate(self) -> dict:
        """Validation loss and R@1/5/10 both ways over the fixed validation windows."""
        if len(self.val_ids) < 2:
            return {}
        self.heads.eval()
        scores = window_scores(self.heads, self.source, self.val_ids, self.config.aggregation, self.batch_size, self.amp)
        self.heads.train()
        metrics = both_directions(scores)
        video = torch.as_tensor(self.table.video)[self.val_ids]
        return {"val_loss": validation_loss(scores, video, self.batch_size, self.heads.logit_scale), "val": metrics}

    def save(self) -> None:
        """State first (self-contained, the last epoch's: resume continues from it), then the
        heads and config.json when this epoch is the best so far (lowest validation loss), then
        metrics (and curves, throttled)."""
        meta = {"epoch": self.epoch, "step": self.step, "history": self.history}
        ckpt.save_state(self.out, self.heads, self.optimizer, self._rng_states(), meta)
        if best_epoch(self.history, self.by_validation) == self.epoch:
            self.best_epoch = self.epoch
            config = self.checkpoint_config()
            ckpt.save_heads(self.out, self.heads, config)
            ckpt.save_config(self.out, config)
        self.epoch_log.save(self.history)


def train(cache_path: str | Path, out: str | Path, config: TrainConfig | None = None, options: RunOptions | None = None, log: Callable[[str], None] = print,
          warn: Callable[[str], None] | None = None) -> TrainResult:
    """Train heads on a cache into the checkpoint folder ``out`` (Python entry of `train-head`).

    Under torchrun or ``--nproc`` (WORLD_SIZE > 1 in the environment) this process joins the
    process group as one rank; only rank 0 logs, shows progress and writes the checkpoint.
    ``warn`` receives each warning (a run too short to learn) before training starts; by
    default it goes to ``log`` as ``warning: ...``.
    """
    from tqdm import tqdm

    options = options or RunOptions()
    group = start_group(resolve_device(options.device))
    lock = None
    try:
        # One writer per checkpoint folder, resumed ones too. Rank 0 alone writes it, so it alone
        # holds the lock; taken inside together() so that a refusal ends every rank with one line.
        with group.together():
            lock = writer_lock(out, "heads checkpoint").acquire() if group.is_main else None
        if warn is None:
            warn = lambda line: log(f"warning: {line}")  # noqa: E731
        if not group.is_main:
            log = warn = lambda _: None  # noqa: E731
        trainer = Trainer(cache_path, out, config or TrainConfig(), options, log=log, group=group)
        if group.world_size > 1:
            log(f"world size {group.world_size} ({group.backend}): global batch {trainer.batch_size}, {trainer.batch_size // group.world_size} windows per process")
        for note in trainer.notes:
            log(f"note: {note}")
        c = trainer.config
        log(f"schedule: {trainer.total_steps} steps of B = {trainer.batch_size} ({trainer.epochs} epochs x {c.passes_per_epoch} passes x "
            f"{trainer.steps_per_epoch // c.passes_per_epoch} steps over {len(trainer.train_videos)} training videos)")
        for line in trainer.warnings:
            warn(line)
        quiet = options.quiet or not group.is_main
        bar = tqdm(total=trainer.total_steps, initial=trainer.step, unit="step", desc="train-head", disable=quiet, dynamic_ncols=True)

        def progress(count: int, loss: torch.Tensor) -> None:
            bar.update(count)
            if bar.n % 10 == 0 or bar.n == bar.total:  # reading the loss syncs the GPU: not every step
                bar.set_postfix(loss=f"{float(loss):.4f}", refresh=False)

        def on_epoch(record: dict) -> None:
            if not quiet:
                bar.write(summary_line(record))

        with bar:
            result = trainer.run(progress, on_epoch)
        result.notes, result.warnings = trainer.notes, trainer.warnings
        # Leave together: a rank that tears its connections down while rank 0 is still plotting
        # can make the other abort at exit.
        group.barrier()
        return result
    finally:
        if lock is not None:
            lock.release()
        group.close()
