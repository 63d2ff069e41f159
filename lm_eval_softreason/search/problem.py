"""What a search gets (one request, already tokenised) and what it gives back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..stats import RequestStats


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
