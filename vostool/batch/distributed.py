"""Ranks, the process group, and ``--workers N`` through torch's elastic launcher.

A batch run is the same command on every rank. ``torchrun`` (or :func:`launch_workers`, which starts N
local ranks through :func:`torch.distributed.launcher.api.elastic_launch`, the API torchrun itself runs
on) sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in each rank's environment;
without them the run is one process and no process group is made. The group is gloo on CPU and NCCL
when the ranks use GPUs; it carries only small Python objects (the plan, the per-video summaries).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

# Ranks wait for each other only at the start (the plan) and at the end (the summaries); the end can be
# far apart when one rank holds a long video, and the default collective timeout (10 minutes for NCCL)
# would kill a healthy run. A rank that dies is noticed by torchrun's agent, which stops the others.
COLLECTIVE_TIMEOUT = datetime.timedelta(days=7)


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a run (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    restart: int = 0  # how often torchrun has restarted the ranks (TORCHELASTIC_RESTART_COUNT)

    @classmethod
    def from_env(cls) -> World:
        def number(name: str, default: int) -> int:
            value = os.environ.get(name, "")
            return int(value) if value.strip().isdigit() else default

        size = number("WORLD_SIZE", 1)
        return cls(number("RANK", 0), size, number("LOCAL_RANK", 0), number("LOCAL_WORLD_SIZE", size),
                   number("TORCHELASTIC_RESTART_COUNT", 0))

    @property
    def is_writer(self) -> bool:
        """Rank 0 writes what concerns the whole run: the summary, the zip, the scores."""
        return self.rank == 0


def rank_device(device: str, world: World) -> str:
    """The device a rank runs on: with several ranks, ``auto``/``cuda`` mean the GPU of ``LOCAL_RANK``
    when there are GPUs (an explicit ``cuda:N`` is kept)."""
    import torch

    if world.size > 1 and device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{world.local_rank % torch.cuda.device_count()}"
    return device


@contextlib.contextmanager
def process_group(world: World, device: str) -> Iterator[None]:
    """The ranks' process group while the block runs (nothing for one process); every rank has joined
    when the block starts."""
    if world.size == 1:
        yield
        return
    import torch
    import torch.distributed as dist

    backend = "gloo"
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))  # NCCL's object collectives use the current device
        backend = "nccl"
    dist.init_process_group(backend, store=_attempt_store(world), rank=world.rank, world_size=world.size,
                            timeout=COLLECTIVE_TIMEOUT)
    try:
        dist.barrier()
        yield
    finally:
        dist.destroy_process_group()


def _attempt_store(world: World):
    """The rendezvous store of ``env://`` (torchrun's), its keys prefixed with the restart count.

    After torchrun restarts the ranks, the store can still hold the addresses the previous ranks
    published; a rank that reads one before its peer has published anew connects to a dead process and
    the restart fails ("Gloo connectFullMesh failed ... Connection refused"). A prefix per attempt keeps
    the rounds apart.
    """
    from torch.distributed import PrefixStore, rendezvous

    store, _, _ = next(rendezvous("env://", timeout=COLLECTIVE_TIMEOUT))
    return PrefixStore(f"vostool-batch/attempt-{world.restart}", store)


def broadcast(value: Any, world: World) -> Any:
    """Rank 0's ``value`` on every rank."""
    if world.size == 1:
        return value
    import torch.distributed as dist

    holder = [value if world.rank == 0 else None]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather(value: Any, world: World) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank (so that every rank knows whether any video
    failed and exits the same way)."""
    if world.size == 1:
        return [value]
    import torch.distributed as dist

    values: list[Any] = [None] * world.size
    dist.all_gather_object(values, value)
    return values


def launch_workers(entrypoint: Callable[..., Any], args: tuple, workers: int, max_restarts: int = 0) -> dict[int, Any]:
    """Run ``entrypoint(*args)`` in ``workers`` local ranks through torch's elastic agent (as
    ``torchrun --standalone --nproc-per-node workers --max-restarts K`` would); returns each rank's return
    value. Raises :class:`torch.distributed.elastic.multiprocessing.errors.ChildFailedError` when a
    rank fails more often than ``max_restarts`` allows."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=workers, run_id=f"vostool-batch-{uuid.uuid4()}",
        rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=max_restarts, monitor_interval=0.2,
        start_method="spawn",
    )
    return elastic_launch(config, entrypoint)(*args)
