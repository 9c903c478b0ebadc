"""What a training run learns (``TrainConfig``, stored in config.json under "training") and how
it runs (``RunOptions``, which may differ between a run and its resume)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from avfeat.data.configs import HeadConfig
from avfeat.core.values import check_number

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
    temporal_negatives: bool | None = None  # None: on when most training videos hold window + min_shift seconds (data.temporal_negatives_fit)
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
