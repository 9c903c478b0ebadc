"""`train-head` as one call: the command's flags become a ``TrainConfig`` and ``RunOptions``,
the heads train in this process or in ``--nproc`` processes started here (joining other
machines' with ``--nnodes``), and the run is summed up in one line."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from avfeat.align import distributed
from avfeat.align.config import RunOptions, TrainConfig
from avfeat.align.train import TrainResult, train
from avfeat.core.devices import resolve_device
from avfeat.core.errors import InputError
from avfeat.core.values import parse_size


@dataclass
class TrainRun:
    """What one `train-head` call came to. ``exit_code``: 0, the launched processes' own status
    under ``--nproc``, or 1 when a peer process failed (it printed the error). ``summary``: the
    closing line, None where this process is not rank 0 or trained nothing itself."""

    exit_code: int = 0
    summary: str | None = None
    result: TrainResult | None = None


def train_config(settings: dict, exclude: Path | None = None, min_correspondence: float | None = None,
                 weight_by: Path | None = None) -> TrainConfig:
    """The ``TrainConfig`` of the command's flags (``settings``: its field values); a bad value
    is an ``InputError``."""
    if min_correspondence is not None and exclude is None:
        raise InputError("--min-correspondence needs --exclude AUDIT_TABLE (the audit table whose p_match it applies to)")
    try:
        return TrainConfig(
            **settings, exclude=None if exclude is None else str(exclude), weight_by=None if weight_by is None else str(weight_by),
            **({} if min_correspondence is None else {"min_correspondence": min_correspondence}),
        )
    except ValueError as error:
        raise InputError(str(error)) from None


def summary(out: Path, result: TrainResult) -> str:
    """``wrote OUT: N epochs, final train loss ...`` (with the last validation R@1 both ways),
    and the epoch heads.safetensors keeps (the best validation loss)."""
    last = result.history[-1] if result.history else {}
    line = f"wrote {out}: {len(result.history)} epochs, final train loss {last.get('train_loss', float('nan')):.4f}"
    if "val" in last:
        line += f", validation R@1 a2v {last['val']['a2v']['R@1']:.3f} v2a {last['val']['v2a']['R@1']:.3f}"
    best = next((r for r in result.history if r["epoch"] == result.best_epoch), None)
    if best is not None:
        line += f"; heads.safetensors: epoch {best['epoch']}" + (", the last" if best is last else f" (best validation loss {best['val_loss']:.4f})")
    return line


def train_heads(
    cache: Path,
    out: Path,
    settings: dict,
    exclude: Path | None = None,
    min_correspondence: float | None = None,
    weight_by: Path | None = None,
    device: str = "auto",
    memory_limit: str | None = None,
    workers: int = 2,
    resume: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
    nproc: int = 1,
    nodes: distributed.Nodes = distributed.Nodes(),
    args: list[str] | None = None,
    log: Callable[[str], None] = print,
    warn: Callable[[str], None] | None = None,
) -> TrainRun:
    """`avfeat train-head`: check the flags, then train (see ``avfeat.align.train.train``).

    ``nproc`` > 1 runs ``avfeat ARGS`` (``args``: the command line, default ``sys.argv[1:]``,
    without its ``--nproc``) as that many processes here and returns their exit status; with
    ``nodes`` (``--nnodes`` > 1) they are this machine's share of a run over several."""
    if resume and overwrite:
        raise InputError("--resume and --overwrite exclude each other")
    config = train_config(settings, exclude, min_correspondence, weight_by)
    options = RunOptions(
        device=device, memory_limit=None if memory_limit is None else parse_size(memory_limit), workers=workers,
        resume=resume, overwrite=overwrite, quiet=quiet,
    )
    nodes.check()
    if nproc > 1 or nodes.count > 1:
        if distributed.env_world_size() > 1:
            raise InputError("--nproc and --nnodes cannot be used under torchrun (WORLD_SIZE is set already): let torchrun start the processes")
        if not resume and config.batch_size is not None:  # a resumed run divides the checkpoint's batch size, an automatic one is made to divide; each process checks that
            distributed.check_batch(config.batch_size, nproc * nodes.count)
        distributed.check_device(resolve_device(device), nproc)  # --nproc is per machine: this one's GPUs
        command = sys.argv[1:] if args is None else list(args)
        return TrainRun(exit_code=distributed.launch(distributed.without_options(command, distributed.NODE_OPTIONS), nproc, nodes=nodes))
    try:
        result = train(cache, out, config, options, log=log, warn=warn)
    except distributed.PeerFailed:
        return TrainRun(exit_code=1)  # rank 0 prints the error
    return TrainRun(summary=summary(out, result) if result.rank == 0 else None, result=result)
