"""Data parallelism with PyTorch's own engine: ``torchrun --nproc_per_node=N -m empirical.train ...``.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; with them the process joins a ``torch.distributed`` group (NCCL on
CUDA, gloo on CPU), without them everything runs in one process with no group at all. The global batch stays
the preset's whatever the world size: rank r of W takes rows [r·B/W, (r+1)·B/W) of the batch that the (seed,
step) generator draws, and every random draw is made for the whole batch and sliced (``Shard``), so W ranks see
exactly the images and the noise that one process sees.
"""

from __future__ import annotations

import datetime as dt
import importlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from empirical.io.errors import DgmOodError, arg

TIMEOUT = dt.timedelta(minutes=10)  # a collective that waits longer than this for a dead rank fails


@dataclass(frozen=True)
class Shard:
    """Rows [start, stop) of a batch of ``total`` rows: what one rank computes of a batch every rank draws."""

    start: int
    stop: int
    total: int

    def rows(self, draw: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """This shard's rows of ``draw``, a random tensor drawn for the whole batch along ``dim``."""
        return draw.narrow(dim, self.start, self.stop - self.start)


@dataclass(frozen=True)
class World:
    """This process's place in the job: ``rank`` of ``size``, ``local_rank`` on its machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0 alone writes checkpoints, reports and logs."""
        return self.rank == 0

    def shard(self, total: int) -> Shard:
        """This rank's contiguous rows of a batch of ``total``: [r·total/W, (r+1)·total/W)."""
        return Shard(self.rank * total // self.size, (self.rank + 1) * total // self.size, total)


def active() -> bool:
    """Whether this process is part of an initialised group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> World:
    """The current process's World (rank 0 of 1 without a group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    rank = dist.get_rank()
    return World(rank, dist.get_world_size(), int(os.environ.get("LOCAL_RANK", rank)))


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; in a group, CUDA means this rank's cuda:LOCAL_RANK. A device this
    machine does not have (or a name torch does not know) is a one-line DgmOodError, before any work."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and active():
        return torch.device(f"cuda:{world().local_rank}")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as err:
        raise DgmOodError(f"{arg('device', '--device')} {name!r} is not a device name (use auto, cpu, cuda or "
                          f"cuda:N)") from err
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index or 0) >= count:
            raise DgmOodError(f"{arg('device', '--device')} {name}: this machine has {count} CUDA device(s); use "
                              f"{arg('device=', '--device ')}cpu or auto")
    elif device.type != "cpu":
        raise DgmOodError(f"{arg('device', '--device')} {name}: only cpu and cuda are supported")
    return device


def init_from_env(device: str = "auto") -> torch.device:
    """Join the torchrun group described by the environment, if any, and return this rank's device.

    ``auto`` is cuda:LOCAL_RANK where CUDA is present (NCCL), else the CPU (gloo). Without torchrun's
    WORLD_SIZE (or with WORLD_SIZE=1) no group is made and the device is ``resolve_device(device)``.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or active():
        return resolve_device(device)
    cuda = resolve_device(device).type == "cuda"
    dev = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if cuda else "cpu")
    # Before the group exists: imported after it (as DDP does), torch._dynamo keeps the group alive past
    # destroy_process_group, with gloo's threads still running when the interpreter exits (torch 2.15).
    importlib.import_module("torch._dynamo")
    try:
        if cuda:
            torch.cuda.set_device(dev)
            dist.init_process_group("nccl", timeout=TIMEOUT, device_id=dev)
        else:
            dist.init_process_group("gloo", timeout=TIMEOUT)
    except (ValueError, RuntimeError) as err:  # e.g. WORLD_SIZE set by hand without torchrun's other variables
        raise DgmOodError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but this process could not join a torchrun group "
                          f"({str(err).splitlines()[0]}); launch with torchrun, or unset WORLD_SIZE") from err
    return dev


PEER_GONE = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "NCCL communicator was aborted",
             "socket closed")  # what gloo and NCCL say when another rank is gone


def lost_peer(err: BaseException) -> bool:
    """Whether ``err`` is a collective that failed because another rank of this torchrun job is gone (killed,
    crashed); the group may have been left already."""
    backend = getattr(dist, "DistBackendError", ())
    in_job = int(os.environ.get("WORLD_SIZE", "1") or 1) > 1
    return in_job and (isinstance(err, backend) or (isinstance(err, RuntimeError)
                                                    and any(s in str(err) for s in PEER_GONE)))


def shutdown() -> None:
    """Leave the group (a no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """Σ over ranks of ``t`` (``t`` itself without a group); the input is not modified."""
    if not active():
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t


def channel_mean_std(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and unbiased standard deviation of N×C×H×W ``x`` over N, H, W of every rank's rows
    together (two passes: the mean, then Σ(x − mean)²), shaped 1×C×1×1; one process uses torch.mean/std."""
    if not active():
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = x.std(dim=(0, 2, 3), keepdim=True) if x[:, 0].numel() > 1 else torch.ones_like(mean)
        return mean, std
    count = all_sum(torch.tensor(float(x[:, 0].numel()), device=x.device, dtype=torch.float64))
    mean = (all_sum(x.double().sum(dim=(0, 2, 3), keepdim=True)) / count).to(x.dtype)
    if count <= 1:
        return mean, torch.ones_like(mean)
    sq = all_sum(((x.double() - mean.double()) ** 2).sum(dim=(0, 2, 3), keepdim=True))
    return mean, (sq / (count - 1)).sqrt().to(x.dtype)


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (``[obj]`` without a group)."""
    if not active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
