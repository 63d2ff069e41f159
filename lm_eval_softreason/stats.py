"""The per-request cost record, and the string type that carries it through lm-eval."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class RequestStats:
    """What one ``generate_until`` request cost and found.

    Token counts are exact: ``prompt_tokens`` are positions actually prefilled (each prompt once,
    plus every verifier prompt), ``candidate_tokens``/``verifier_tokens`` are tokens generated.
    """

    search: str = ""
    prompt_tokens: int = 0
    candidate_tokens: int = 0
    verifier_tokens: int = 0
    forward_passes: int = 0
    candidates: int = 0
    rounds: int = 0
    stop_reason: str = ""
    candidate_answers: list[Any] = field(default_factory=list)
    verifier_answers: list[Any] = field(default_factory=list)
    verdict_rounds: list[int] = field(default_factory=list)  # round of each verifier answer
    forced_verdicts: int = 0  # verifier answers read from a forced "Answer:" line
    rewards: list[float] = field(default_factory=list)
    distinct_answers_per_round: list[int] = field(default_factory=list)
    answer: Any = None
    bo_fallbacks: int = 0
    decode_s: float = 0.0
    verify_s: float = 0.0
    bo_s: float = 0.0
    wall_s: float = 0.0
    truncated: bool = False
    error: str | None = None
    config_fingerprint: str = ""

    @property
    def gen_tokens(self) -> int:
        return self.candidate_tokens + self.verifier_tokens

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["gen_tokens"] = self.gen_tokens
        return d


class GenerationResult(str):
    """The returned text, with the request's stats attached as ``.stats`` (a plain dict).

    lm-eval passes this object through ``take_first``/``majority_vote`` filters and its
    request cache unchanged, so task metrics can read the cost. ``type(result)(gold)`` is
    called by lm-eval on targets, so it must also build from a plain string.
    """

    stats: dict[str, Any] | None

    def __new__(cls, text: str = "", stats: dict[str, Any] | None = None) -> "GenerationResult":
        obj = super().__new__(cls, text)
        obj.stats = stats
        return obj

    def __reduce__(self):  # keep stats through pickling (lm-eval's sqlite cache)
        return (GenerationResult, (str(self), self.stats))
