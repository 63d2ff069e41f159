"""The round loop: stopping rules, history passed to propose, seeding, costs."""

from __future__ import annotations

import time

import pytest
import torch

from lm_eval_softreason.search import bo
from lm_eval_softreason.search.loop import RoundOutcome, round_seed, run_loop

D, K = 6, 3


class FakePropose:
    """Records every call; returns constant points (a distinct value per call)."""

    def __init__(self, fallback: str | None = None, sleep_s: float = 0.0):
        self.calls: list[dict] = []
        self.fallback = fallback
        self.sleep_s = sleep_s

    def __call__(self, train_x, train_y, q, *, acquisition, box, seed, min_spread=0.0):
        self.calls.append(
            {"x": train_x.clone(), "y": train_y.clone(), "q": q,
             "acquisition": acquisition, "box": box, "seed": seed, "min_spread": min_spread}
        )
        time.sleep(self.sleep_s)
        x = torch.full((q, train_x.shape[1]), 0.1 * len(self.calls), dtype=torch.float64)
        return bo.Proposal(x=x, fallback=self.fallback)


def scripted(round_rewards: list[list[float]], tokens: int = 0):
    """An ``evaluate`` that returns the given rewards round after round."""
    rounds = iter(round_rewards)

    def evaluate(x):
        assert x.shape == (K, D)
        return RoundOutcome(rewards=torch.tensor(next(rounds), dtype=torch.float64), tokens=tokens)

    return evaluate


def rising(step: float):
    """Round r's rewards all equal ``step * r`` (r = 1, 2, ...)."""
    return scripted([[step * r] * K for r in range(1, 20)])


def test_stops_at_min_rounds_when_improvement_is_below_threshold():
    result = run_loop(rising(0.005), d=D, k=K, max_rounds=5, min_rounds=2,
                      stop_threshold=0.01, seed=0, propose=FakePropose())
    assert (result.rounds, result.stop_reason) == (2, "no_improvement")


def test_never_stops_before_min_rounds():
    result = run_loop(scripted([[1.0] * K] * 5), d=D, k=K, max_rounds=5, min_rounds=3,
                      seed=0, propose=FakePropose())
    assert (result.rounds, result.stop_reason) == (3, "no_improvement")


def test_keeps_going_while_improving_until_max_rounds():
    propose = FakePropose()
    result = run_loop(rising(0.02), d=D, k=K, max_rounds=4, min_rounds=2,
                      stop_threshold=0.01, seed=0, propose=propose)
    assert (result.rounds, result.stop_reason) == (4, "max_rounds")
    assert len(propose.calls) == 3


def test_stops_once_improvement_fades():
    rewards = [[0.1] * K, [0.5] * K, [0.9] * K, [0.905] * K, [2.0] * K]
    result = run_loop(scripted(rewards), d=D, k=K, max_rounds=5, min_rounds=2,
                      stop_threshold=0.01, seed=0, propose=FakePropose())
    assert (result.rounds, result.stop_reason) == (4, "no_improvement")


def test_token_budget_stops_even_before_min_rounds():
    # 200 spent, a third round at the mean cost (100) would pass 250: it is not started
    evaluate = scripted([[float(r)] * K for r in range(10)], tokens=100)
    result = run_loop(evaluate, d=D, k=K, max_rounds=10, min_rounds=5, token_budget=250,
                      seed=0, propose=FakePropose())
    assert (result.rounds, result.stop_reason, result.tokens) == (2, "token_budget", 200)
    assert result.x.shape == (2 * K, D) and result.round_of == [1] * K + [2] * K


def test_token_budget_lets_a_round_run_when_it_should_fit():
    evaluate = scripted([[float(r)] * K for r in range(10)], tokens=100)
    result = run_loop(evaluate, d=D, k=K, max_rounds=10, min_rounds=5, token_budget=300,
                      seed=0, propose=FakePropose())
    assert (result.rounds, result.stop_reason, result.tokens) == (3, "token_budget", 300)


