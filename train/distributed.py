"""Data parallelism under ``torchrun``: one process per GPU (NCCL) or CPU slot (gloo).

``train.batch_size`` is the global batch. Every process builds the same global batches (same order,
frames and re-sampled classes as a 1-process run) and trains on its rows ``rank::world``; gradients
are combined in one flattened all-reduce per step, each process weighted by its share of the rows,
so the step uses the gradient of the global batch's mean loss. Per-row random draws made inside the
model and recipe (dropout, MOVE's frame subsets, mixup, MEDC's noise) come from per-process streams
(:func:`own_stream`), BatchNorm normalises each process's rows and its running statistics are
averaged at the end of every epoch (:func:`average_buffers`). Only rank 0 evaluates and writes
checkpoints, logs, predictions and manifests. docs/cluster.md states what equals a 1-process run.
"""

from __future__ import annotations

import atexit
import os

import torch
import torch.distributed as dist

from train.data import batch_spans


def rank_and_world() -> tuple:
    """(rank, world size) from torchrun's environment; (0, 1) outside torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_main() -> bool:
    """True in rank 0 (and outside torchrun): the process that evaluates and writes."""
    return rank_and_world()[0] == 0


def own_stream() -> tuple:
    """Seed parts that make a process's random stream its own: ``(rank + 1, world size)`` under data
    parallelism (no trailing zero, which numpy's SeedSequence would ignore), ``()`` in a 1-process run
    (whose seeds stay as they were). Appended to the seeds of the draws each process makes for its own
    rows, so two processes never draw the same dropout masks or frame subsets."""
    rank, world = rank_and_world()
    return (rank + 1, world) if world > 1 else ()


def init(device: torch.device) -> None:
    """Join the process group when launched by torchrun with more than one process (once per process;
    left at exit, as NCCL asks)."""
    if rank_and_world()[1] > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(dist.destroy_process_group)


def _flat_all_reduce(tensors: list, scale: float = 1.0, extra: float = 0.0) -> tuple:
    """Sum ``scale * tensors`` and the float ``extra`` over processes in one all-reduce; returns the
    summed flat vector (without ``extra``) and the summed ``extra``."""
    first = tensors[0]
    flat = torch.cat([t.reshape(-1) for t in tensors] + [torch.tensor([extra], dtype=first.dtype, device=first.device)])
    if scale != 1.0:
        flat[:-1] *= scale
    dist.all_reduce(flat)
    return flat[:-1], float(flat[-1])


def _copy_back(flat: torch.Tensor, tensors: list) -> None:
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def average_gradients(parameters, rows: int) -> None:
    """Make every process's gradients the gradient of the global batch's mean loss: the sum over
    processes of each one's gradient times its share ``rows / global rows``. A no-op without a
    process group (a 1-process run).

    Every process must hold gradients for the same parameters (the recipes' code paths do not depend
    on the rows a process got)."""
    if not dist.is_initialized():
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat, total = _flat_all_reduce(grads, float(rows), float(rows))
    _copy_back(flat / total, grads)


def average_buffers(module: torch.nn.Module) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over processes, so all hold the
    same state and rank 0 evaluates with statistics of every process's rows. A no-op without a
    process group."""
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    if not dist.is_initialized() or not buffers:
        return
    flat, _ = _flat_all_reduce(buffers)
    _copy_back(flat / dist.get_world_size(), buffers)


def sum_over_processes(values: list) -> list:
    """Per-process floats summed over processes (float64), e.g. an epoch's loss sum and row count."""
    if not dist.is_initialized():
        return list(values)
    total = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(total)
    return total.tolist()


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate a (N_rank, ...) tensor of every process along dim 0 (rank order)."""
    if not dist.is_initialized():
        return tensor
    world, device = dist.get_world_size(), _collective_device()
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([len(tensor)], device=device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=device)
    padded[:len(tensor)] = tensor
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:int(size.item())] for part, size in zip(parts, sizes)]).to(tensor.device)


def _collective_device() -> torch.device:
    """Where collective tensors live: this process's GPU under NCCL, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def barrier() -> None:
    """Wait for every process (a no-op outside a process group)."""
    if dist.is_initialized():
        dist.barrier()


def batching_warnings(num_videos: int, batch_size: int) -> list:
    """Where this run's epochs have fewer steps than a 1-process run's: a last batch too small to give
    every process two rows (BatchNorm) joins the batch before it."""
    world = rank_and_world()[1]
    mine, single = len(batch_spans(num_videos, batch_size, world)), len(batch_spans(num_videos, batch_size))
    if mine == single:
        return []
    left = num_videos - (single - 1) * batch_size
    return [f"with {world} processes the last batch of each epoch ({left} videos, fewer than 2 per process) joins "
            f"the one before it: {mine} optimiser steps per epoch instead of a 1-process run's {single}; choose "
            f"train.batch_size so that {num_videos} videos leave 0 or at least {2 * world} for the last batch"]
