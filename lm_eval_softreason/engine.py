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
from transformers.cache_utils import DynamicLayer


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

    def add(self, other: "EngineStats") -> None:
        """Add ``other``'s counts to these, field by field."""
        for key, value in other.__dict__.items():
            setattr(self, key, getattr(self, key) + value)

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


@dataclass
class DecodeCall:
    """One caller's batch of rows from one prefix: the arguments of ``DecodingEngine.decode``.
    ``stats``, if given, receives this call's own cost (for callers sharing a merged batch)."""

    prefix: Prefix
    soft_embeds: torch.Tensor | None = None
    until: list[str] | None = None
    max_new_tokens: int = 256
    n: int = 1
    sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    stats: EngineStats | None = None


class _Group:
    """The decoding state of one DecodeCall inside ``decode_many``."""

    def __init__(self, call: DecodeCall, engine: "DecodingEngine") -> None:
        self.call, self.engine = call, engine
        self.until = [u for u in (call.until or []) if u]
        self.rows_n = call.soft_embeds.shape[0] if call.soft_embeds is not None else call.n
        self.candidates = [_Row() for _ in range(max(0, self.rows_n))]
        # nothing to generate: the call finishes empty without touching the model
        self.rows = self.candidates if call.max_new_tokens > 0 and self.rows_n > 0 else []
        self.generator = (torch.Generator(device="cpu").manual_seed(call.seed)
                          if call.sample else None)
        self.forward_passes = self.soft_positions = self.generated = 0
        self.cache = self.first_logits = None

    def start(self) -> None:
        engine, call = self.engine, self.call
        cache = copy.deepcopy(call.prefix.cache)
        if self.rows_n > 1:
            cache.batch_repeat_interleave(self.rows_n)
        if call.soft_embeds is not None:
            inputs = call.soft_embeds.to(engine.device, engine.model.dtype).unsqueeze(1)
            self.first_logits, cache = engine._forward(cache, inputs_embeds=inputs)
            engine.stats.soft_positions += self.rows_n
            self.soft_positions, self.forward_passes = self.rows_n, 1
        else:
            self.first_logits = call.prefix.next_logits.unsqueeze(0).expand(self.rows_n, -1)
        self.cache = cache

    def step(self, r: int, token: int, logprobs: torch.Tensor) -> bool:
        """Append ``token`` to row ``r``; True while the row goes on."""
        row = self.rows[r]
        if token in self.engine.eos_ids:
            row.stop_reason = "eos"
            return False
        row.token_ids.append(token)
        row.logprobs.append(float(logprobs[token]))
        self.engine.stats.generated_tokens += 1
        self.generated += 1
        if self.until and self.engine._hit_until(row, self.until):
            row.stop_reason = "until"
        elif len(row.token_ids) >= self.call.max_new_tokens:
            row.stop_reason = "max_tokens"
        else:
            return True
        return False

    def account(self, elapsed: float) -> None:
        stats = self.call.stats
        if stats is not None:
            stats.soft_positions += self.soft_positions
            stats.generated_tokens += self.generated
            stats.forward_passes += self.forward_passes
            stats.decode_s += elapsed

    def finish(self) -> list[Candidate]:
        return [self.engine._finish(row, self.until) for row in self.candidates]


def _merge_left_padded(caches: list, rows: list[int]) -> tuple[object, torch.Tensor, torch.Tensor]:
    """One batch from several calls' caches of different lengths: each is left-padded to the
    longest, the pads masked out, and each row keeps its own positions (as in batched HF
    generation). Returns (cache, attention mask over the cache, next position of each row)."""
    from transformers import DynamicCache

    if not all(type(c) is DynamicCache and all(type(layer).__name__ == "DynamicLayer"
                                               for layer in c.layers) for c in caches):
        kinds = sorted({type(c).__name__ for c in caches})
        raise NotImplementedError(f"cross-request batching needs plain DynamicCache caches "
                                  f"(got {', '.join(kinds)} or non-dynamic layers)")
    lengths = [c.get_seq_length() for c in caches]
    longest = max(lengths)
    merged = DynamicCache()
    for li in range(len(caches[0].layers)):
        keys, values = [], []
        for cache, length in zip(caches, lengths):
            pad = (0, 0, longest - length, 0)  # left-pad the sequence axis (dim -2)
            keys.append(torch.nn.functional.pad(cache.layers[li].keys, pad))
            values.append(torch.nn.functional.pad(cache.layers[li].values, pad))
        merged.update(torch.cat(keys), torch.cat(values), li)
    device = caches[0].layers[0].keys.device
    mask = torch.cat([torch.cat([torch.zeros(n, longest - length, dtype=torch.long),
                                 torch.ones(n, length, dtype=torch.long)], dim=1)
                      for length, n in zip(lengths, rows)]).to(device)
    positions = torch.tensor([length for length, n in zip(lengths, rows) for _ in range(n)],
                             device=device)
    return merged, mask, positions