def test_a_rescored_history_replaces_the_rewards_and_judges_improvement():
    # round 2 re-scores round 1 down from 1.0 to 0.2; its own best 0.5 is then an improvement
    # (against the stale 1.0 it would not be)
    outcomes = iter([
        RoundOutcome(rewards=torch.tensor([1.0] * K, dtype=torch.float64), tokens=0),
        RoundOutcome(rewards=torch.tensor([0.5] * K, dtype=torch.float64), tokens=0,
                     history=torch.tensor([0.2] * K + [0.5] * K, dtype=torch.float64)),
        RoundOutcome(rewards=torch.tensor([0.5] * K, dtype=torch.float64), tokens=0),
    ])
    propose = FakePropose()
    result = run_loop(lambda x: next(outcomes), d=D, k=K, max_rounds=4, min_rounds=2,
                      seed=0, propose=propose)
    assert (result.rounds, result.stop_reason) == (3, "no_improvement")
    assert propose.calls[1]["y"].tolist() == [0.2] * K + [0.5] * K
    with pytest.raises(ValueError, match="history of"):
        run_loop(lambda x: RoundOutcome(torch.zeros(K), 0, history=torch.zeros(K + 1)), d=D, k=K,
                 seed=0, propose=FakePropose())


def test_an_evaluator_stop_is_honoured_from_min_rounds_on():
    def evaluate(x):
        return RoundOutcome(rewards=torch.rand(K, dtype=torch.float64), tokens=0, stop="unanimous")

    assert run_loop(evaluate, d=D, k=K, max_rounds=5, min_rounds=1, seed=0,
                    propose=FakePropose()).stop_reason == "unanimous"
    late = run_loop(evaluate, d=D, k=K, max_rounds=5, min_rounds=3, seed=0, propose=FakePropose())
    assert (late.rounds, late.stop_reason) == (3, "unanimous")


def test_min_spread_reaches_propose():
    propose = FakePropose()
    run_loop(rising(0.02), d=D, k=K, max_rounds=2, min_rounds=2, seed=0, propose=propose,
             min_spread=0.05)
    assert propose.calls[0]["min_spread"] == 0.05


def test_token_budget_reached_exactly_stops():
    evaluate = scripted([[float(r)] * K for r in range(10)], tokens=100)
    result = run_loop(evaluate, d=D, k=K, max_rounds=10, min_rounds=1, token_budget=200,
                      seed=0, propose=FakePropose())
    assert (result.rounds, result.stop_reason) == (2, "token_budget")


def test_nan_round_counts_as_no_improvement():
    rewards = [[0.5] * K, [float("nan")] * K]
    result = run_loop(scripted(rewards), d=D, k=K, max_rounds=5, min_rounds=2,
                      seed=0, propose=FakePropose())
    assert (result.rounds, result.stop_reason) == (2, "no_improvement")
    assert torch.isnan(result.rewards[K:]).all()
    assert result.best_reward == 0.5


def test_first_finite_round_after_nan_rounds_is_an_improvement():
    nan = float("nan")
    rewards = [[nan] * K, [nan, 0.3, nan], [0.3] * K]
    result = run_loop(scripted(rewards), d=D, k=K, max_rounds=5, min_rounds=2,
                      seed=0, propose=FakePropose())
    assert (result.rounds, result.stop_reason) == (3, "no_improvement")


def test_propose_sees_the_whole_history_with_per_round_seeds():
    propose = FakePropose()
    result = run_loop(rising(1.0), d=D, k=K, max_rounds=3, min_rounds=3, box=2.0,
                      acquisition="ucb", seed=5, propose=propose)
    assert [call["x"].shape for call in propose.calls] == [(K, D), (2 * K, D)]
    assert torch.equal(propose.calls[1]["x"], result.x[: 2 * K])
    assert torch.equal(propose.calls[1]["y"], result.rewards[: 2 * K])
    assert [call["seed"] for call in propose.calls] == [round_seed(5, 2), round_seed(5, 3)]
    assert {(c["q"], c["acquisition"], c["box"]) for c in propose.calls} == {(K, "ucb", 2.0)}
    # what propose returned is what got evaluated
    assert torch.allclose(result.x[2 * K:], torch.full((K, D), 0.2, dtype=torch.float64))
    assert result.round_of == [1] * K + [2] * K + [3] * K


