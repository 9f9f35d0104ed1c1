"""Data parallelism under ``torchrun``: one process per GPU (NCCL) or CPU slot (gloo).

Every process builds the same global batch and trains on its share of the rows; gradients are
averaged across processes (one flattened all-reduce per step) before clipping and the optimiser
step, so N processes on a global batch of B videos follow one process on the same B videos.
Only rank 0 evaluates and writes checkpoints, logs, predictions and manifests.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def rank_and_world() -> tuple:
    """(rank, world size) from torchrun's environment; (0, 1) outside torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_main() -> bool:
    return rank_and_world()[0] == 0


def init(device: torch.device) -> None:
    """Join the process group when launched by torchrun with more than one process."""
    if rank_and_world()[1] > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def average_gradients(parameters) -> None:
    """All-reduce (mean) the gradients of ``parameters`` across processes."""
    world = rank_and_world()[1]
    grads = [p.grad for p in parameters if p.grad is not None]
    if world == 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate a (N_rank, ...) tensor of every process along dim 0 (rank order)."""
    world = rank_and_world()[1]
    if world == 1:
        return tensor
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else tensor.device
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([len(tensor)], device=device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=device)
    padded[:len(tensor)] = tensor
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:int(size.item())] for part, size in zip(parts, sizes)]).to(tensor.device)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