class _PreallocatedLayer(DynamicLayer):
    """A KV-cache layer whose keys and values live in buffers sized once for the whole decode.

    transformers' ``DynamicLayer`` appends by ``torch.cat``: every step copies the layer's whole
    cache into a fresh allocation, so a decode costs O(length^2) copying, and on CPU each
    large allocation is a fresh mmap whose pages fault in. Here a step writes one position in
    place and the model sees a view of the filled part: the same shapes and values, so the
    same tokens (the SmolLM2 regression eval's search: 5:51 -> 4:58 on 2 AVX2 cores).
    """

    @classmethod
    def install(cls, cache: object, extra: int) -> None:
        """Swap every plain layer of ``cache`` for one with room for ``extra`` more positions
        (other layer kinds, e.g. sliding-window ones, keep their own update rule)."""
        for i, layer in enumerate(getattr(cache, "layers", [])):
            if type(layer) is DynamicLayer and layer.get_seq_length() > 0:
                cache.layers[i] = cls.from_layer(layer, extra)

    @classmethod
    def from_layer(cls, layer: object, extra: int) -> "_PreallocatedLayer":
        new = cls()
        new.device, new.is_initialized = layer.device, True
        new._fill(layer.keys, layer.values, extra)
        return new

    def _fill(self, keys: torch.Tensor, values: torch.Tensor, extra: int) -> None:
        b, h, n, d = keys.shape
        self._k = keys.new_empty(b, h, n + extra, d)
        self._v = values.new_empty(b, values.shape[1], n + extra, values.shape[3])
        self._k[:, :, :n].copy_(keys)
        self._v[:, :, :n].copy_(values)
        self._n = n
        self._expose()

    def _expose(self) -> None:
        """What the model reads: views of the filled part of the buffers."""
        self.keys, self.values = self._k[:, :, :self._n], self._v[:, :, :self._n]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        new = key_states.shape[-2]
        if self._n + new > self._k.shape[-2]:  # past the planned room: grow once, by half again
            self._fill(self.keys, self.values, max(new, self._n // 2))
        self._k[:, :, self._n:self._n + new].copy_(key_states)
        self._v[:, :, self._n:self._n + new].copy_(value_states)
        self._n += new
        self._expose()
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._k, self._v = self._k[indices], self._v[indices]
        self._expose()

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._k = self._k.repeat_interleave(repeats, dim=0)
        self._v = self._v.repeat_interleave(repeats, dim=0)
        self._expose()


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """Every id that ends a row: the generation config's EOS ids and the tokenizer's."""
    eos = model.generation_config.eos_token_id if model.generation_config else None
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return frozenset(int(e) for e in ids)


class DecodingEngine:
    """Prefill once, decode many batches; see the module docstring."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.stats = EngineStats()
        self.eos_ids = eos_token_ids(model, tokenizer)
        # transformers >= 5.2x renamed the KV-cache argument `past_key_values` to `cache`
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        # prefill needs the last position's logits only: a 1,200-token verifier prompt on a
        # 151,936-token vocabulary would otherwise compute 1,200 rows of logits to use one
        self._last_logits_only = {"logits_to_keep": 1} if "logits_to_keep" in params else {}

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
        logits, cache = self._forward(None, input_ids=ids, **self._last_logits_only)
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
        call = DecodeCall(prefix, soft_embeds, until=until, max_new_tokens=max_new_tokens, n=n,
                          sample=sample, temperature=temperature, top_p=top_p, seed=seed)
        return self.decode_many([call])[0]

    @torch.no_grad()
    def decode_many(self, calls: list["DecodeCall"]) -> list[list[Candidate]]:
        """Decode several callers' batches (different prefixes) together, one forward pass per
        step for all their rows: cross-request batching. One call runs exactly as ``decode``;
        several are merged into one left-padded batch (masked pads, per-row positions), which
        needs every prefix cache to be a plain ``DynamicCache`` (else NotImplementedError).
        Each call's ``stats``, if given, gets its own share of the cost."""
        start = time.perf_counter()
        groups = [_Group(call, self) for call in calls]
        live = [g for g in groups if g.rows]
        if live:
            for g in live:
                g.start()  # copy the prefix cache; the soft position runs per call
            if len(live) == 1:
                cache, mask, positions = live[0].cache, None, None
            else:
                cache, mask, positions = _merge_left_padded([g.cache for g in live],
                                                            [g.rows_n for g in live])
            # room for the longest call's tokens, allocated once (see _PreallocatedLayer)
            _PreallocatedLayer.install(cache, max(g.call.max_new_tokens for g in live))
            logits = torch.cat([g.first_logits for g in live])
            active = [(g, r) for g in live for r in range(g.rows_n)]
            while True:
                chosen = self._choose_rows(logits, active)
                logprobs = torch.log_softmax(logits, dim=-1)
                still: list[int] = []
                for pos, (g, r) in enumerate(active):
                    if g.step(r, int(chosen[pos]), logprobs[pos]):
                        still.append(pos)
                if not still:
                    break
                if len(still) < len(active):  # drop finished rows: they cost no more compute
                    keep = torch.tensor(still, device=self.device)
                    cache.batch_select_indices(keep)
                    chosen = chosen[still]
                    active = [active[p] for p in still]
                    if mask is not None:
                        mask, positions = mask[keep], positions[keep]
                inputs = {"input_ids": chosen.view(-1, 1).to(self.device)}
                if mask is not None:
                    mask = torch.cat([mask, mask.new_ones(len(active), 1)], dim=1)
                    inputs.update(attention_mask=mask, position_ids=positions.view(-1, 1))
                    positions = positions + 1
                logits, cache = self._forward(cache, **inputs)
                for g in {g for g, _ in active}:  # every call that took part in this pass
                    g.forward_passes += 1
        elapsed = time.perf_counter() - start
        self.stats.decode_s += elapsed
        for g in groups:
            g.account(elapsed)
        return [g.finish() for g in groups]

    def _choose_rows(self, logits: torch.Tensor, active: list[tuple["_Group", int]]) -> torch.Tensor:
        """Next token of every active row; a sampling call draws from its own generator over
        its own rows only, so its draws do not depend on who else is in the batch."""
        chosen = logits.argmax(dim=-1).cpu()
        spans: dict[_Group, list[int]] = {}
        for pos, (g, _) in enumerate(active):
            if g.call.sample:
                spans.setdefault(g, []).append(pos)
        for g, rows in spans.items():
            c = g.call
            chosen[rows] = self._choose(logits[rows], True, c.temperature, c.top_p, g.generator)
        return chosen

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
        """Whether the row's text now holds a stop string, decoding only its last tokens.

        Called after every appended token, so a stop string first shows up when the newest
        token completes it: it lies in the text of the last few tokens, and decoding those
        alone (the idea of lm-eval's ``MultiTokenEOSCriteria``) keeps a step's cost fixed
        instead of growing with the row. Every token but a skipped special one adds at least
        one byte, so a stop string of B bytes spans at most B such tokens; two more keep the
        window's first token, which can decode differently on its own (half a character, a
        SentencePiece leading space), clear of it. Same answer as decoding the whole row
        (tests/test_engine.py), which ``_finish`` does once to cut the text.
        """
        special = getattr(self, "_special_ids", None)
        if special is None:
            special = self._special_ids = frozenset(self.tokenizer.all_special_ids)
        needed = max(len(u.encode("utf-8")) for u in until) + 2
        start = len(row.token_ids)
        while start > 0 and needed > 0:
            start -= 1
            needed -= row.token_ids[start] not in special
        tail = self.tokenizer.decode(row.token_ids[start:], skip_special_tokens=True)
        return any(u in tail for u in until)

    def _finish(self, row: _Row, until: list[str]) -> Candidate:
        text = candidate_text(self.tokenizer, row.token_ids, until)
        return Candidate(text, row.token_ids, row.logprobs, row.stop_reason or "max_tokens")


def candidate_text(tokenizer: PreTrainedTokenizerBase, token_ids: list[int],
                   until: list[str]) -> str:
    """A row's text: its tokens decoded (special tokens skipped), cut before the first stop
    string. Every engine makes a candidate's text this way."""
    text = tokenizer.decode(token_ids, skip_special_tokens=True)
    cuts = [text.find(u) for u in until if u and u in text]
    return text[: min(cuts)] if cuts else text
