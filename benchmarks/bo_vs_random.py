"""BO vs random search at equal budget on a synthetic 50-d reward.

    python benchmarks/bo_vs_random.py [--seeds 20] [--rounds 5] [--k 5]

(with the package installed, e.g. ``pip install -e .``; else prefix ``PYTHONPATH=.``)

The reward mimics the Soft Reasoning scale ([0, 2]) with structure a GP can exploit: a
smooth bump over a 2-d projection of the 50-d point, ``2 * exp(-||P x - c||^2 / width)``,
with the bump off-centre so N(0, I) draws rarely land on it. Every acquisition sees the same
first round (same seed); the budget is ``rounds * k`` evaluations each, without early stop.
Prints mean best reward +- standard error per acquisition and the mean time per propose call.
"""

from __future__ import annotations

import argparse
import math

import torch

from lm_eval_softreason.search import bo
from lm_eval_softreason.search.loop import RoundOutcome, run_loop
from lm_eval_softreason.search.synthetic import projected_bump

D = 50


def run(acquisition: str, seed: int, rounds: int, k: int, objective) -> tuple[float, float, int]:
    """Best reward, seconds in propose, number of propose calls for one search."""
    result = run_loop(
        lambda x: RoundOutcome(rewards=objective(x), tokens=0),
        d=D,
        k=k,
        max_rounds=rounds,
        min_rounds=rounds,
        acquisition=acquisition,
        seed=seed,
    )
    return result.best_reward, result.bo_s, rounds - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--k", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    objective = projected_bump()

    print(f"d={D}, k={args.k}, rounds={args.rounds} ({args.k * args.rounds} evaluations), "
          f"{args.seeds} seeds, objective: 2*exp(-||Px-c||^2/2), P: 50->2, ||c||=2")
    print(f"{'acquisition':<12} {'best reward':>18} {'s/propose':>10} {'max s':>7}")
    for acquisition in ("logei", "ucb", "pi", "random"):
        best, per_call = [], []
        for seed in range(args.seeds):
            value, bo_s, calls = run(acquisition, seed, args.rounds, args.k, objective)
            best.append(value)
            per_call.append(bo_s / calls)
        best_t = torch.tensor(best)
        se = float(best_t.std()) / math.sqrt(len(best))
        print(f"{acquisition:<12} {float(best_t.mean()):>10.3f} +- {se:.3f} "
              f"{sum(per_call) / len(per_call):>10.3f} {max(per_call):>7.3f}")


if __name__ == "__main__":
    main()
