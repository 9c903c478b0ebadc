"""The head-training loop: contrastive projection heads on cached tokens.

An epoch is ``passes_per_epoch`` passes over the training videos with one window per video
per pass, in batches of B distinct videos; batch size, passes and epochs left unset are sized
to the collection (``data.plan_schedule``) and stored resolved in config.json. After each epoch
the heads are scored on fixed validation windows, and the checkpoint (heads, config, resumable
state, metrics, curves) is saved. ``resume`` continues exactly: the same subsequent losses as
an uninterrupted run.

An audit table (``avfeat audit``) can leave out the videos whose sound likely does not belong to
their pictures (``exclude``, before the split) and weight each remaining video's positive pair by
that probability (``weight_by``); config.json records each table's path and sha256, and a resume
refuses a table that changed since.

Several processes (torchrun, ``--nproc``: see ``distributed.py``) share each global batch of B
windows; rank 0 validates and saves while the others wait.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

import torch

from avfeat import __version__
from avfeat.align import checkpoint as ckpt
from avfeat.align import data
from avfeat.align.distributed import Group, check_batch
from avfeat.align.distributed import start as start_group
from avfeat.align.heads import AVHeads, HeadConfig
from avfeat.align.loss import LossWeights, contrastive_loss, info_nce
from avfeat.align.evaluate import window_scores
from avfeat.align.metrics import both_directions
from avfeat.align.scores import paired_scores, pairwise_scores
from avfeat.core.devices import resolve_device
from avfeat.core.io import write_atomic
from avfeat.core.lock import writer_lock
from avfeat.core.outputs import prepare_output
from avfeat.core.values import check_number
from avfeat.data.configs import TrainedOn
from avfeat.data.shards import compute_dtype
from avfeat.core.errors import CheckpointError, InputError, TrainingDiverged


CURVES_EVERY = 30.0  # seconds: curves.png is redrawn at most this often, and after the last epoch
AUDIT_OPTIONS = {"exclude": "--exclude", "weight_by": "--weight-by"}  # TrainConfig fields that name an audit table


@dataclass
class TrainConfig:
    """Every option that changes what is learned; stored in config.json under "training"."""

    window: float = 2.0
    hop: float | None = None  # indexing hop, default window / 2
    dim: int = 256
    head: str = "mlp"  # 80 synthetic videos, 5 corpora, defaults otherwise: class R@1 ≥ 0.97; linear fell to 0.78
    aggregation: str = "max-mean"
    epochs: int | None = None  # None: automatic (data.plan_schedule), resolved when training starts
    steps: int | None = None  # total steps; overrides epochs (the last epoch may be partial)
    passes_per_epoch: int | None = None  # None: automatic, an epoch draws as many windows as the videos hold
    batch_size: int | None = None  # None: automatic, at most 64 (data.auto_batch_size)
    lr: float = 1e-2  # heads only, with warm-up, cosine decay and clipping; 1e-3 fell to 0.94 in as many steps
    weight_decay: float = 0.01
    warmup: float = 0.05  # fraction of the steps spent warming up linearly
    clip: float = 1.0  # max gradient norm (0: no clipping)
    temperature: float = 0.07  # initial; learned, clamped at 0.01
    temporal_negatives: bool = False
    min_shift: float = 1.0
    offdiag_weight: float = 0.0
    centroid_weight: float = 0.0
    val_fraction: float = 0.1
    val_windows: int = 4  # fixed evenly spaced validation windows per validation video
    seed: int = 0
    exclude: str | None = None  # audit table: videos whose p_match < min_correspondence sit out training and validation
    min_correspondence: float = 0.5
    weight_by: str | None = None  # audit table: each video's positive pair weighs its p_match (mean 1 over training)

    def __post_init__(self):
        HeadConfig(audio_dim=1, visual_dim=1, dim=self.dim, head=self.head, aggregation=self.aggregation)  # validates names
        if self.batch_size is not None and self.batch_size < 2:
            raise ValueError("--batch-size must be at least 2 (InfoNCE needs negatives)")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"--val-fraction must be in [0, 1) (got {self.val_fraction})")
        if any(n is not None and n < 1 for n in (self.epochs, self.steps, self.passes_per_epoch)):
            raise ValueError("--epochs, --steps and --passes-per-epoch must be at least 1")
        if self.lr <= 0 or not 0 <= self.warmup < 1:
            raise ValueError("--lr must be positive and --warmup in [0, 1)")
        # NaN and inf pass every comparison above unnoticed: each number is checked finite too.
        for name, value in (("--window", self.window), ("--hop", self.hop), ("--lr", self.lr), ("--temperature", self.temperature)):
            check_number(name, value)
        for name, value in (("--weight-decay", self.weight_decay), ("--clip", self.clip), ("--min-shift", self.min_shift),
                            ("--offdiag-weight", self.offdiag_weight), ("--centroid-weight", self.centroid_weight)):
            check_number(name, value, inclusive=True)
        check_number("--min-correspondence", self.min_correspondence, inclusive=True, maximum=1.0)

    def to_dict(self, audit: dict | None = None) -> dict:
        """The "training" record of config.json; ``audit`` replaces each audit table's path with
        its record (path, sha256, ...)."""
        return {**asdict(self), **(audit or {})}

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in values.items() if k in names}
        for key in AUDIT_OPTIONS:  # recorded as {"path", "sha256", ...} (see to_dict)
            if isinstance(values.get(key), dict):
                values[key] = values[key]["path"]
        return cls(**values)


@dataclass
class RunOptions:
    """How to run (not what to learn): may differ between a run and its resume."""

    device: str = "auto"
    memory_limit: int | None = None  # bytes; None: half the available (GPU) memory; 0: always stream
    workers: int = 2  # DataLoader processes when streaming
    resume: bool = False
    overwrite: bool = False
    quiet: bool = False
    stop_after: int | None = None  # end this run after that many epochs (tests, time-boxed jobs)


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


def lr_at(step: int, total: int, config: TrainConfig) -> float:
    """Linear warm-up then cosine decay to zero; ``step`` counts from 0."""
    warm = int(config.warmup * total)
    if step < warm:
        return config.lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return config.lr * 0.5 * (1 + math.cos(math.pi * progress))


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
        self.audit: dict[str, dict] = {}  # config.json records of the audit tables this run uses
        with self.group.together():  # the checks first, so a bad run fails before loading data
            self.cache = data.open_cache(cache_path)
            if options.resume:
                config = self._resume_config()
            elif self.group.is_main:
                self._prepare_out()
            self.config = config
            self.device = self.group.device
            self.amp = self.device.type == "cuda"

            ok_ids = [r.video_id for r in self.cache.records(status="ok")]
            kept_ids = self._exclude(ok_ids) if config.exclude else ok_ids
            train_ids, val_ids = data.split_videos(kept_ids, config.val_fraction, config.seed)
            if config.exclude:
                self._report_exclusion(len(ok_ids), len(train_ids))
            self.geometry, self.table = data.check_window(self.cache, train_ids + val_ids, config.window)
            has_windows = self.table.count > 0
            self.train_videos = [k for k in range(len(train_ids)) if has_windows[k]]
            self.val_videos = [k for k in range(len(train_ids), len(train_ids) + len(val_ids)) if has_windows[k]]
            if len(self.train_videos) < 2:
                raise InputError(f"only {len(self.train_videos)} training video(s) can hold a {config.window:g} s window; need at least 2")
            self.video_weights = self._video_weights() if config.weight_by else None
            self.batch_size = self._global_batch_size()
            self.val_ids = torch.as_tensor(self.table.evenly_spaced(self.val_videos, config.val_windows))
            self.split = {"seed": config.seed, "val_fraction": config.val_fraction, "val_videos": sorted(val_ids)}

            # The schedule: what was left unset is sized to the collection and stored resolved
            # (config.json's "training"), so a resume and eval see the values this run used.
            train_windows = self.table.disjoint_count(self.train_videos)
            schedule = data.plan_schedule(len(self.train_videos), train_windows, self.batch_size, config.passes_per_epoch, config.epochs, config.steps)
            self.config = config = replace(
                config, batch_size=config.batch_size or schedule.batch_size, passes_per_epoch=schedule.passes_per_epoch, epochs=schedule.epochs)
            self.steps_per_epoch, self.total_steps, self.epochs = schedule.steps_per_epoch, schedule.total_steps, schedule.epochs
            warning = data.short_run_warning(schedule, train_windows)
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
            self._plotted = -math.inf
            if options.resume:
                self._restore()
            elif self.group.is_main:
                ckpt.save_config(self.out, self.checkpoint_config())
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
        prepare_output(self.out, marker=ckpt.CONFIG_FILE, kind="heads checkpoint", overwrite=self.options.overwrite, own=own,
                       marker_keys=ckpt.CONFIG_MARKS)

    def _resume_config(self) -> TrainConfig:
        stored = ckpt.read_heads_config(self.out)
        if not (self.out / ckpt.STATE_FILE).is_file():
            raise CheckpointError(f"{self.out} has no {ckpt.STATE_FILE}: nothing to resume (no epoch finished yet?)")
        fingerprint = self.cache.fingerprint()
        if stored.cache.fingerprint != fingerprint:
            raise CheckpointError(f"{self.out} was trained on another cache (fingerprint {stored.cache.fingerprint or None}, this cache {fingerprint})")
        self.notes.append("resuming with the checkpoint's own training options")
        self._recorded = {key: stored.training[key] for key in AUDIT_OPTIONS if isinstance(stored.training.get(key), dict)}
        return TrainConfig.from_dict(stored.training)

    def _audit_table(self, key: str):
        """The audit table of option ``key`` (see ``AUDIT_OPTIONS``), checked against the cache
        and, on resume, against the sha256 recorded when the run started: other p_match values
        would change which videos train, or how much each one counts."""
        from avfeat.data.audit_table import read_audit

        path = Path(getattr(self.config, key)).resolve()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None  # a missing file: read_audit says so
        recorded = self._recorded.get(key, {}).get("sha256")
        if digest is not None and recorded is not None and recorded != digest:  # checked first: the likelier cause of any mismatch
            raise CheckpointError(f"{AUDIT_OPTIONS[key]} table {path} changed since {self.out} was trained on it (sha256 {recorded[:12]}, now {digest[:12]}): "
                                  "restore it to resume, or start again with --overwrite")
        table = read_audit(path, self.cache)
        self.audit[key] = {"path": str(path), "sha256": digest}
        return table

    def _p_match(self, key: str, video_ids: list[str]) -> dict[str, float]:
        """Each of ``video_ids``' p_match from the option's table (``read_audit`` has checked
        that each is a probability)."""
        p_match = self._audit_table(key).p_match()
        return {v: p_match[v] for v in video_ids}

    def _exclude(self, ok_ids: list[str]) -> list[str]:
        """The videos whose p_match reaches --min-correspondence; the others leave training and
        validation alike, before the split, so validation measures the kept corpus."""
        p_match = self._p_match("exclude", ok_ids)
        excluded = sorted(v for v in ok_ids if p_match[v] < self.config.min_correspondence)
        self.audit["exclude"]["excluded"] = excluded
        return [v for v in ok_ids if p_match[v] >= self.config.min_correspondence]

    def _report_exclusion(self, videos: int, training: int) -> None:
        """Refuse a run that exclusion left with fewer than 2 training videos, else say how many
        videos it left out."""
        excluded, threshold = len(self.audit["exclude"]["excluded"]), self.config.min_correspondence
        if training < 2:
            raise InputError(f"--exclude left {training} training video(s): {excluded} of {videos} have p_match below --min-correspondence "
                             f"{threshold:g}; need at least 2 (lower --min-correspondence)")
        self.log(f"excluded {excluded} of {videos} videos: p_match below --min-correspondence {threshold:g} in {self.audit['exclude']['path']}")

    def _video_weights(self) -> torch.Tensor:
        """(V,) weight of each video of the window table: its p_match over the training videos'
        mean, so the weights average 1 and the loss scale (and the learning rate that suits it)
        stays that of an unweighted run. Validation videos keep 1 (validation is unweighted)."""
        ids = [self.table.video_ids[k] for k in self.train_videos]
        p_match = self._p_match("weight_by", ids)
        mean = sum(p_match.values()) / len(ids)
        if mean == 0:
            raise InputError(f"--weight-by table {self.audit['weight_by']['path']} gives every training video p_match 0: nothing would be learned")
        weights = torch.ones(len(self.table.video_ids))
        for k, vid in zip(self.train_videos, ids):
            weights[k] = p_match[vid] / mean
        self.log(f"weighting each training video's positive pair by its p_match in {self.audit['weight_by']['path']} (mean {mean:.3f})")
        return weights

    def _global_batch_size(self) -> int:
        """The configured global batch (unset: ``data.auto_batch_size``), lowered when there are
        fewer training videos (to a multiple of the number of processes, which share each batch
        equally)."""
        world, batch, videos = self.group.world_size, self.config.batch_size, len(self.train_videos)
        if batch is None:
            batch = data.auto_batch_size(videos, world)
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
            self.source = data.StreamWindows(self.cache_path, self.table, self.device, self.options.workers)
            self.in_memory = False
            self.log(f"streaming windows from HDF5 with {self.options.workers} workers: the tokens take {self.data_bytes / 2**20:.1f} MB, over the {limit / 2**20:.0f} MB memory limit")

    def checkpoint_config(self) -> dict:
        # How the tokens were made travels with the heads: queries (search, sync) decode and compute the same way.
        trained_on = TrainedOn.of(self.cache.config, str(self.cache_path.resolve()), self.cache.fingerprint(), compute_dtype(self.cache.layout))
        return ckpt.HeadsConfig(
            heads=self.heads.config, window=self.config.window, cache=trained_on,
            hop=self.config.hop if self.config.hop else self.config.window / 2,
            training=self.config.to_dict(self.audit), split=self.split, avfeat_version=__version__,
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

    # ---- training ----------------------------------------------------------------------

    def train_step(self, audio: torch.Tensor, visual: torch.Tensor, shifted: torch.Tensor | None, pair_weights: torch.Tensor | None = None) -> torch.Tensor:
        """One optimizer step; returns the loss (a detached device scalar: no sync here)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, self.total_steps, self.config)
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
                self.log_tensorboard(record)
            record = self.group.share(record)  # the other ranks wait here for validation and saving
            if not self.group.is_main:
                self.history.append(record)
            if on_epoch is not None:
                on_epoch(record)
        if self.group.is_main:
            self.plot()
        return TrainResult(self.out, self.history, losses, self.in_memory, self.data_bytes, self.notes, self.group.rank, self.warnings)

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
        return {"val_loss": self._val_loss(scores), "val": metrics}

    def _val_loss(self, scores: torch.Tensor) -> float:
        """Mean InfoNCE over groups of up to B validation windows from distinct videos (the
        k-th window of each video together), so it compares with the training loss."""
        video = torch.as_tensor(self.table.video)[self.val_ids]
        slot = torch.zeros_like(video)
        for i in range(1, len(video)):
            slot[i] = slot[i - 1] + 1 if video[i] == video[i - 1] else 0
        losses = []
        for k in slot.unique():
            members = torch.nonzero(slot == k).flatten()
            for group in members.split(self.batch_size):
                if len(group) >= 2:
                    losses.append(float(info_nce(scores[group][:, group], self.heads.logit_scale.detach().float().cpu())))
        return sum(losses) / len(losses) if losses else float("nan")

    def save(self) -> None:
        """State first (self-contained), then the heads, then metrics (and curves, throttled)."""
        meta = {"epoch": self.epoch, "step": self.step, "history": self.history}
        ckpt.save_state(self.out, self.heads, self.optimizer, self._rng_states(), meta)
        ckpt.save_heads(self.out, self.heads, self.checkpoint_config())
        lines = "".join(json.dumps(record) + "\n" for record in self.history)
        write_atomic(self.out / ckpt.METRICS_FILE, lines)
        if time.monotonic() - self._plotted > CURVES_EVERY:
            self.plot()

    def plot(self) -> None:
        from avfeat.align.plots import plot_curves

        if self.history:
            plot_curves(self.history, self.out / ckpt.CURVES_FILE)
        self._plotted = time.monotonic()

    def log_tensorboard(self, record: dict) -> None:
        writer = self._tensorboard()
        if writer is not None:
            writer.add_scalar("loss/train", record["train_loss"], record["step"])
            if "val" in record:
                writer.add_scalar("loss/val", record["val_loss"], record["step"])
                for direction, values in record["val"].items():
                    for name, value in values.items():
                        writer.add_scalar(f"val_{direction}/{name}", value, record["step"])
            writer.flush()

    def _tensorboard(self):
        """A SummaryWriter when tensorboard is installed, else None (logging is optional)."""
        if not hasattr(self, "_writer"):
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.out / ckpt.TENSORBOARD_DIR))
            except ImportError:
                self._writer = None
        return self._writer


def summary_line(record: dict) -> str:
    """One epoch as a line: losses and validation R@1/5/10 both ways."""
    line = f"epoch {record['epoch']:>3}  step {record['step']:>6}  train {record['train_loss']:.4f}"
    if "val" in record:
        a2v, v2a = record["val"]["a2v"], record["val"]["v2a"]
        line += f"  val {record['val_loss']:.4f}  a2v R@1/5/10 {a2v['R@1']:.2f}/{a2v['R@5']:.2f}/{a2v['R@10']:.2f}"
        line += f"  v2a {v2a['R@1']:.2f}/{v2a['R@5']:.2f}/{v2a['R@10']:.2f}"
    return line


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
