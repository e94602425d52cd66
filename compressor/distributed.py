"""torchrun support: one process per GPU (or CPU share), PyTorch's DistributedDataParallel.

Launched by `torchrun` (RANK, WORLD_SIZE, LOCAL_RANK in the environment), every command joins
the process group (NCCL on GPUs, gloo on CPUs) before its work. Each process trains on its share of
every global batch (`compressor.data.Batches`) with the student wrapped in DDP; the frozen teacher
is not wrapped. Only rank 0 prints progress and writes artifacts, checkpoints and caches; the
others wait for it at the end of each stage. Without torchrun these functions say rank 0 of 1.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def init(device: str = "auto") -> None:
    """Join the process group when launched by torchrun (idempotent); pin this process's GPU."""
    if not launched() or active():
        return
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=30))


def device_for(device: torch.device) -> torch.device:
    """This process's device: cuda:LOCAL_RANK under torchrun on GPUs."""
    if device.type == "cuda" and active():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def barrier() -> None:
    if active():
        dist.barrier()


def any_true(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every process when it is true on any (a stop signal reaching one rank stops all)."""
    if not active():
        return flag
    t = torch.tensor([1 if flag else 0], device=_collective_device(device))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (batch-norm running statistics) on every process, so all evaluate alike."""
    if not active():
        return
    for b in module.buffers():
        dist.broadcast(b.data, 0)


def sum_(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over processes, in place (on the collective backend's device)."""
    if active():
        dev = _collective_device(t.device)
        moved = t.to(dev)
        dist.all_reduce(moved)
        if moved is not t:
            t.copy_(moved.to(t.device))
    return t


def _collective_device(device) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def gather_rows(values: list[torch.Tensor], index: torch.Tensor, n: int) -> list[torch.Tensor]:
    """Each process holds rows `index` of some (n, ...) tensors; return the whole tensors on every
    process (all-gather, padded to the longest share)."""
    counts = [torch.zeros(1, dtype=torch.int64) for _ in range(world_size())]
    _all_gather(counts, torch.tensor([len(index)]))
    longest = int(max(c.item() for c in counts))
    out = []
    for v in [index.view(-1, 1)] + values:
        padded = torch.zeros(longest, *v.shape[1:], dtype=v.dtype)
        padded[:len(v)] = v
        parts = [torch.empty_like(padded) for _ in range(world_size())]
        _all_gather(parts, padded)
        out.append(torch.cat([p[:int(c.item())] for p, c in zip(parts, counts)]))
    rows = out[0].view(-1)
    whole = []
    for v in out[1:]:
        full = torch.zeros(n, *v.shape[1:], dtype=v.dtype)
        full[rows] = v
        whole.append(full)
    return whole


def _all_gather(parts: list[torch.Tensor], t: torch.Tensor) -> None:
    dev = _collective_device(t.device)
    moved = [p.to(dev) for p in parts]
    dist.all_gather(moved, t.to(dev))
    for p, m in zip(parts, moved):
        p.copy_(m.cpu())
