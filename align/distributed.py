"""Several processes training one set of heads: ``torchrun --nproc-per-node N -m avfeat
train-head ...`` or ``avfeat train-head --nproc N ...`` (which hands the same command to torchrun's
own launcher, ``torch.distributed.run``, in this process); on several machines, ``--nnodes N
--node-rank R --rdzv-endpoint HOST:PORT`` on each (torchrun's c10d rendezvous).

Each process (rank) draws the same epoch plan from the same seed and takes its own equal share
of every global batch, so N processes see exactly the batches one process sees. The projected
tokens are gathered across ranks with their gradients (``torch.distributed.nn.functional.
all_gather``); each rank scores its rows of the global score matrix, and its loss is the mean
over its rows. The mean of the ranks' losses is then the one-process loss of the global batch,
and the averaged gradients are its gradients (up to float rounding): the gather's backward sends
every rank's share of the gradient back to the rank whose tokens it belongs to, where they are
summed.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

# Imported with this module, before any process group exists: torch binds all_gather's default
# ``group`` when its module is first imported, and a group bound there would stay referenced
# (never freed) for the life of the process.
from torch.distributed.nn.functional import all_gather

from avfeat.core.errors import AvfeatError, InputError

# Collectives wait this long: the other ranks wait while rank 0 validates and saves, which on a
# large validation set can outlast NCCL's default 10 minutes.
TIMEOUT = timedelta(minutes=60)


class PeerFailed(Exception):
    """Another rank failed during setup; rank 0 reports the error, this rank ends quietly."""


# Set by ``launch`` for the processes it starts: the folder where a process notes that it printed
# the run's error, so that the launcher adds nothing of its own.
LAUNCH_DIR = "AVFEAT_LAUNCH_DIR"


def _note_reported() -> None:
    folder = os.environ.get(LAUNCH_DIR)
    if folder and os.path.isdir(folder):
        open(os.path.join(folder, "reported"), "w").close()


@dataclass
class Group:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    owned: bool = False  # this module started the process group, so it also ends it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def backend(self) -> str:
        return dist.get_backend() if self.world_size > 1 else "none"

    def share_of(self, batch_size: int) -> slice:
        """This rank's columns of a global batch."""
        b = batch_size // self.world_size
        return slice(self.rank * b, (self.rank + 1) * b)

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's ``tensor`` concatenated in rank order along dim 0, with gradients."""
        if self.world_size == 1:
            return tensor
        with warnings.catch_warnings():
            # torch 2.13 deprecates it for the private ``_functional_collectives.all_gather_single``,
            # whose backward exists only in recent torch; this one works from torch 2.2 on.
            warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_gather is deprecated", category=FutureWarning)
            # The group is passed (see the import): a process that starts a new group (a run
            # resumed in the same process) must not gather over a destroyed one.
            return torch.cat(all_gather(tensor, group=dist.group.WORLD))

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of ``tensor`` over ranks (a copy)."""
        if self.world_size == 1:
            return tensor
        total = tensor.detach().clone()
        dist.all_reduce(total)
        return total / self.world_size

    def average_gradients(self, parameters) -> None:
        """Average the gradients over ranks in one all-reduce (what DDP would do; the heads are
        small, so overlapping it with the backward pass would gain little)."""
        if self.world_size == 1:
            return
        grads = [p.grad for p in parameters if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        for grad, part in zip(grads, flat.split([g.numel() for g in grads])):
            grad.copy_(part.view_as(grad))

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Rank 0's weights everywhere (they are equal already: same seed or same state)."""
        if self.world_size > 1:
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, 0)

    def share(self, value):
        """Rank 0's ``value`` (any picklable object) on every rank; the others wait for it."""
        if self.world_size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    @contextmanager
    def together(self):
        """A setup step every rank runs: if it raises an :class:`AvfeatError` on any rank, rank 0
        raises the first one (by rank) and the other ranks raise :class:`PeerFailed`, so the
        error is printed once, not once per process."""
        error = None
        try:
            yield
        except AvfeatError as caught:
            if self.world_size == 1:
                raise
            error = caught
        if self.world_size == 1:
            return
        errors = [None] * self.world_size
        dist.all_gather_object(errors, error)
        failed = [rank for rank, e in enumerate(errors) if e is not None]
        if not failed:
            return
        first = errors[failed[0]]
        # Global rank 0 and the first process of every other machine print the line (rank 0 may
        # run on another machine: each terminal shows it once), then every process waits until
        # all of them have: a launcher stops its machine's processes as soon as one of them ends,
        # and the run's store leaves with machine 0's launcher, so no process may end earlier.
        reporter = self.is_main or self.local_rank == 0
        if reporter:
            print(f"avfeat: error: {first}", file=sys.stderr, flush=True)
            first.printed = True
            _note_reported()
        try:
            dist.barrier()
        except Exception:
            pass
        if reporter:
            raise first
        raise PeerFailed(f"rank {failed[0]} failed: {first}")

    def check_same(self, seen: dict) -> None:
        """Every rank must see the same files: ``seen`` maps what (a path) to a value read from it.
        Several machines see their own disks, so a cache or checkpoint not on shared storage would
        otherwise train on something else silently. Differing: an ``InputError`` as ``together``
        reports it."""
        if self.world_size == 1:
            return
        views = [None] * self.world_size
        dist.all_gather_object(views, seen)
        for what in seen:
            other = next((rank for rank, view in enumerate(views) if view[what] != views[0][what]), None)
            if other is not None:
                with self.together():
                    raise InputError(f"{what} differs between processes (rank {other} sees another than rank 0): "
                                     "on several machines it must be on storage they share, at the same path")

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        if self.owned and dist.is_initialized():
            dist.destroy_process_group()


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise InputError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number") from None


