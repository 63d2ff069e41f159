"""The leaderboard's methods (issue 6) and the named run plans.

A method is a backend plus the ``model_args`` it changes: ``hf`` is lm-eval's own ``hf`` model
(the independent baseline), ``softreason`` is our model with ``search``/ablation keys set.
Every softreason-family method shares one loaded model; only ``lm.cfg`` changes between cells.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from lm_eval_softreason.config import SoftReasonConfig


@dataclass(frozen=True)
class Method:
    name: str
    backend: str  # "hf" (lm-eval's hf model) or "softreason"
    model_args: dict[str, Any] = field(default_factory=dict)
    what: str = ""


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("hf-greedy", "hf", {}, "lm-eval's own hf model, greedy: the independent baseline"),
    Method("greedy", "softreason", {"search": "greedy"}, "softreason with search=greedy"),
    Method("sc@5", "softreason", {"search": "sc", "n": 5, "temperature": 0.6},
           "self-consistency, 5 samples at T=0.6, majority vote"),
    Method("sc@10", "softreason", {"search": "sc", "n": 10, "temperature": 0.6},
           "self-consistency, 10 samples at T=0.6, majority vote"),
    Method("random", "softreason", {"search": "random"},
           "perturbation + rewards + vote, no GP"),
    Method("softreason", "softreason", {}, "the full method, defaults (preset v3)"),
    Method("softreason-v1", "softreason", {"preset": "v1"},
           "the full method with the first defaults (preset v1), for the record"),
    Method("softreason-v2", "softreason", {"preset": "v2"},
           "preset v2: v3 with the grouped self-verifier (no forced answers)"),
    Method("random-v1", "softreason", {"search": "random", "preset": "v1"},
           "random search with the first defaults (preset v1)"),
    # the v2 search without its verifier: the development cell that chose v3 (same settings
    # as v3 but for forcing, which needs a verifier)
    Method("sr-noverifier", "softreason", {"preset": "v2", "w_verifier": 0.0},
           "ablation: preset v2 without the verifier"),
    Method("sr-nocoherence", "softreason", {"w_coherence": 0.0}, "ablation: no coherence reward"),
    Method("sr-basezero", "softreason", {"base": "zero"},
           "pure projection, no token embedding (the released code)"),
    # beyond the issue: at sigma=1 Qwen's soft vectors mostly decode to greedy's answer
    # (results/diversity_qwen2.5-coder-1.5b.json); the default stays until this cell says more
    Method("sr-sigma4", "softreason", {"sigma": 4.0}, "the full method, 4x the perturbation"),
)}

CORE = ("hf-greedy", "greedy", "sc@10", "random", "softreason")

# A plan is a list of (methods, tasks, limit) groups, run in order.
PLANS: dict[str, list[tuple[tuple[str, ...], tuple[str, ...], int]]] = {
    # issue 6, the bench model: svamp-50 core five, svamp-30 the rest, gsm8k_sr-30
    "leaderboard": [
        (CORE, ("svamp",), 50),
        (("sc@5", "sr-noverifier", "sr-nocoherence", "sr-basezero"), ("svamp",), 30),
        (("greedy", "sc@10", "softreason"), ("gsm8k_sr",), 30),
    ],
    # issue 6, the embedded SmolLM2: the svamp-50 core five only
    "core": [(CORE, ("svamp",), 50)],
    # issue 18, development data only: the cells its defaults are judged on
    "dev": [
        (("greedy", "sc@10", "softreason"), ("svamp_dev", "gsm8k_dev"), 100),
        (("random",), ("svamp_dev",), 50),  # BO against random search
    ],
    # issue 21, the report splits at a size that separates methods; its equal-token rows
    # (EQUAL_TOKEN below) join the plan once these cells' token means exist
    "leaderboard-v2": [
        (("greedy", "sc@10", "softreason", "random"), ("svamp",), 300),
        (("softreason-v1",), ("svamp",), 100),
        (("greedy", "sc@10", "softreason", "random"), ("gsm8k_sr",), 200),
        (("greedy", "sc@10", "softreason"), ("gsm_hard", "strategyqa"), 100),
    ],
}


# The equal-token rows of a plan, per (task, limit): sc@N at softreason's generated tokens
# (read from that task's complete cells) and sr@10, softreason with sc@10's 10 candidates.
EQUAL_TOKEN: dict[str, list[tuple[str, int]]] = {
    "leaderboard-v2": [("svamp", 300), ("gsm8k_sr", 200), ("gsm_hard", 100), ("strategyqa", 100)],
}

# The equal-token row against sc@10: softreason with sc@10's sample count (one name, used by
# the planner and the report alike).
SR_AT_SC10 = "sr@10"

# Methods named by a number: sc@<N> samples; sr@<N> softreason candidates (N/k full rounds).
PATTERNS = ("sc@<N>", "sr@<N>")
K = SoftReasonConfig.k  # candidates per round, the default every sr@<N> is counted in


def method(name: str) -> Method:
    """The method called ``name`` (a fixed one, or ``sc@<N>`` / ``sr@<N>``); ValueError naming
    the allowed ones otherwise."""
    if name in METHODS:
        return METHODS[name]
    number = re.fullmatch(r"(sc@|sr@)([1-9][0-9]*)", name)
    if number and number.group(1) == "sc@":
        n = int(number.group(2))
        return Method(name, "softreason", {"search": "sc", "n": n, "temperature": 0.6},
                      f"self-consistency, {n} samples at T=0.6, majority vote")
    if number and int(number.group(2)) % K == 0:
        rounds = int(number.group(2)) // K
        # Exactly sc@N's sample count, so about sc@N's tokens on every problem, not just on
        # average: a token_budget of sc@10's mean could not get there (rounds come in fives and
        # long-answer problems fit one), and the early stops would end most searches sooner.
        return Method(name, "softreason", {"min_rounds": rounds, "max_rounds": rounds},
                      f"the full method with exactly {rounds * K} candidates ({rounds} rounds "
                      f"of {K}, early stops off)")
    if number:
        raise ValueError(f"method {name!r}: sr@<N> needs N a multiple of k={K} (whole rounds)")
    raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}, or "
                     f"{' / '.join(PATTERNS)} with a whole number >= 1")


def equal_token_methods(softreason_tokens: float, sc10_tokens: float) -> tuple[str, str]:
    """(``sc@N`` whose generated tokens match ``softreason``'s per-problem mean, ``sr@10``):
    the two equal-token comparisons, ``softreason`` against ``sc@N`` and ``sr@10`` against
    ``sc@10``. One sc sample costs about a tenth of sc@10's tokens, so
    N = softreason / (sc@10 / 10)."""
    if not (softreason_tokens > 0 and sc10_tokens > 0):
        raise ValueError(f"token means must be > 0; got softreason {softreason_tokens!r}, "
                         f"sc@10 {sc10_tokens!r}")
    n = max(1, round(softreason_tokens / (sc10_tokens / 10)))
    return f"sc@{n}", SR_AT_SC10
