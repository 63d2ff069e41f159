"""The decoding engine: cached prefix, soft first position, stops, accounting, determinism."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import DEVICE
from lm_eval_softreason.engine import DecodingEngine

PROMPT = "Question: Tom has 3 apples. He buys 4 more apples. How many apples does Tom have now?"


def _peaked(model_dir, seed: int = 0):
    """The tiny random model with larger weights, so greedy choices are not near-ties."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    # never emit EOS unless a test asks for it, so lengths are predictable
    model.generation_config.eos_token_id = tok.eos_token_id
    return model.to(DEVICE), tok


@pytest.fixture(scope="module", params=["llama", "qwen2", "gpt2"])
def engine(request, tiny_model_dir):
    model, tok = _peaked(tiny_model_dir(request.param))
    return DecodingEngine(model, tok)


@pytest.fixture
def prompt_ids(engine):
    return engine.tokenizer(PROMPT)["input_ids"]


def _generate(engine, ids, n):
    out = engine.model.generate(
        torch.tensor([ids], device=engine.device), max_new_tokens=n, do_sample=False, min_new_tokens=n,
        pad_token_id=engine.tokenizer.pad_token_id,
    )
    return out[0, len(ids):].tolist()


def test_cached_prefix_greedy_matches_full_generate(engine, prompt_ids):
    prefix = engine.prefill(prompt_ids)
    [cand] = engine.decode(prefix, None, max_new_tokens=12)
    expected = _generate(engine, prompt_ids, 12)
    assert cand.token_ids == expected[: len(cand.token_ids)]
    assert len(cand.token_ids) == 12 or cand.stop_reason == "eos"


def test_soft_token_equal_to_greedy_token_embedding_continues_greedy(engine, prompt_ids):
    prefix = engine.prefill(prompt_ids)
    [greedy] = engine.decode(prefix, None, max_new_tokens=8)
    soft = engine.embed([greedy.token_ids[0]])
    [cand] = engine.decode(prefix, soft, max_new_tokens=7)
    assert cand.token_ids == greedy.token_ids[1:8]


def test_batch_matches_one_at_a_time(engine, prompt_ids):
    prefix = engine.prefill(prompt_ids)
    gen = torch.Generator().manual_seed(1)
    soft = torch.randn(5, engine.hidden_size, generator=gen)
    batch = engine.decode(prefix, soft, max_new_tokens=10)
    singles = [engine.decode(prefix, soft[i : i + 1], max_new_tokens=10)[0] for i in range(5)]
    assert [c.token_ids for c in batch] == [c.token_ids for c in singles]
    for b, s in zip(batch, singles):
        assert b.logprobs == pytest.approx(s.logprobs, abs=1e-4)
    assert len({tuple(c.token_ids) for c in batch}) > 1, "different vectors should differ"


def test_same_vector_twice_gives_identical_output(engine, prompt_ids):
    prefix = engine.prefill(prompt_ids)
    soft = torch.randn(2, engine.hidden_size, generator=torch.Generator().manual_seed(2))
    first = engine.decode(prefix, soft, max_new_tokens=10)
    second = engine.decode(prefix, soft, max_new_tokens=10)
    assert [c.token_ids for c in first] == [c.token_ids for c in second]
    assert [c.text for c in first] == [c.text for c in second]


def test_prefix_is_prefilled_once_and_accounting_is_exact(engine, prompt_ids):
    before = engine.stats.copy()
    prefix = engine.prefill(prompt_ids)
    soft = torch.randn(3, engine.hidden_size, generator=torch.Generator().manual_seed(3))
    rounds = [engine.decode(prefix, soft, max_new_tokens=6) for _ in range(3)]
    plain = engine.decode(prefix, None, max_new_tokens=6)
    used = engine.stats.since(before)
    assert used.prefill_tokens == len(prompt_ids)  # never re-encoded per candidate or round
    produced = sum(len(c.token_ids) for r in rounds for c in r) + len(plain[0].token_ids)
    assert used.generated_tokens == produced
    assert used.soft_positions == 9
    # no EOS here: each soft round is 1 soft pass + 5 token passes, plain is 5, prefill 1
    assert all(c.stop_reason == "max_tokens" for r in rounds for c in r)
    assert used.forward_passes == 1 + 3 * 6 + 5
    assert used.prefill_s > 0 and used.decode_s > 0


