"""Data parallel over processes: ``accelerate launch -m lm_eval ...`` or ``torchrun ... -m
lm_eval ...``, one process (and one device) per rank.

lm-eval's ``HFLM`` sets up data parallelism only when it loads the model itself from a string
and sees several GPUs; ``SoftReasonLM`` hands it a model it loaded, so HFLM runs every process
as rank 0 of 1. This module does the part HFLM skips: it starts the process group through
accelerate (gloo on CPU, nccl on GPU) when the launcher set ``WORLD_SIZE`` > 1, gives each rank
its own device, and lets the model report rank and world size so that lm-eval shards the
documents, pads the ranks to equal request counts and gathers the results on rank 0.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any


def launched_world_size() -> int:
    """Processes started by the launcher (torchrun / accelerate set ``WORLD_SIZE``)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def start(device: str = "auto") -> Any | None:
    """The ``accelerate.Accelerator`` of a multi-process launch (process group started), or
    None for a single process. CPU processes (``device=cpu``, or no GPU) use gloo."""
    if launched_world_size() <= 1:
        return None
    import torch
    from accelerate import Accelerator, InitProcessGroupKwargs

    # accelerate treats a torchrun launch on CPU as single-process unless told cpu=True
    cpu = device == "cpu" or not torch.cuda.is_available()
    # searches are long: a rank may wait hours at a barrier for a slower one
    accelerator = Accelerator(cpu=cpu, kwargs_handlers=[
        InitProcessGroupKwargs(timeout=timedelta(weeks=1))])
    return accelerator if accelerator.num_processes > 1 else None


def rank_device(device: str, accelerator: Any | None) -> str:
    """The device this rank loads its model on: ``auto``/``cuda`` become the rank's own GPU
    (``cuda:LOCAL_RANK``) in a multi-process launch; an explicit ``cuda:N`` is kept."""
    if accelerator is None or device not in ("auto", "cuda"):
        return device
    own = accelerator.device
    return "cpu" if own.type == "cpu" else str(own)


def sum_totals(per_rank: list[dict[str, float]]) -> dict[str, float]:
    """Run totals of all ranks added key by key."""
    out: dict[str, float] = {}
    for totals in per_rank:
        for key, value in totals.items():
            out[key] = out.get(key, 0) + value
    return out
