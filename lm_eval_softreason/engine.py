"""Soft-token batched decoding with a reused prefix cache, and exact token accounting.

The engine's only job: given a prompt, prefill it once (``prefill``), then decode batches of
continuations from that cached prefix (``decode``). In soft mode each row's first input after
the prompt is a caller-given vector (the Soft Reasoning "soft token") instead of a token
embedding; in plain mode rows start from the prompt's own next-token distribution (greedy, or
sampled for self-consistency). Works for any Hugging Face causal LM with a KV cache.
"""

from __future__ import annotations

import copy
import inspect
import time
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class Candidate:
    """One decoded continuation."""

    text: str  # decoded text, cut before the first `until` string
    token_ids: list[int]  # generated tokens (EOS excluded)
    logprobs: list[float]  # log-probability of each generated token under the model
    stop_reason: str  # "eos" | "until" | "max_tokens"

    @property
    def coherence(self) -> float:
        """Mean token probability of the generated tokens (0.0 for an empty continuation)."""
        if not self.logprobs:
            return 0.0
        return float(torch.tensor(self.logprobs, dtype=torch.float64).exp().mean())


@dataclass
class EngineStats:
    """Running totals; the caller snapshots them around a request to get its cost."""

    prefill_tokens: int = 0  # prompt positions actually run through the model
    soft_positions: int = 0  # soft-token input positions (one per soft candidate)
    generated_tokens: int = 0  # tokens appended to candidates (finished rows add none)
    forward_passes: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0

    def copy(self) -> "EngineStats":
        return copy.copy(self)

    def since(self, start: "EngineStats") -> "EngineStats":
        """The difference ``self - start``, field by field."""
        return EngineStats(**{k: getattr(self, k) - getattr(start, k) for k in self.__dict__})


@dataclass
class Prefix:
    """A prefilled prompt: its KV cache (batch 1) and the logits for the next position."""

    prompt_ids: list[int]
    cache: object
    next_logits: torch.Tensor  # (vocab,)

    @property
    def greedy_token(self) -> int:
        return int(self.next_logits.argmax())


@dataclass
class _Row:
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    stop_reason: str | None = None
    text: str = ""