def test_until_cuts_text_and_stops_counting(engine, prompt_ids):
    prefix = engine.prefill(prompt_ids)
    [free] = engine.decode(prefix, None, max_new_tokens=20)
    stop = free.text[len(free.text) // 2 :][:2]
    assert stop, "need some generated text to stop on"
    before = engine.stats.copy()
    [cut] = engine.decode(prefix, None, until=[stop], max_new_tokens=20)
    assert cut.stop_reason == "until"
    assert stop not in cut.text and free.text.startswith(cut.text)
    assert len(cut.token_ids) < len(free.token_ids)
    assert engine.stats.since(before).generated_tokens == len(cut.token_ids)


def _full_text_hit(engine, row, until):
    """The stop check as it was: decode the whole row at every step (quadratic in length)."""
    text = engine.tokenizer.decode(row.token_ids, skip_special_tokens=True)
    return any(u in text for u in until)


def _metaspace_tokenizer():
    """A SentencePiece-style tokenizer (Metaspace: decoding drops the leading space), the
    other family whose text a tail decode can see differently from the whole row's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from conftest import _TOKENIZER_CORPUS

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    backend.train_from_iterator(_TOKENIZER_CORPUS, trainers.BpeTrainer(
        vocab_size=200, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>",
                                   bos_token="<s>", eos_token="</s>")


@pytest.mark.parametrize("family", ["byte-level", "metaspace"])
def test_tail_stop_check_stops_at_the_same_token_as_a_full_decode(family):
    """Random token rows (special tokens and split characters included) and stop strings cut
    from their own text: the tail check fires first at exactly the step the full one does."""
    import random

    from conftest import build_tiny_tokenizer
    from lm_eval_softreason.engine import _Row

    tok = build_tiny_tokenizer() if family == "byte-level" else _metaspace_tokenizer()
    engine = DecodingEngine.__new__(DecodingEngine)  # only the tokenizer is used here
    engine.tokenizer = tok
    rng = random.Random(0)
    vocab = list(range(len(tok)))
    # mostly one-character tokens: windows are then as short as the bound allows
    short = [i for i in vocab if len(tok.convert_ids_to_tokens(i)) == 1]
    checked = 0
    for _ in range(300):
        ids = [rng.choice(short if rng.random() < 0.9 else vocab)
               for _ in range(rng.randint(1, 40))]
        text = tok.decode(ids, skip_special_tokens=True)
        if len(text) < 2:
            continue
        spaces = [i for i, ch in enumerate(text[:-1]) if ch == " "]
        # half the stops start at a space: the character a tail decode may drop
        start = rng.choice(spaces) if spaces and rng.random() < 0.5 else rng.randrange(len(text) - 1)
        until = [text[start:start + rng.randint(1, 8)]]
        row, ours, full = _Row(), None, None
        for step, token in enumerate(ids):
            row.token_ids.append(token)
            ours = step if ours is None and engine._hit_until(row, until) else ours
            full = step if full is None and _full_text_hit(engine, row, until) else full
        assert ours == full, (ids, until)
        checked += full is not None
    assert checked > 200  # most rows do reach their stop string


def test_decode_with_stops_equals_the_full_decode_check(engine, prompt_ids, monkeypatch):
    prefix = engine.prefill(prompt_ids)
    soft = torch.randn(4, engine.hidden_size, generator=torch.Generator().manual_seed(4))
    [free] = engine.decode(prefix, None, max_new_tokens=40)
    stops = [[free.text[i:i + n]] for i in (3, 10, 25) for n in (1, 3)] + [["Question:", "7"]]
    ours = [engine.decode(prefix, soft, until=u, max_new_tokens=40) for u in stops]
    monkeypatch.setattr(DecodingEngine, "_hit_until", _full_text_hit)
    full = [engine.decode(prefix, soft, until=u, max_new_tokens=40) for u in stops]
    assert [[(c.text, c.token_ids, c.stop_reason) for c in r] for r in ours] == \
        [[(c.text, c.token_ids, c.stop_reason) for c in r] for r in full]
    assert any(c.stop_reason == "until" for r in ours for c in r)


def test_stop_check_decodes_a_fixed_tail_not_the_whole_row(engine, prompt_ids, monkeypatch):
    """Per step the check decodes at most len(stop) + 2 text tokens; only ``_finish`` decodes the
    whole row, once: linear in the row's length, not quadratic."""
    prefix = engine.prefill(prompt_ids)
    lengths: list[int] = []
    decode = type(engine.tokenizer).decode

    def counted(self, ids, *args, **kwargs):
        lengths.append(len(ids))
        return decode(self, ids, *args, **kwargs)

    monkeypatch.setattr(type(engine.tokenizer), "decode", counted)
    monkeypatch.setattr(engine, "eos_ids", frozenset())  # run the full 60 steps
    stop = "\x00never"  # 6 bytes, never generated
    [cand] = engine.decode(prefix, None, until=[stop], max_new_tokens=60)
    assert cand.stop_reason == "max_tokens" and len(cand.token_ids) == 60
    assert lengths[-1] == 60 and lengths.count(60) == 1  # the one full decode, in _finish
    # (special tokens decode to nothing, so the window reaches past the ones in the row)
    specials = sum(t in engine.tokenizer.all_special_ids for t in cand.token_ids)
    assert max(lengths[:-1]) <= len(stop.encode()) + 2 + specials < 60
    assert len(lengths) == 60 + 1


def test_max_new_tokens_is_honoured(engine, prompt_ids):
    prefix = engine.prefill(prompt_ids)
    assert [len(c.token_ids) for c in engine.decode(prefix, None, max_new_tokens=3, n=2)] == [3, 3]
    before = engine.stats.copy()
    empty = engine.decode(prefix, torch.zeros(2, engine.hidden_size), max_new_tokens=0)
    assert [c.token_ids for c in empty] == [[], []] and empty[0].text == ""
    assert engine.stats.since(before).forward_passes == 0


def test_eos_stops_a_row_and_finished_rows_cost_nothing(tiny_model_dir):
    model, tok = _peaked(tiny_model_dir("llama"))
    # make EOS the certain next token everywhere
    bias = torch.zeros(len(tok), device=DEVICE)
    bias[tok.eos_token_id] = 1e4
    model.lm_head.register_forward_hook(lambda m, i, out: out + bias)
    engine = DecodingEngine(model, tok)
    prefix = engine.prefill(tok(PROMPT)["input_ids"])
    before = engine.stats.copy()
    cands = engine.decode(prefix, torch.randn(3, engine.hidden_size), max_new_tokens=50)
    assert [c.stop_reason for c in cands] == ["eos"] * 3
    assert all(c.token_ids == [] and c.text == "" for c in cands)
    assert engine.stats.since(before).generated_tokens == 0
    assert engine.stats.since(before).forward_passes == 1  # the soft position only


def test_sampling_is_seeded_and_varied(engine, prompt_ids):
    prefix = engine.prefill(prompt_ids)
    kw = dict(max_new_tokens=8, n=4, sample=True, temperature=1.0)
    a = engine.decode(prefix, None, seed=7, **kw)
    b = engine.decode(prefix, None, seed=7, **kw)
    c = engine.decode(prefix, None, seed=8, **kw)
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    assert [x.token_ids for x in a] != [x.token_ids for x in c]
    assert len({tuple(x.token_ids) for x in a}) > 1


def test_top_p_tiny_keeps_only_the_argmax(engine, prompt_ids):
    prefix = engine.prefill(prompt_ids)
    [greedy] = engine.decode(prefix, None, max_new_tokens=6)
    sampled = engine.decode(prefix, None, max_new_tokens=6, n=3, sample=True, top_p=1e-6, seed=3)
    assert all(s.token_ids == greedy.token_ids for s in sampled)


def test_coherence_is_mean_token_probability(engine, prompt_ids):
    prefix = engine.prefill(prompt_ids)
    [cand] = engine.decode(prefix, None, max_new_tokens=5)
    expected = sum(torch.tensor(lp).exp().item() for lp in cand.logprobs) / len(cand.logprobs)
    assert cand.coherence == pytest.approx(expected)
    assert 0 < cand.coherence <= 1


# --- cross-request batching: several calls (different prefixes) in one batch ------------------


def _calls(engine, prompt_ids):
    """Mixed calls: different prompt lengths, soft and plain, greedy and sampled, own stops."""
    from lm_eval_softreason.engine import DecodeCall

    short = engine.prefill(prompt_ids[:5])
    long = engine.prefill(prompt_ids)
    mid = engine.prefill(prompt_ids[3:12])
    soft = engine.embed([prompt_ids[0]] * 3) + 0.5 * torch.randn(
        3, engine.hidden_size, generator=torch.Generator().manual_seed(1)).to(engine.device)
    return [
        DecodeCall(long, soft, max_new_tokens=9),
        DecodeCall(short, None, max_new_tokens=12),
        DecodeCall(mid, soft[:2], max_new_tokens=5),
        DecodeCall(short, None, n=3, sample=True, temperature=0.8, seed=7, max_new_tokens=8),
        DecodeCall(long, None, max_new_tokens=0),
    ]


def test_decode_many_equals_one_call_at_a_time(engine, prompt_ids):
    calls = _calls(engine, prompt_ids)
    alone = [engine.decode_many([c]) [0] for c in calls]
    together = engine.decode_many(calls)
    assert [[c.token_ids for c in group] for group in together] == \
           [[c.token_ids for c in group] for group in alone]
    assert [[c.text for c in group] for group in together] == \
           [[c.text for c in group] for group in alone]
    for merged, single in zip(together, alone):
        for a, b in zip(merged, single):
            assert a.stop_reason == b.stop_reason
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
    assert [len(g) for g in together] == [3, 1, 2, 3, 1]
    assert together[-1][0].token_ids == []


def test_decode_many_uses_one_forward_per_step_and_splits_cost(engine, prompt_ids):
    from lm_eval_softreason.engine import EngineStats

    calls = _calls(engine, prompt_ids)
    for c in calls:
        c.stats = EngineStats()
    before = engine.stats.copy()
    out = engine.decode_many(calls)
    used = engine.stats.since(before)
    # one pass per step for everyone, the soft positions taken in the first one beside the plain
    # rows' first tokens: the longest row (12 tokens) needs 11 passes
    assert used.forward_passes == 11
    assert used.generated_tokens == sum(len(c.token_ids) for g in out for c in g)
    for call, group in zip(calls, out):
        assert call.stats.generated_tokens == sum(len(c.token_ids) for c in group)
    assert [c.stats.soft_positions for c in calls] == [3, 0, 2, 0, 0]
    assert calls[2].stats.forward_passes == 1 + 4  # soft pass + 4 shared steps (5 tokens)
    assert calls[4].stats.forward_passes == 0


def test_a_call_whose_cache_the_running_batch_cannot_hold_runs_alone(engine, prompt_ids):
    from transformers.cache_utils import DynamicLayer

    from lm_eval_softreason.engine import DecodeCall, Prefix

    class OtherLayer(DynamicLayer):  # e.g. a sliding-window layer: not a plain DynamicLayer
        pass

    prefix = engine.prefill(prompt_ids)
    other = copy.deepcopy(prefix.cache)
    for i, layer in enumerate(other.layers):
        other.layers[i] = OtherLayer()
        other.layers[i].update(layer.keys, layer.values)
    odd = Prefix(prefix.prompt_ids, other, prefix.next_logits)
    out = engine.decode_many([DecodeCall(prefix, None, max_new_tokens=4),
                              DecodeCall(odd, None, max_new_tokens=4)])
    assert out[0][0].token_ids == out[1][0].token_ids == _generate(engine, prompt_ids, 4)
    assert all(type(layer) is OtherLayer for layer in odd.cache.layers)  # never modified


def test_running_batch_calls_joining_at_any_step_decode_as_alone(engine, prompt_ids,
                                                               monkeypatch):
    """Calls admitted at random steps, with prefixes longer than the batch's (the buffers are
    rebuilt and rows shifted), short budgets (columns run out: the buffers are compacted) and
    rows ending at every step (slots refilled by the last row), give the tokens and log-probs
    of each call decoded alone; each call comes back as soon as its own rows end."""
    import random

    from lm_eval_softreason.engine import DecodeCall

    rng = random.Random(0)
    gen = torch.Generator().manual_seed(0)
    vocab = engine.model.get_input_embeddings().weight.shape[0]
    calls = []
    for i in range(24):
        ids = [rng.randrange(3, vocab) for _ in range(rng.choice([2, 9, 40, 90]))]
        prefix, kind = engine.prefill(ids), rng.choice(["plain", "soft", "sample"])
        budget = 1 if i % 3 == 0 else rng.choice([2, 6, 30])
        if kind == "soft":
            soft = 0.5 * torch.randn(rng.choice([1, 3]), engine.hidden_size, generator=gen)
            calls.append(DecodeCall(prefix, soft, max_new_tokens=budget))
        else:
            calls.append(DecodeCall(prefix, None, n=rng.choice([1, 2]), max_new_tokens=budget,
                                    sample=kind == "sample", temperature=0.8, seed=i))
    alone = [engine.decode_many([c])[0] for c in calls]
    real_forward, shapes = engine._forward, []

    def checked(cache, **inputs):  # the model builds its mask from the cache's length
        if "attention_mask" in inputs:
            shapes.append((cache.get_seq_length(), inputs["attention_mask"].shape[1] - 1))
        return real_forward(cache, **inputs)

    monkeypatch.setattr(engine, "_forward", checked)
    batch, out, admitted_at, steps, nxt = engine.open_batch(), {}, {}, 0, 0
    while len(out) < len(calls):
        while nxt < len(calls) and rng.random() < 0.15:
            batch.admit(nxt, calls[nxt])
            admitted_at[nxt] = steps
            nxt += 1
        steps += 1
        for i, reply in batch.step():
            out[i] = reply
            # back at the step its longest row ended (+1: a soft row's first pass)
            assert steps - admitted_at[i] <= calls[i].max_new_tokens + 1
    assert shapes and all(seen == masked for seen, masked in shapes)
    for i, call in enumerate(calls):
        assert [c.token_ids for c in out[i]] == [c.token_ids for c in alone[i]], i
        for a, b in zip(out[i], alone[i]):
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
            assert a.stop_reason == b.stop_reason


def test_prefill_keeps_only_the_last_logits_and_they_match_a_full_forward(engine, prompt_ids):
    prefix = engine.prefill(prompt_ids)
    with torch.no_grad():
        full = engine.model(torch.tensor([prompt_ids], device=engine.device)).logits[0, -1].float()
    torch.testing.assert_close(prefix.next_logits, full, rtol=1e-5, atol=1e-5)
    assert engine._last_logits_only == {"logits_to_keep": 1}  # all three tiny archs take it


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_onednn_prepacked_linears_decode_the_same_tokens(tiny_model_dir, arch):
    from lm_eval_softreason.loading import prepack_linears

    model, tok = _peaked(tiny_model_dir(arch))
    model = model.to("cpu")  # oneDNN prepacking is a CPU path, whatever the test device
    plain = DecodingEngine(model, tok)
    ids = tok(PROMPT)["input_ids"]
    soft = plain.embed([plain.prefill(ids).greedy_token]).repeat(3, 1) + 0.5 * torch.randn(
        3, plain.hidden_size, generator=torch.Generator().manual_seed(0))
    before = plain.decode(plain.prefill(ids), soft, max_new_tokens=12)
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert prepack_linears(model) == linears > 0
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    packed = DecodingEngine(model, tok)
    after = packed.decode(packed.prefill(ids), soft, max_new_tokens=12)
    assert [c.token_ids for c in after] == [c.token_ids for c in before]
    for a, b in zip(after, before):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs),
                                   rtol=1e-4, atol=1e-4)


