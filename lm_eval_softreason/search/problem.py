"""What a search gets (one request, already tokenised, and an engine to decode it with) and
what it gives back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..stats import RequestStats

if TYPE_CHECKING:
    import torch

    from ..engine import Candidate, EngineStats, Prefix


@runtime_checkable
class Engine(Protocol):
    """The decoding engine as a search uses it. ``engine.DecodingEngine`` implements it, and
    so does ``lockstep.EngineView``, one search's handle on an engine shared by several."""

    tokenizer: Any
    model: Any
    eos_ids: frozenset[int]
    stats: EngineStats  # this caller's running cost

    @property
    def hidden_size(self) -> int: ...

    def embed(self, token_ids: list[int]) -> torch.Tensor: ...

    def embedding_rms(self) -> float: ...

    def prefill(self, prompt_ids: list[int]) -> Prefix: ...

    def decode(self, prefix: Prefix, soft_embeds: torch.Tensor | None = None, *,
               until: list[str] | None = None, max_new_tokens: int = 256, n: int = 1,
               sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
               seed: int = 0) -> list[Candidate]: ...


def protocol_members(protocol: type) -> frozenset[str]:
    """The public attribute and method names a Protocol class declares."""
    names = {*vars(protocol), *getattr(protocol, "__annotations__", {})}
    return frozenset(n for n in names if not n.startswith("_"))


@dataclass
class Problem:
    """One ``generate_until`` request as the search sees it."""

    prompt_ids: list[int]  # the full prompt (chat template and gen_prefix applied)
    question: str  # the bare question, for the verifier prompt
    until: list[str]
    max_gen_toks: int
    seed: int  # per-request seed, derived from (config seed, request text)
    answer_type: str = "auto"
    # turns a verifier instruction (user-turn text) into prompt token ids, in the chat template
    # when this request's own prompt is in it; supplied by the lm-eval adapter
    render: Callable[[str], list[int]] = field(default=lambda text: [])


@dataclass
class SearchOutcome:
    """The chosen text, its cost record, and (for trace_dir) everything the search saw."""

    text: str
    stats: RequestStats
    trace: dict[str, Any] = field(default_factory=dict)