class DecodingEngine:
    """Prefill once, decode many batches; see the module docstring."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.stats = EngineStats()
        eos = model.generation_config.eos_token_id if model.generation_config else None
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        self.eos_ids = frozenset(int(e) for e in eos_ids)
        # transformers >= 5.2x renamed the KV-cache argument `past_key_values` to `cache`
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    def _forward(self, cache: object | None, **inputs: torch.Tensor) -> tuple[torch.Tensor, object]:
        """One forward pass; returns (last-position logits as float32, updated cache)."""
        out = self.model(**inputs, **{self._cache_arg: cache}, use_cache=True)
        self.stats.forward_passes += 1
        new_cache = out.get("cache") if out.get("cache") is not None else out.past_key_values
        return out.logits[:, -1].float(), new_cache

    @property
    def hidden_size(self) -> int:
        return self.model.get_input_embeddings().weight.shape[1]

    def embed(self, token_ids: list[int]) -> torch.Tensor:
        """Input embeddings (len x hidden) exactly as the model would compute them."""
        ids = torch.tensor(token_ids, device=self.device)
        with torch.no_grad():
            return self.model.get_input_embeddings()(ids)

    def embedding_rms(self) -> float:
        """Root-mean-square of one coordinate of the model's token embeddings (its scale)."""
        weight = self.model.get_input_embeddings().weight.detach()
        return float(weight.float().pow(2).mean().sqrt())

    @torch.no_grad()
    def prefill(self, prompt_ids: list[int]) -> Prefix:
        """Run the prompt once and keep its KV cache for every later batch of this request."""
        if not prompt_ids:
            raise ValueError("prefill needs at least one prompt token")
        start = time.perf_counter()
        ids = torch.tensor([prompt_ids], device=self.device)
        logits, cache = self._forward(None, input_ids=ids)
        self.stats.prefill_tokens += len(prompt_ids)
        self.stats.prefill_s += time.perf_counter() - start
        return Prefix(list(prompt_ids), cache, logits[0])

    @torch.no_grad()
    def decode(
        self,
        prefix: Prefix,
        soft_embeds: torch.Tensor | None = None,
        *,
        until: list[str] | None = None,
        max_new_tokens: int = 256,
        n: int = 1,
        sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> list[Candidate]:
        """Decode continuations of ``prefix`` in one batch.

        Args:
            prefix: from ``prefill``; its cache is copied, never modified, so it serves any
                number of later calls.
            soft_embeds: ``k x hidden``; row i's first input after the prompt is
                ``soft_embeds[i]``. ``None``: plain decoding of ``n`` rows.
            until: stop strings, matched on decoded text; the text is cut before the first.
            max_new_tokens: cap on generated tokens per row (the soft position is not one).
            sample: sample with ``temperature``/``top_p`` (torch generator seeded by ``seed``)
                instead of greedy argmax.
        Returns:
            one Candidate per row, in row order.
        """
        until = [u for u in (until or []) if u]
        rows_n = soft_embeds.shape[0] if soft_embeds is not None else n
        rows = [_Row() for _ in range(rows_n)]
        if max_new_tokens <= 0 or rows_n == 0:
            return [Candidate("", [], [], "max_tokens") for _ in rows]
        start = time.perf_counter()
        generator = torch.Generator(device="cpu").manual_seed(seed) if sample else None
        cache = copy.deepcopy(prefix.cache)
        if rows_n > 1:
            cache.batch_repeat_interleave(rows_n)
        if soft_embeds is not None:
            inputs = soft_embeds.to(self.device, self.model.dtype).unsqueeze(1)
            logits, cache = self._forward(cache, inputs_embeds=inputs)
            self.stats.soft_positions += rows_n
        else:
            logits = prefix.next_logits.unsqueeze(0).expand(rows_n, -1)
        active = list(range(rows_n))  # row index of each batch position
        while True:
            logprobs = torch.log_softmax(logits, dim=-1)
            chosen = self._choose(logits, sample, temperature, top_p, generator)
            still: list[int] = []
            for pos, row_i in enumerate(active):
                row, token = rows[row_i], int(chosen[pos])
                if token in self.eos_ids:
                    row.stop_reason = "eos"
                    continue
                row.token_ids.append(token)
                row.logprobs.append(float(logprobs[pos, token]))
                self.stats.generated_tokens += 1
                if until and self._hit_until(row, until):
                    row.stop_reason = "until"
                elif len(row.token_ids) >= max_new_tokens:
                    row.stop_reason = "max_tokens"
                else:
                    still.append(pos)
            if not still:
                break
            if len(still) < len(active):  # drop finished rows: they cost no more compute
                cache.batch_select_indices(torch.tensor(still, device=self.device))
                chosen = chosen[still]
                active = [active[p] for p in still]
            logits, cache = self._forward(cache, input_ids=chosen.view(-1, 1).to(self.device))
        self.stats.decode_s += time.perf_counter() - start
        return [self._finish(row, until) for row in rows]

    @staticmethod
    def _choose(
        logits: torch.Tensor,
        sample: bool,
        temperature: float,
        top_p: float,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        if not sample:
            return logits.argmax(dim=-1).cpu()
        probs = torch.softmax(logits.cpu() / temperature, dim=-1)
        if top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            # keep the smallest prefix whose mass reaches top_p (always >= 1 token)
            drop = sorted_p.cumsum(-1) - sorted_p >= top_p
            sorted_p[drop] = 0.0
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        return torch.multinomial(probs, 1, generator=generator).view(-1)

    def _hit_until(self, row: _Row, until: list[str]) -> bool:
        row.text = self.tokenizer.decode(row.token_ids, skip_special_tokens=True)
        return any(u in row.text for u in until)

    def _finish(self, row: _Row, until: list[str]) -> Candidate:
        text = self.tokenizer.decode(row.token_ids, skip_special_tokens=True)
        cuts = [text.find(u) for u in until if u in text]
        if cuts:
            text = text[: min(cuts)]
        return Candidate(text, row.token_ids, row.logprobs, row.stop_reason or "max_tokens")