def test_first_round_is_seeded_normal_draws_clamped_to_box():
    result = run_loop(scripted([[1.0] * K]), d=D, k=K, max_rounds=1, min_rounds=1,
                      box=0.5, seed=3, propose=FakePropose())
    generator = torch.Generator().manual_seed(round_seed(3, 1))
    expected = torch.randn(K, D, generator=generator, dtype=torch.float64).clamp(-0.5, 0.5)
    assert torch.equal(result.x, expected)
    assert (result.rounds, result.stop_reason) == (1, "max_rounds")


def test_random_and_bo_share_the_first_round_and_random_rounds_ignore_rewards():
    bo_run = run_loop(rising(1.0), d=D, k=K, max_rounds=2, min_rounds=2, seed=9,
                      propose=FakePropose())
    random_a = run_loop(rising(1.0), d=D, k=K, max_rounds=3, min_rounds=3,
                        acquisition="random", seed=9)
    random_b = run_loop(scripted([[9.0 - r] * K for r in range(3)]), d=D, k=K,
                        max_rounds=3, min_rounds=3, acquisition="random", seed=9)
    assert torch.equal(bo_run.x[:K], random_a.x[:K])
    assert torch.equal(random_a.x, random_b.x)
    assert not torch.equal(random_a.x[K:2 * K], random_a.x[2 * K:])


def test_same_seed_same_result_different_seed_different_points():
    def quadratic(x):
        return RoundOutcome(rewards=2.0 - (x[:, :2] - 1.0).pow(2).sum(-1) / 8, tokens=10)

    a = run_loop(quadratic, d=D, k=K, max_rounds=3, min_rounds=3, seed=1)
    b = run_loop(quadratic, d=D, k=K, max_rounds=3, min_rounds=3, seed=1)
    c = run_loop(quadratic, d=D, k=K, max_rounds=3, min_rounds=3, seed=2)
    assert torch.equal(a.x, b.x) and torch.equal(a.rewards, b.rewards)
    assert (a.rounds, a.stop_reason, a.tokens, a.fallbacks) == (b.rounds, b.stop_reason,
                                                                  b.tokens, b.fallbacks)
    assert not torch.equal(a.x, c.x)
    assert a.fallbacks == [] and a.x.shape == (3 * K, D)


def test_bo_time_and_fallbacks_are_recorded():
    propose = FakePropose(fallback="constant_rewards", sleep_s=0.02)
    result = run_loop(rising(1.0), d=D, k=K, max_rounds=3, min_rounds=3, seed=0,
                      propose=propose)
    assert result.bo_s >= 0.04
    assert result.fallbacks == ["constant_rewards", "constant_rewards"]


def test_evaluate_errors_propagate():
    def evaluate(x):
        raise RuntimeError("model went away")

    with pytest.raises(RuntimeError, match="model went away"):
        run_loop(evaluate, d=D, k=K, seed=0, propose=FakePropose())


def test_wrong_number_of_rewards_is_an_error():
    with pytest.raises(ValueError, match="rewards for 3 points"):
        run_loop(scripted([[1.0, 2.0]]), d=D, k=K, seed=0, propose=FakePropose())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"min_rounds": 4, "max_rounds": 3}, "min_rounds=4, max_rounds=3"),
        ({"min_rounds": 0}, "min_rounds=0"),
        ({"k": 0}, "k=0"),
        ({"token_budget": 0}, "token_budget=0"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, message):
    args = {"d": D, "k": K, "seed": 0, "propose": FakePropose()} | kwargs
    with pytest.raises(ValueError, match=message):
        run_loop(rising(1.0), **args)
