"""The processes of a run: one, or several under torchrun (DistributedDataParallel). A `World`
is built once from the environment and carries rank, size and device; the few collective calls the
trainer makes are its methods, and each is a no-op for a single process."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from mt.device import resolve_device


@dataclass(frozen=True)
class World:
    device: torch.device  # this process's device
    rank: int = 0
    size: int = 1  # the number of processes
    local_rank: int = 0  # the rank on this machine: its CUDA device under torchrun

    @classmethod
    def from_env(cls, device: str) -> "World":
        """torchrun's WORLD_SIZE / LOCAL_RANK (a single process without them); joins the process
        group (nccl on CUDA, gloo otherwise or with MT_DIST_BACKEND=gloo); train.device resolved,
        each process on its own CUDA device."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return cls(resolve_device(device))
        if not dist.is_initialized():
            gloo = not torch.cuda.is_available() or os.environ.get("MT_DIST_BACKEND") == "gloo"
            dist.init_process_group(backend="gloo" if gloo else "nccl")
        rank, size, local_rank = dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
        resolved = resolve_device(device)
        if resolved.type == "cuda":
            resolved = torch.device("cuda", local_rank)
            torch.cuda.set_device(resolved)
        return cls(resolved, rank, size, local_rank)

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes the run directory and speaks."""
        return self.rank == 0

    def distribute(self, model: nn.Module) -> nn.Module:
        """The module the updates call: DDP-wrapped when there are several processes."""
        if self.size == 1:
            return model
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device.type == "cuda" else None
        )

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def agree(self, flag: bool) -> bool:
        """True on every rank if it is True on rank 0."""
        return bool(self.share(int(flag)))

    def share(self, value: int) -> int:
        """Rank 0's `value` on every rank."""
        if self.size == 1:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.broadcast(t, 0)
        return int(t.item())

    def sync_lr(self, optimizer: torch.optim.Optimizer) -> None:
        """Every rank takes rank 0's learning rates (a plateau schedule is stepped there only)."""
        if self.size == 1:
            return
        lrs = torch.tensor([g["lr"] for g in optimizer.param_groups], dtype=torch.float64, device=self.device)
        dist.broadcast(lrs, 0)
        for g, lr in zip(optimizer.param_groups, lrs.tolist()):
            g["lr"] = lr

    def total(self, value: float) -> torch.Tensor:
        """`value` summed over all ranks, as a 0-d tensor on the device (read on the device: no host
        sync)."""
        t = torch.tensor(float(value), device=self.device)
        if self.size > 1:
            dist.all_reduce(t)
        return t

    def gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's `t` (same shape on all), in rank order."""
        if self.size == 1:
            return [t]
        gathered = [torch.zeros_like(t) for _ in range(self.size)]
        dist.all_gather(gathered, t)
        return gathered

    def close(self) -> None:
        """Leave the process group (at the end of training)."""
        if self.size > 1 and dist.is_initialized():
            dist.destroy_process_group()