def start(device: torch.device) -> Group:
    """The process group for this process: joins it when WORLD_SIZE > 1 (set by torchrun or
    ``--nproc``), with NCCL on the GPU ``cuda:LOCAL_RANK`` or gloo on the CPU."""
    world = env_world_size()
    if world <= 1:
        return Group(device=device)
    try:
        rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    except (KeyError, ValueError):
        raise InputError(f"WORLD_SIZE is {world} but RANK or LOCAL_RANK is missing: start several processes with torchrun or --nproc") from None
    check_device(device)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise InputError(f"process {local_rank} on this machine has no GPU: there are only {torch.cuda.device_count()}")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    group = Group(device=device, rank=rank, world_size=world, local_rank=local_rank, local_world_size=local_world)
    if dist.is_initialized():  # the caller set the process group up already
        if dist.get_world_size() != world or dist.get_rank() != rank:
            raise InputError("the initialised process group does not match WORLD_SIZE and RANK")
        return group
    try:
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=TIMEOUT)
    except (RuntimeError, ValueError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise InputError(f"cannot start the {backend} process group (rank {rank} of {world}): {first_line}") from None
    group.owned = True
    return group


def check_device(device: torch.device, nproc: int | None = None) -> None:
    """Several processes take one GPU each (cuda:LOCAL_RANK), or run on the CPU."""
    if device.type not in ("cuda", "cpu"):
        raise InputError(f"--device {device}: several processes need CUDA GPUs or the CPU")
    if device.type == "cuda" and device.index is not None:
        raise InputError(f"--device {device}: with several processes each one uses its own GPU (cuda:LOCAL_RANK); pass --device cuda or auto")
    if device.type == "cuda" and nproc is not None and nproc > torch.cuda.device_count():
        raise InputError(f"--nproc {nproc}: there are only {torch.cuda.device_count()} GPUs (--device cpu runs CPU processes)")


def check_batch(batch_size: int, world_size: int) -> None:
    if batch_size % world_size:
        raise InputError(
            f"--batch-size {batch_size} is not divisible by the {world_size} processes: the batch is global and each process "
            f"takes an equal share (use a multiple of {world_size})"
        )


# ---- `--nproc`, `--nnodes`: torchrun's launcher, run in this process ----------------------

NODE_OPTIONS = ("--nproc", "--nnodes", "--node-rank", "--rdzv-endpoint", "--rdzv-id")


@dataclass(frozen=True)
class Nodes:
    """This machine's place in a run over ``count`` machines (``--nnodes``, ``--node-rank``,
    ``--rdzv-endpoint``, ``--rdzv-id``). The machines meet at ``endpoint`` (torchrun's c10d
    rendezvous), whose store node 0 hosts; which process becomes global rank 0 is the
    rendezvous's choice, not the node rank's."""

    count: int = 1
    rank: int | None = None
    endpoint: str | None = None
    run_id: str | None = None

    def check(self) -> None:
        if self.count < 1:
            raise InputError(f"--nnodes {self.count}: must be 1 or more")
        if self.count == 1:
            given = [name for name, value in zip(NODE_OPTIONS[2:], (self.rank, self.endpoint, self.run_id)) if value is not None]
            if given:
                raise InputError(f"{given[0]} is for a run over several machines: add --nnodes N (N >= 2)")
            return
        if self.endpoint is None:
            raise InputError(f"--nnodes {self.count} needs --rdzv-endpoint HOST:PORT (node 0's address and a free port, the same on every machine)")
        if self.rank is None:
            others = "1 on the other" if self.count == 2 else f"1 to {self.count - 1} on the others"
            raise InputError(f"--nnodes {self.count} needs --node-rank R (0 on the machine at --rdzv-endpoint, {others})")
        if not 0 <= self.rank < self.count:
            raise InputError(f"--node-rank {self.rank}: must be from 0 to {self.count - 1} (--nnodes {self.count})")
        host, _, port = self.endpoint.rpartition(":")
        if not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
            raise InputError(f"--rdzv-endpoint {self.endpoint!r}: expected HOST:PORT with a port from 1 to 65535")
        if self.run_id is not None and not self.run_id.strip():
            raise InputError("--rdzv-id is empty: give every machine of the run the same name")

    def torchrun_args(self) -> list[str]:
        if self.count == 1:
            return ["--standalone"]
        return ["--nnodes", str(self.count), "--rdzv-backend", "c10d", "--rdzv-endpoint", self.endpoint,
                "--rdzv-id", self.run_id or "avfeat", "--rdzv-conf", f"is_host={str(self.rank == 0).lower()}"]



def without_option(args: list[str], name: str) -> list[str]:
    """``args`` without ``name VALUE`` or ``name=VALUE``."""
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            kept.append(arg)
    return kept


def without_options(args: list[str], names) -> list[str]:
    for name in names:
        args = without_option(args, name)
    return args


def launch(args: list[str], nproc: int, module: str = "avfeat", nodes: Nodes = Nodes()) -> int:
    """Run ``python -m MODULE ARGS`` as ranks 0..nproc-1 on this machine, as
    ``torchrun --standalone --nproc-per-node N -m MODULE ARGS`` does, and wait for them; with
    ``nodes`` (several machines), as ``nproc`` of the run's processes, joining the other
    machines through the c10d rendezvous instead of ``--standalone``.

    torchrun stops the other processes as soon as one fails. Returns 0, or the failing
    process's exit status (128 + N for one killed by signal N, as a shell reports it). The
    processes print their own errors (rank 0 alone for a setup error), so the launcher adds a
    line only for a process killed by a signal, which could not; torchrun's own logging (its
    failure report, its notice that it sets OMP_NUM_THREADS) is silenced.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous import RendezvousError
    from torch.distributed.run import main as torchrun

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # as torchrun: N processes must not each use every core
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        # torchrun's per-run folder of the processes' error files, removed afterwards
        with tempfile.TemporaryDirectory(prefix="avfeat-torchrun-") as logs:
            os.environ[LAUNCH_DIR] = logs
            try:
                torchrun([*nodes.torchrun_args(), "--nproc-per-node", str(nproc), "--log-dir", logs, "-m", module, *args])
            except RendezvousError:
                # Machine 0's launcher (and the run's store with it) ends once its processes end;
                # another machine's launcher may learn so from the store before it sees its own
                # processes end. They printed the run's error already.
                if os.path.exists(os.path.join(logs, "reported")):
                    return 1
                raise
            finally:
                del os.environ[LAUNCH_DIR]
    except ChildFailedError as error:
        rank, failure = first_failure(error.failures)
        if failure.exitcode >= 0:
            return failure.exitcode
        print(f"{module}: error: process {rank} of {nproc * nodes.count} was killed by {_signal_name(-failure.exitcode)}", file=sys.stderr)
        return 128 - failure.exitcode
    except SignalException as stopped:  # the launcher was stopped; torchrun has stopped the processes
        return 128 + int(stopped.sigval)
    except RendezvousError as error:
        where = f" (rendezvous at {nodes.endpoint}, node {nodes.rank} of {nodes.count})" if nodes.count > 1 else ""
        raise InputError(f"torchrun could not start {nproc * nodes.count} processes{where}: {(str(error).strip().splitlines() or [type(error).__name__])[0]}") from None
    finally:
        logging.disable(previous)
    return 0


def first_failure(failures: dict) -> tuple:
    """(rank, failure) of the process whose failure ended the run. torchrun terminates the
    others (SIGTERM) as soon as one fails, and its timestamps have one-second resolution, so a
    process that failed by itself comes first, then the earliest, then the lowest rank."""
    return min(failures.items(), key=lambda item: (item[1].exitcode == -signal.SIGTERM, item[1].timestamp, item[0]))


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