def test_preallocated_cache_gives_the_tokens_and_logprobs_of_torch_cat(engine, prompt_ids,
                                                                       monkeypatch):
    """Writing each step into a buffer sized once must not change a single token: the model
    sees the same keys and values, as a view instead of a fresh concatenation."""
    from lm_eval_softreason import engine as engine_module

    swapped = []
    real_install = engine_module._PreallocatedLayer.install.__func__

    def spy(cls, cache, extra):
        real_install(cls, cache, extra)
        swapped.append(sum(isinstance(layer, cls) for layer in cache.layers))

    monkeypatch.setattr(engine_module._PreallocatedLayer, "install", classmethod(spy))
    fast = [engine.decode_many([c])[0] for c in _calls(engine, prompt_ids)]  # one call: its cache
    assert swapped and all(n == engine.model.config.num_hidden_layers for n in swapped)
    monkeypatch.setattr(engine_module._PreallocatedLayer, "install", classmethod(
        lambda cls, cache, extra: None))  # transformers' DynamicLayer: torch.cat every step
    plain = [engine.decode_many([c])[0] for c in _calls(engine, prompt_ids)]
    for g_fast, g_plain in zip(fast, plain):
        assert [c.token_ids for c in g_fast] == [c.token_ids for c in g_plain]
        for a, b in zip(g_fast, g_plain):
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)


