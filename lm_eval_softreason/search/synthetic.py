"""Synthetic objectives for testing and benchmarking search strategies without a model."""

from __future__ import annotations

from collections.abc import Callable

import torch


def projected_bump(
    d: int = 50, rank: int = 2, width: float = 2.0, centre_norm: float = 2.0
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A deterministic reward ``x (k x d) -> rewards (k,)`` in [0, 2]: a smooth bump over a
    ``rank``-dimensional projection of x. The bump sits off-centre (``centre_norm``), so
    N(0, I) draws rarely land on it, but a GP can find the direction that matters."""
    generator = torch.Generator().manual_seed(1234)
    projection, _ = torch.linalg.qr(torch.randn(d, rank, generator=generator, dtype=torch.float64))
    centre = torch.randn(rank, generator=generator, dtype=torch.float64)
    centre = centre / centre.norm() * centre_norm

    def reward(x: torch.Tensor) -> torch.Tensor:
        z = x.to(torch.float64) @ projection
        return 2.0 * torch.exp(-((z - centre) ** 2).sum(-1) / width)

    return reward
