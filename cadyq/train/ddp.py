"""Multi-process training (`torchrun --nproc_per_node=K -m cadyq train ...`): DDP set up from the
environment torchrun provides (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).

`--batch` is the global batch: each of the K processes takes batch/K samples of it, so the
gradients equal those of one process on the whole batch (losses that sum over the batch, such as
the bit loss, are multiplied by K to undo DDP's gradient averaging). Only rank 0 validates, logs
and saves."""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import CadyqError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(backend: str | None = None, timeout_s: float = 7200.0) -> DistInfo:
    """Join the process group described by torchrun's environment variables; a plain run (no
    WORLD_SIZE or WORLD_SIZE=1) gives rank 0 of 1 without a process group. The backend is NCCL when
    CUDA is available, else gloo. The long timeout covers rank 0 validating while the others wait."""
    world = env_world_size()
    if world <= 1:
        return DistInfo()
    try:
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    except KeyError as e:
        raise CadyqError(f"WORLD_SIZE={world} but {e.args[0]} is not set; start multi-process training with "
                         "torchrun --nproc_per_node=K -m cadyq train ...") from e
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(rank, world, local_rank)


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def device_for(info: DistInfo, device: str = "auto") -> torch.device:
    """cuda:<local rank> when CUDA is available (or asked for), else the CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CadyqError("--device cuda asked for, but torch sees no CUDA GPU here; use --device cpu")
        if dev.index is None:
            dev = torch.device("cuda", info.local_rank)
    return dev


def all_mean(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean over processes (identity for one process)."""
    if not info.enabled:
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / info.world


def any_true(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every process when it is true on any (used to stop all ranks at the same iteration)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def wrap(model: torch.nn.Module, info: DistInfo, device: torch.device, find_unused: bool = False):
    """DistributedDataParallel around `model` (rank 0's parameters are broadcast to all)."""
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return DDP(model, device_ids=ids, find_unused_parameters=find_unused)
