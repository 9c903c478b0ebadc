"""Several processes training one set of heads: ``torchrun --nproc-per-node N -m avfeat
train-head ...`` or ``avfeat train-head --nproc N ...`` (which starts the N processes itself).

Each process (rank) draws the same epoch plan from the same seed and takes its own equal share
of every global batch, so N processes see exactly the batches one process sees. The projected
tokens are gathered across ranks with their gradients; each rank scores its rows of the global
score matrix, and its loss is the mean over its rows. The mean of the ranks' losses is then the
one-process loss of the global batch, and the averaged gradients are its gradients (up to float
rounding): the gathers send every rank's share of the gradient back to the rank whose tokens
it belongs to.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from avfeat.errors import AvfeatError, InputError

GRACE_SECONDS = 5.0  # after one process fails, the others' time to end by themselves
# Collectives wait this long: the other ranks wait while rank 0 validates and saves, which on a
# large validation set can outlast NCCL's default 10 minutes.
TIMEOUT = timedelta(minutes=60)


class PeerFailed(Exception):
    """Another rank failed during setup; rank 0 reports the error, this rank ends quietly."""


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
        return tensor if self.world_size == 1 else _Gather.apply(tensor)

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
        if self.is_main:
            raise first
        # Wait until rank 0 has printed its line and left (its leaving breaks this barrier), so
        # that a launcher reacting to this rank's exit cannot stop rank 0 before it reports.
        try:
            dist.barrier()
        except Exception:
            pass
        raise PeerFailed(f"rank {failed[0]} failed: {first}")

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        if self.owned and dist.is_initialized():
            dist.destroy_process_group()


class _Gather(torch.autograd.Function):
    """all_gather whose backward sums each rank's gradient of the gathered tensor and hands
    every rank the part that belongs to its own input."""

    @staticmethod
    def forward(ctx, tensor):
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        world, rank = dist.get_world_size(), dist.get_rank()
        grad = grad.contiguous()
        if dist.get_backend() == "nccl":
            mine = grad.new_empty((grad.shape[0] // world, *grad.shape[1:]))
            dist.reduce_scatter_tensor(mine, grad)
            return mine
        dist.all_reduce(grad)  # gloo has no reduce-scatter: sum everything, keep this rank's part
        return grad.chunk(world)[rank].clone()


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


# ---- `--nproc`: start the processes torchrun would ---------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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


def launch(args: list[str], nproc: int) -> int:
    """Run ``python -m avfeat ARGS`` as ranks 0..nproc-1 of one process group on this machine
    and wait for them; returns the exit status (the first failing process's)."""
    port = free_port()
    base = dict(os.environ)
    base.setdefault("OMP_NUM_THREADS", "1")  # as torchrun: N processes must not each use every core
    procs = []
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a stopped launcher stops its processes
    try:
        for rank in range(nproc):
            env = {**base, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "LOCAL_RANK": str(rank),
                   "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc)}
            procs.append(subprocess.Popen([sys.executable, "-m", "avfeat", *args], env=env))
        return wait_all(procs)
    except KeyboardInterrupt:
        stop(procs, grace=0)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def wait_all(procs: list[subprocess.Popen], grace: float = GRACE_SECONDS) -> int:
    """Wait for every process; as soon as one fails, stop the others. Returns 0, or the first
    failure's exit status (128 + N for a process killed by signal N, as a shell reports it)."""
    while True:
        codes = [p.poll() for p in procs]
        failed = next((c for c in codes if c not in (None, 0)), None)
        if failed is not None:
            stop(procs, grace)
            return failed if failed > 0 else 128 - failed
        if all(c == 0 for c in codes):
            return 0
        time.sleep(0.1)


def stop(procs: list[subprocess.Popen], grace: float) -> None:
    """Give the processes ``grace`` seconds to end by themselves (they usually fail the same
    way, and rank 0 says why), then terminate, then kill them."""
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.05)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
