"""Collectives of the data-parallel statistics under torch.distributed (gloo on CPU, nccl on GPU).

Every statistics function in ``monet_interp.stats`` notices an initialised process group by
itself: each rank processes its shard of the windows, then sums are all-reduced, maxima
max-reduced and top-k buffers gathered and merged (ties broken by context key, so the result
equals the one-process result up to float rounding of the sums). Every rank returns the result.

The torchrun command line is :mod:`monet_interp.stats.distributed`.

Without torchrun, :func:`run_local` starts ``world_size`` local processes (gloo, localhost) and
returns each rank's return value (used by the tests).
"""

from __future__ import annotations

import os
import pickle
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist


def rank_world() -> tuple[int, int]:
    """(rank, world_size) of the current process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _active() -> bool:
    return rank_world()[1] > 1


def all_reduce_(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce ("sum" or "max"); a no-op in one process."""
    if _active():
        dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return tensor


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in one process."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * rank_world()[1]
    dist.all_gather_object(out, obj)
    return out


def all_gather_topk(score: torch.Tensor, key: torch.Tensor, k: int,
                    merge: Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]):
    """Merge [n, k] top-k buffers of all ranks with ``merge`` (concatenated along the last axis)."""
    if not _active() or k == 0:
        return score, key
    world = rank_world()[1]
    scores = [torch.empty_like(score) for _ in range(world)]
    keys = [torch.empty_like(key) for _ in range(world)]
    dist.all_gather(scores, score.contiguous())
    dist.all_gather(keys, key.contiguous())
    return merge(torch.cat(scores, -1), torch.cat(keys, -1), k)


def default_backend(device: torch.device | str | None = None) -> str:
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return "nccl" if dev.type == "cuda" else "gloo"


def init_from_env(backend: str | None = None) -> torch.device:
    """Initialise the process group from torchrun's environment; returns this rank's device
    (cuda:LOCAL_RANK when CUDA is available, else cpu)."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend or default_backend(device))
    return device


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn_entry(rank: int, fn: Callable[..., Any], world: int, port: int, backend: str, out_dir: str,
                 args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        result = fn(rank, world, *args)
        with open(Path(out_dir) / f"rank{rank}.pkl", "wb") as fh:
            pickle.dump(result, fh)
    finally:
        dist.destroy_process_group()


def run_local(fn: Callable[..., Any], world_size: int, *args: Any, backend: str = "gloo",
              start_method: str = "spawn") -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` local processes joined in a process
    group on localhost; returns the results (picklable) in rank order. With "spawn" (fresh
    interpreters) ``fn`` must be a module-level function and ``args`` picklable; "fork" (Linux)
    skips the re-imports, but only fork a process that has not started CUDA or extra threads."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(_spawn_entry, args=(fn, world_size, _free_port(), backend, out, args), nprocs=world_size,
                           join=True, start_method=start_method)
        results = []
        for rank in range(world_size):
            with open(Path(out) / f"rank{rank}.pkl", "rb") as fh:
                results.append(pickle.load(fh))
        return results


__all__ = ["all_gather_object", "all_gather_topk", "all_reduce_", "default_backend", "init_from_env", "rank_world",
           "run_local"]