def test_preallocated_layer_writes_in_place_and_grows_only_past_its_room():
    from transformers.cache_utils import DynamicLayer

    from lm_eval_softreason.engine import _PreallocatedLayer

    plain = DynamicLayer()
    step = lambda i: torch.full((2, 1, 1, 4), float(i))  # noqa: E731
    plain.update(step(0), step(0))
    layer = _PreallocatedLayer.from_layer(plain, extra=3)
    buffer = layer._k.data_ptr()
    for i in range(1, 4):
        keys, values = layer.update(step(i), step(-i))
        plain.update(step(i), step(-i))
        assert torch.equal(keys, plain.keys) and torch.equal(values, plain.values)
    assert layer._k.data_ptr() == buffer  # three steps fit the room: no new allocation
    assert layer.get_seq_length() == 4
    layer.update(step(4), step(-4))  # a fifth position: grows, keeps every earlier one
    plain.update(step(4), step(-4))
    assert torch.equal(layer.keys, plain.keys) and layer._k.data_ptr() != buffer
    layer.batch_select_indices(torch.tensor([1]))
    assert layer.keys.shape == (1, 1, 5, 4) and torch.equal(layer.keys, plain.keys[1:])
    layer.batch_repeat_interleave(3)
    layer.update(torch.full((3, 1, 1, 4), 5.0), torch.full((3, 1, 1, 4), -5.0))
    expected = torch.cat([plain.keys[1:].repeat_interleave(3, dim=0), torch.full((3, 1, 1, 4), 5.0)],
                         dim=-2)
    assert torch.equal(layer.keys, expected)
