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


def agreement_plateaus(
    d: int = 50, threshold: float = 0.85, coherence: float = 0.9, noise: float = 0.01
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A reward ``x (k x d) -> rewards (k,)`` shaped like Soft Reasoning's real one: verifier
    agreement is a step (1 on the half-space ``x . u > threshold``, the region whose vectors
    decode to the verdict's answer; 0 elsewhere, about 80% of N(0, I) draws), plus a coherence
    term that is flat up to ``noise`` (a deterministic pseudo-random function of x). Plateaus
    with tiny noise are what a standardised GP is tempted to fit as signal."""
    generator = torch.Generator().manual_seed(4321)
    direction = torch.randn(d, generator=generator, dtype=torch.float64)
    direction = direction / direction.norm()
    scramble = torch.randn(d, generator=generator, dtype=torch.float64)

    def reward(x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float64)
        agree = (x @ direction > threshold).to(torch.float64)
        jitter = torch.frac(torch.sin(x @ scramble) * 43758.5453).abs()
        return agree + coherence + noise * jitter

    return reward
