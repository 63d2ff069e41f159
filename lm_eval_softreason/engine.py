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


class _Layout:
    """Where a running batch's rows live in its KV buffers: rows ``[0, rows)`` are live, every
    row writes its next position at column ``head``, and the model reads columns
    ``[first, head)`` (a row's own positions start at its start column; the rest is masked)."""

    def __init__(self) -> None:
        self.rows = self.first = self.head = 0


class _SlotLayer(DynamicLayer):
    """A KV-cache layer over fixed buffers (rows x heads x columns x head_dim) shared in shape
    with every other layer of a ``RunningBatch``: a decode step writes column ``head`` of every
    live row in place, and the model reads a view, so rows can join and leave between steps
    without copying the others."""

    def __init__(self, layout: _Layout, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self.layout, self._k, self._v = layout, keys, values
        self.device, self.is_initialized = keys.device, True
        self.expose()

    def expose(self) -> None:
        lay = self.layout
        self.keys = self._k[:lay.rows, :, lay.first:lay.head]
        self.values = self._v[:lay.rows, :, lay.first:lay.head]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        lay = self.layout
        self._k[:lay.rows, :, lay.head].copy_(key_states[:, :, -1])
        self._v[:lay.rows, :, lay.head].copy_(value_states[:, :, -1])
        return (self._k[:lay.rows, :, lay.first:lay.head + 1],
                self._v[:lay.rows, :, lay.first:lay.head + 1])


class RunningBatch:
    """Continuous batching for the HF engine: calls join and leave one running batch at any step.

    Decoding a set of calls together to the end makes a caller whose rows end early wait for the
    longest row of everyone's; here a finished call is handed back at once (``step`` returns
    it) and the caller's next call joins the running rows (``admit``).
    Every step is one forward pass over all live rows. A soft row's first input is its soft
    vector, taken in the same pass as the other rows' tokens; a plain row starts from its
    prefix's logits. Rows live in slots of fixed KV buffers (``_SlotLayer``): a row that ends is
    replaced by the last one (one row copied, not the batch), a joining row's prefix is written
    once, and the buffers are reallocated only when rows, a longer prefix or the columns outgrow
    them. Needs plain ``DynamicCache`` prefixes; a call with another cache kind runs alone.
    """

    def __init__(self, engine: "DecodingEngine") -> None:
        self.engine = engine
        self.layout = _Layout()
        self.layers: list[_SlotLayer] = []
        self.cache: object | None = None
        self.owner: list[tuple[_Group, int]] = []  # per slot: (call, row)
        self.starts: list[int] = []  # per slot: the row's first column
        self.soft: list[torch.Tensor | None] = []  # per slot: the soft input still to run
        self.logits: torch.Tensor | None = None  # per slot: the next-token logits
        self.keys: dict[_Group, object] = {}
        self.admitted_at: dict[_Group, float] = {}
        self.longest_prefix = 0  # a rebuild puts the head past it: the next such prompt fits
        self._ready: list[tuple[object, list[Candidate] | BaseException]] = []

    def __len__(self) -> int:
        return self.layout.rows

    def admit(self, key: object, call: DecodeCall) -> None:
        """Queue ``call``; its rows take part from the next ``step``, which hands back
        ``(key, candidates)`` once they have all ended (or ``(key, exception)``)."""
        group = _Group(call, self.engine)
        if not group.rows:
            self._ready.append((key, group.finish()))
            return
        layers = getattr(call.prefix.cache, "layers", None)
        if not layers or not all(type(layer) is DynamicLayer and layer.get_seq_length() > 0
                                 for layer in layers):
            self._ready.append((key, self._alone(call)))
            return
        try:
            self._place(group, layers)
        except Exception as exc:  # this call's own problem (e.g. a malformed soft vector)
            self._ready.append((key, exc))
            return
        self.keys[group] = key
        self.admitted_at[group] = time.perf_counter()

    def _alone(self, call: DecodeCall) -> list[Candidate] | BaseException:
        try:
            return self.engine.decode_many([call])[0]
        except Exception as exc:
            return exc

    def _place(self, group: _Group, layers: list) -> None:
        lay, m = self.layout, group.rows_n
        call, length = group.call, layers[0].get_seq_length()
        soft = None
        if call.soft_embeds is not None:
            soft = call.soft_embeds.to(self.engine.device, self.engine.model.dtype)
            if soft.shape != (m, self.engine.hidden_size):
                raise ValueError(f"soft_embeds must be rows x {self.engine.hidden_size}, got "
                                 f"{tuple(soft.shape)}")
        if self.layers and len(layers) != len(self.layers):
            raise ValueError(f"prefix has {len(layers)} cache layers, the batch {len(self.layers)}")
        rows_cap = self.layers[0]._k.shape[0] if self.layers else 0
        cols_cap = self.layers[0]._k.shape[2] if self.layers else 0
        self.longest_prefix = max(self.longest_prefix, length)
        if (lay.rows + m > rows_cap or length > lay.head or lay.head + 1 > cols_cap):
            self._relayout(layers, head=max(self.longest_prefix, lay.head - lay.first),
                           rows=max(lay.rows + m, rows_cap),
                           room=call.max_new_tokens + 1)
        start, rows = lay.head - length, slice(lay.rows, lay.rows + m)
        for layer, prefix in zip(self.layers, layers):
            layer._k[rows, :, start:lay.head] = prefix.keys[0]
            layer._v[rows, :, start:lay.head] = prefix.values[0]
        next_logits = call.prefix.next_logits
        first_logits = (next_logits.unsqueeze(0).expand(m, -1) if soft is None
                        else next_logits.new_zeros(m, next_logits.shape[-1]))  # not read
        self.logits = (first_logits.clone() if self.logits is None or lay.rows == 0
                       else torch.cat([self.logits[:lay.rows], first_logits.to(self.logits)]))
        self.owner += [(group, r) for r in range(m)]
        self.starts += [start] * m
        self.soft += [soft[r] for r in range(m)] if soft is not None else [None] * m
        lay.rows += m
        lay.first = min(self.starts)
        self._expose()

    def _relayout(self, layers: list, head: int, rows: int, room: int) -> None:
        """Fresh zeroed buffers (pads must be finite: a masked NaN still poisons attention)
        with the live rows' columns moved so that ``head`` is the next write column."""
        lay = self.layout
        span = lay.head - lay.first
        room = max([room] + [g.call.max_new_tokens - len(g.rows[r].token_ids) + 1
                             for g, r in self.owner])
        new = []
        for i, ref in enumerate(layers):
            shape = (rows, ref.keys.shape[1], head + room, ref.keys.shape[3])
            k = ref.keys.new_zeros(shape)
            v = ref.values.new_zeros(shape[:3] + (ref.values.shape[3],))
            if lay.rows:
                old = self.layers[i]
                k[:lay.rows, :, head - span:head] = old._k[:lay.rows, :, lay.first:lay.head]
                v[:lay.rows, :, head - span:head] = old._v[:lay.rows, :, lay.first:lay.head]
            new.append(_SlotLayer(lay, k, v))
        shift = head - lay.head
        self.starts = [s + shift for s in self.starts]
        lay.head, lay.first = head, head - span
        self.layers = new
        from transformers import DynamicCache

        self.cache = DynamicCache()
        self.cache.layers = list(new)
        self._expose()  # the layers were made before the layout moved

    def _expose(self) -> None:
        for layer in self.layers:
            layer.expose()

    def _drop(self, slots: list[int]) -> None:
        """Free ``slots``: each is refilled by the current last row (one row copied)."""
        lay = self.layout
        for p in sorted(slots, reverse=True):
            last = lay.rows - 1
            if p != last:
                cols = slice(min(self.starts[last], self.starts[p]), lay.head)
                for layer in self.layers:
                    layer._k[p, :, cols] = layer._k[last, :, cols]
                    layer._v[p, :, cols] = layer._v[last, :, cols]
                self.logits[p] = self.logits[last]
                for lst in (self.owner, self.starts, self.soft):
                    lst[p] = lst[last]
            for lst in (self.owner, self.starts, self.soft):
                lst.pop()
            lay.rows -= 1
        lay.first = min(self.starts) if self.starts else lay.head
        self._expose()

    @torch.no_grad()
    def step(self) -> list[tuple[object, list[Candidate] | BaseException]]:
        """One decode step for every live row; returns the calls that have ended since the
        last step, in the order they were admitted."""
        ready, self._ready = self._ready, []
        if not self.layout.rows:
            return ready
        try:
            ended = self._advance()
        except Exception:  # a failed pass: every call in it reruns alone (own rows or error)
            ended = list(self.keys)
            calls = [(self.keys[g], g.call) for g in ended]
            self._reset()
            return ready + [(key, self._alone(call)) for key, call in calls]
        now = time.perf_counter()
        for g in ended:
            g.account(now - self.admitted_at.pop(g))
            ready.append((self.keys.pop(g), g.finish()))
        return ready

    def _reset(self) -> None:
        self.owner, self.starts, self.soft = [], [], []
        self.keys.clear()
        self.admitted_at.clear()
        self.layout.rows = 0
        self.layout.first = self.layout.head
        self._expose()

    def _advance(self) -> list[_Group]:
        engine, lay = self.engine, self.layout
        started = time.perf_counter()
        choosing = [p for p in range(lay.rows) if self.soft[p] is None]
        ended_rows: list[int] = []
        if choosing:
            logits = self.logits[choosing]
            tokens = _choose_rows(logits, [self.owner[p] for p in choosing])
            logprobs = torch.log_softmax(logits, dim=-1)
            for i, p in enumerate(choosing):
                g, r = self.owner[p]
                if not g.step(r, int(tokens[i]), logprobs[i]):
                    ended_rows.append(p)
        live_before = {g for g, _ in self.owner}
        self._drop(ended_rows)
        live = {g for g, _ in self.owner}
        ended = sorted(live_before - live, key=list(self.keys).index)
        if not lay.rows:
            engine.stats.decode_s += time.perf_counter() - started
            return ended
        if lay.head >= self.layers[0]._k.shape[2]:  # out of columns: compact, with new room
            self._relayout(self.layers, head=max(self.longest_prefix, lay.head - lay.first),
                           rows=self.layers[0]._k.shape[0], room=1)
        # every row's input this step: its chosen token's embedding, or its soft vector
        ids = [g.rows[r].token_ids[-1] if self.soft[p] is None else 0
               for p, (g, r) in enumerate(self.owner)]
        embeds = engine.model.get_input_embeddings()(torch.tensor(ids, device=engine.device))
        soft_slots = [p for p in range(lay.rows) if self.soft[p] is not None]
        for p in soft_slots:
            embeds[p] = self.soft[p]
        starts = torch.tensor(self.starts, device=engine.device)
        columns = torch.arange(lay.first, lay.head + 1, device=engine.device)
        mask = (columns.unsqueeze(0) >= starts.unsqueeze(1)).long()
        positions = (lay.head - starts).view(-1, 1)
        self.logits, _ = engine._forward(self.cache, inputs_embeds=embeds.unsqueeze(1),
                                         attention_mask=mask, position_ids=positions)
        lay.head += 1
        self._expose()
        for p in soft_slots:
            g, _ = self.owner[p]
            g.soft_positions += 1
            self.soft[p] = None
        engine.stats.soft_positions += len(soft_slots)
        for g in live:
            g.forward_passes += 1
        engine.stats.decode_s += time.perf_counter() - started
        return ended

def _choose_rows(logits: torch.Tensor, rows: list[tuple[_Group, int]]) -> torch.Tensor:
    """The next token of each of ``rows`` (``(call, row)``, one per logits row): greedy argmax,
    except a sampling call's rows, drawn from its own generator in row order, so its draws do
    not depend on who else is in the batch or where its rows sit."""
    chosen = logits.argmax(dim=-1).cpu()
    spans: dict[_Group, list[int]] = {}
    for i, (g, r) in sorted(enumerate(rows), key=lambda item: item[1][1]):
        if g.call.sample:
            spans.setdefault(g, []).append(i)
    for g, idx in spans.items():
        c = g.call
        chosen[idx] = DecodingEngine._choose(logits[idx], True, c.temperature, c.top_p,
                                             g.generator)
    return chosen


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """Every id that ends a row: the generation config's EOS ids and the tokenizer's."""
    eos = model.generation_config.eos_token_id if model.generation_config else None
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return frozenset(int(e) for e in ids)


class Decoder:
    """``decode`` as a one-call ``decode_many``: the same for every engine (HF and vLLM)."""

    def decode_many(self, calls: list[DecodeCall]) -> list[list[Candidate]]:
        raise NotImplementedError

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


class DecodingEngine(Decoder):
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

    def open_batch(self) -> RunningBatch:
        """A continuous batch on this engine (``RunningBatch``), as lockstep's scheduler uses."""
        return RunningBatch(self)

    @torch.no_grad()
    def decode_many(self, calls: list["DecodeCall"]) -> list[list[Candidate]]:
        """Decode several callers' batches (different prefixes) together, one forward pass per
        step for all their rows: cross-request batching. One call runs on its own prefix cache
        (any cache kind); several go through a ``RunningBatch`` until the last row ends (a call
        whose cache it cannot hold runs alone). Each call's ``stats``, if given, gets its own
        share of the cost."""
        if len(calls) > 1:
            batch, out = RunningBatch(self), {}
            for i, call in enumerate(calls):
                batch.admit(i, call)
            while len(out) < len(calls):
                for i, reply in batch.step():
                    if isinstance(reply, BaseException):
                        raise reply
                    out[i] = reply
            return [out[i] for i in range(len(calls))]
        start = time.perf_counter()
        g = _Group(calls[0], self)
        if g.rows:
            g.start()  # copy the prefix cache; the soft position runs here
            cache = g.cache
            # room for the call's tokens, allocated once (see _PreallocatedLayer)
            _PreallocatedLayer.install(cache, g.call.max_new_tokens)
            logits, active = g.first_logits, [(g, r) for r in range(g.rows_n)]
            while True:
                chosen = _choose_rows(logits, active)
                logprobs = torch.log_softmax(logits, dim=-1)
                still = [pos for pos, (_, r) in enumerate(active)
                         if g.step(r, int(chosen[pos]), logprobs[pos])]
                if not still:
                    break
                if len(still) < len(active):  # drop finished rows: they cost no more compute
                    cache.batch_select_indices(torch.tensor(still, device=self.device))
                    chosen = chosen[still]
                    active = [active[p] for p in still]
                logits, cache = self._forward(cache, input_ids=chosen.view(-1, 1).to(self.device))
                g.forward_passes += 1
        elapsed = time.perf_counter() - start
        self.stats.decode_s += elapsed
        g.account(elapsed)
        return [g.finish()]

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
