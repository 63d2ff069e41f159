"""The generic search loop: draw points, evaluate them, propose more, stop.

Knows nothing about language models (``evaluate`` maps points to rewards and a token cost)
nor about Gaussian processes (``propose`` maps the history to the next points).

Round 1 draws ``k`` points from N(0, I) clamped to ``[-box, box]^d``. Rounds ``2..max_rounds``
ask ``propose`` for ``k`` points given every (point, reward) so far. Random draws depend only
on ``(seed, round)``: round 1 is identical whatever the acquisition, and the ``"random"``
acquisition's later rounds are pure functions of ``(seed, round)`` too, so BO and random
search are compared on the same start and the same budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lm_eval_softreason.search import bo


@dataclass
class RoundOutcome:
    """What evaluating one round of ``k`` points gave.

    Attributes:
        rewards: ``k`` rewards, higher is better; ``NaN`` where a point gave no reward.
        tokens: Tokens this round cost (its share of the budget).
        history: Optional rewards of *every* point so far (earlier rounds first, this round
            last) under the objective as it stands now; replaces the loop's record, so a
            reward that depends on a verdict is re-scored when the verdict changes and the GP
            always fits one stationary objective.
        stop: Optional reason to stop after this round (say ``"unanimous"``); honoured from
            ``min_rounds`` on.
    """

    rewards: Tensor
    tokens: int
    history: Tensor | None = None
    stop: str | None = None


@dataclass
class LoopResult:
    """Every point the loop evaluated, in order, and why it stopped.

    Attributes:
        x: ``N x d`` all evaluated points (``N = rounds * k``).
        rewards: ``N`` rewards, aligned with ``x`` (may hold ``NaN``).
        round_of: ``N`` round numbers (1-based) of the points.
        rounds: Rounds run.
        stop_reason: ``"token_budget"``, ``"max_rounds"`` or ``"no_improvement"``.
        bo_s: Seconds spent inside ``propose``.
        fallbacks: The ``fallback`` reason of every proposal that returned random points
            instead of model-chosen ones (empty when all were model-chosen).
        tokens: Total tokens spent.
    """

    x: Tensor
    rewards: Tensor
    round_of: list[int]
    rounds: int
    stop_reason: str
    bo_s: float
    fallbacks: list[str] = field(default_factory=list)
    tokens: int = 0

    @property
    def best_reward(self) -> float:
        """Highest non-NaN reward, or NaN when there is none."""
        finite = self.rewards[~torch.isnan(self.rewards)]
        return float(finite.max()) if finite.numel() else float("nan")


def round_seed(seed: int, round_index: int) -> int:
    """The seed for round ``round_index`` (1-based) of a search seeded with ``seed``."""
    return (seed * 1_000_003 + round_index) % (2**62)


def _best(rewards: Tensor) -> float:
    """Max reward with NaN counted as -inf (a NaN round never improves)."""
    return float(torch.nan_to_num(rewards, nan=float("-inf")).max())


def run_loop(
    evaluate: Callable[[Tensor], RoundOutcome],
    *,
    d: int,
    k: int,
    max_rounds: int = 5,
    min_rounds: int = 2,
    stop_threshold: float = 0.01,
    token_budget: int | None = None,
    acquisition: str = "logei",
    box: float = 3.0,
    seed: int,
    propose: Callable[..., bo.Proposal] = bo.propose,
    min_spread: float = 0.0,
) -> LoopResult:
    """Run rounds of ``k`` points until a stopping rule fires.

    Args:
        evaluate: Maps ``k x d`` points to a ``RoundOutcome``. Exceptions propagate.
        d: Dimension of the search space.
        k: Points per round.
        max_rounds: Hard cap on rounds.
        min_rounds: Rounds always run (unless the token budget runs out first).
        stop_threshold: After a round ``r >= min_rounds`` whose best reward does not beat
            the best before it by at least this much, stop (``"no_improvement"``).
        token_budget: Cap on cumulative tokens (``"token_budget"``): stop once they reach
            it, and do not start a round that would pass it if it cost the mean of the rounds
            so far (a round's cost is only known after it, so the cap can still be passed by
            a round dearer than the mean).
        acquisition: Passed to ``propose`` (``"random"`` gives random search).
        box: Points live in ``[-box, box]^d``.
        seed: Seeds round ``r`` with ``round_seed(seed, r)``.
        propose: ``propose(train_x, train_y, q, acquisition=, box=, seed=, min_spread=)
            -> Proposal``; injectable for tests.
        min_spread: Passed to ``propose``: rewards that differ by less than this are noise,
            and the round explores instead of fitting them.

    Returns:
        A ``LoopResult``. When several rules fire after the same round the reason is the
        first of ``token_budget``, ``max_rounds``, the evaluator's ``stop``, ``no_improvement``.
    """
    if d < 1 or k < 1:
        raise ValueError(f"d={d}, k={k}; both must be >= 1")
    if not 1 <= min_rounds <= max_rounds:
        raise ValueError(
            f"min_rounds={min_rounds}, max_rounds={max_rounds}; need 1 <= min_rounds <= max_rounds"
        )
    if token_budget is not None and token_budget < 1:
        raise ValueError(f"token_budget={token_budget}; must be None or >= 1")

    xs: list[Tensor] = []
    rewards: list[Tensor] = []
    round_of: list[int] = []
    fallbacks: list[str] = []
    bo_s = 0.0
    tokens = 0
    best_so_far = float("-inf")
    stop_reason = "max_rounds"

    for round_index in range(1, max_rounds + 1):
        if (token_budget is not None and round_index > 1
                and tokens + tokens / (round_index - 1) > token_budget):
            round_index -= 1  # the rounds actually run
            stop_reason = "token_budget"
            break
        if round_index == 1:
            generator = torch.Generator().manual_seed(round_seed(seed, 1))
            x = torch.randn(k, d, generator=generator, dtype=torch.float64).clamp(-box, box)
        else:
            start = time.perf_counter()
            proposal = propose(
                torch.cat(xs),
                torch.cat(rewards),
                k,
                acquisition=acquisition,
                box=box,
                seed=round_seed(seed, round_index),
                min_spread=min_spread,
            )
            bo_s += time.perf_counter() - start
            x = proposal.x.to(torch.float64)
            if x.shape != (k, d):
                raise ValueError(f"propose returned shape {tuple(x.shape)}, expected ({k}, {d})")
            if proposal.fallback is not None:
                fallbacks.append(proposal.fallback)

        outcome = evaluate(x)
        round_rewards = torch.as_tensor(outcome.rewards, dtype=torch.float64).reshape(-1)
        if round_rewards.shape != (k,):
            raise ValueError(
                f"evaluate returned {tuple(round_rewards.shape)} rewards for {k} points"
            )
        xs.append(x)
        rewards.append(round_rewards)
        round_of.extend([round_index] * k)
        tokens += int(outcome.tokens)
        if outcome.history is not None:
            history = torch.as_tensor(outcome.history, dtype=torch.float64).reshape(-1)
            if history.shape != (len(round_of),):
                raise ValueError(f"evaluate returned a history of {tuple(history.shape)} "
                                 f"rewards for {len(round_of)} points")
            rewards = list(history.split([k] * round_index))
            round_rewards = rewards[-1]
            # improvement is judged on the current objective: earlier rounds re-scored too
            best_so_far = _best(torch.cat(rewards[:-1])) if round_index > 1 else float("-inf")

        round_best = _best(round_rewards)
        improved = round_best - best_so_far >= stop_threshold  # False for -inf - -inf (NaN)
        best_so_far = max(best_so_far, round_best)

        if token_budget is not None and tokens >= token_budget:
            stop_reason = "token_budget"
            break
        if round_index == max_rounds:
            stop_reason = "max_rounds"
            break
        if round_index >= min_rounds and outcome.stop:
            stop_reason = outcome.stop
            break
        if round_index >= min_rounds and not improved:
            stop_reason = "no_improvement"
            break

    return LoopResult(
        x=torch.cat(xs),
        rewards=torch.cat(rewards),
        round_of=round_of,
        rounds=round_index,
        stop_reason=stop_reason,
        bo_s=bo_s,
        fallbacks=fallbacks,
        tokens=tokens,
    )
