"""Cross-request batching: searches in lockstep give the same per-request results as one at a
time, share forward passes, refill freed slots, and keep one failure to its own request."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
from conftest import DEVICE
from lm_eval.api.instance import Instance

from lm_eval_softreason import lockstep
from lm_eval_softreason.lm import SoftReasonLM

QUESTIONS = [
    "Tom has 3 apples. He buys 4 more apples. How many apples does Tom have now?",
    "Was the ship named after a battle?",
    "Tom has 10 apples and gives away 3. How many apples are left?",
    "1 + 2 = ?",
    "There are 100 apples and 7 are eaten. How many are left? Answer: 93",
    "How many apples? 0 1 2 3 4 5 6 7 8 9",
    "Tom",
]
# short runs that still exercise rounds, BO, the verifier and votes
SEARCH_ARGS = {"k": 3, "max_rounds": 3, "min_rounds": 2, "verifier_max_gen_toks": 8}


def _lm(model_dir, **kw) -> SoftReasonLM:
    return SoftReasonLM(pretrained=str(model_dir), dtype="float32", device=DEVICE, **kw)


def _requests(questions=QUESTIONS, max_gen_toks: int = 10) -> list[Instance]:
    gk = {"until": ["Question:"], "max_gen_toks": max_gen_toks, "do_sample": False}
    return [Instance("generate_until", {"question": q}, (f"Question: {q}\nAnswer:", dict(gk)),
                     i, ("t", i, 1)) for i, q in enumerate(questions)]


def _same_per_request(a, b) -> None:
    """Text, answers, rounds and token counts equal; rewards equal up to float32 rounding (a
    padded batch sums in another order); timings and shared forward passes aside."""
    assert [str(x) for x in a] == [str(x) for x in b]
    varying = ("wall_s", "decode_s", "verify_s", "bo_s", "forward_passes", "rewards")
    for x, y in zip(a, b):
        assert {k: v for k, v in x.stats.items() if k not in varying} == \
               {k: v for k, v in y.stats.items() if k not in varying}
        assert x.stats["rewards"] == pytest.approx(y.stats["rewards"], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("search, extra", [
    ("softreason", SEARCH_ARGS),
    ("random", SEARCH_ARGS),
    ("sc", {"n": 3, "temperature": 0.7}),
    ("greedy", {}),
])
def test_lockstep_results_equal_one_at_a_time(peaked_dir, search, extra):
    lm = _lm(peaked_dir, search=search, **extra)
    alone = lm.generate_until(_requests(), disable_tqdm=True)
    lm.cfg.batch_size = 3  # 7 requests through 3 slots: every slot is refilled at least once
    together = lm.generate_until(_requests(), disable_tqdm=True)
    _same_per_request(alone, together)


def test_lockstep_results_do_not_depend_on_request_order(peaked_dir):
    lm = _lm(peaked_dir, batch_size=4, **SEARCH_ARGS)
    forward = lm.generate_until(_requests(), disable_tqdm=True)
    order = list(range(len(QUESTIONS)))
    random.Random(3).shuffle(order)
    shuffled = lm.generate_until(_requests([QUESTIONS[i] for i in order]), disable_tqdm=True)
    _same_per_request([forward[i] for i in order], shuffled)


def test_lockstep_shares_forward_passes(peaked_dir):
    lm = _lm(peaked_dir, search="greedy")
    before = lm.engine.stats.copy()
    lm.generate_until(_requests(max_gen_toks=16), disable_tqdm=True)
    alone = lm.engine.stats.since(before)
    lm.cfg.batch_size = 7
    before = lm.engine.stats.copy()
    out = lm.generate_until(_requests(max_gen_toks=16), disable_tqdm=True)
    together = lm.engine.stats.since(before)
    assert together.generated_tokens == alone.generated_tokens
    # each request prefills once (one pass); then one pass per step serves every request:
    # the longest request's decode passes, not their sum
    decode_passes = [x.stats["forward_passes"] - 1 for x in out]
    assert together.forward_passes == len(out) + max(decode_passes)
    assert alone.forward_passes == len(out) + sum(decode_passes)
    assert together.forward_passes < alone.forward_passes / 3


def test_a_failing_search_in_lockstep_falls_back_alone(peaked_dir, monkeypatch):
    import lm_eval_softreason.lm as lm_module

    lm = _lm(peaked_dir, batch_size=3, **SEARCH_ARGS)
    clean = lm.generate_until(_requests(), disable_tqdm=True)
    real = lm_module.SEARCH_FUNCTIONS["softreason"]

    def explode(cfg, engine, problem):
        if "gives away" in problem.question:
            engine.decode(engine.prefill(problem.prompt_ids), None, max_new_tokens=2)
            raise RuntimeError("injected")
        return real(cfg, engine, problem)

    monkeypatch.setitem(lm_module.SEARCH_FUNCTIONS, "softreason", explode)
    out = lm.generate_until(_requests(), disable_tqdm=True)
    assert out[2].stats["stop_reason"] == "fallback"
    assert "RuntimeError: injected" in out[2].stats["error"]
    _same_per_request(clean[:2] + clean[3:], out[:2] + out[3:])


@pytest.mark.parametrize("batching", ["running", "whole"])
def test_a_batched_pass_that_raises_is_retried_call_by_call(peaked_dir, monkeypatch, batching):
    """A decode that fails only when batched (say, out of memory) costs nothing but time; a
    decode that fails alone fails only its own request. ``running``: the HF engine's running
    batch; ``whole``: the decode_many batch that engines without one (vLLM) get."""
    from lm_eval_softreason.engine import RunningBatch

    lm = _lm(peaked_dir, search="greedy", batch_size=4)
    clean = lm.generate_until(_requests(), disable_tqdm=True)
    real_decode, real_advance = lm.engine.decode_many, RunningBatch._advance

    def flaky_decode(calls):
        if len(calls) > 1:
            raise RuntimeError("batch too big")
        if calls[0].prefix.prompt_ids == bad_ids:
            raise RuntimeError("this one is bad")
        return real_decode(calls)

    def flaky_advance(self):
        if len({g for g, _ in self.owner}) > 1:
            raise RuntimeError("batch too big")
        return real_advance(self)

    bad_ids = lm._encode(_requests()[3].args[0])
    monkeypatch.setattr(lm.engine, "decode_many", flaky_decode)
    if batching == "running":
        monkeypatch.setattr(RunningBatch, "_advance", flaky_advance)
    else:
        monkeypatch.setattr(lockstep, "open_batch", lockstep.WholeBatch)
    out = lm.generate_until(_requests(), disable_tqdm=True)
    assert [str(x) for i, x in enumerate(out) if i != 3] == \
           [str(x) for i, x in enumerate(clean) if i != 3]
    assert out[3].stats["stop_reason"] == "fallback" and out[3] == ""
    assert "this one is bad" in out[3].stats["error"]


def test_batch_size_auto_and_bad_values(peaked_dir):
    import torch

    lm = _lm(peaked_dir, batch_size="auto")
    gpu = lm.engine.device.type == "cuda"
    cap = 64 if gpu else 8
    assert lm.cfg.batch_size == "auto"
    assert 1 <= lm.concurrency(100) <= cap
    assert lm.concurrency(2) <= 2  # never more slots than requests
    assert lockstep.auto_slots(lm.engine, rows=6, positions=4096, cap=3) == 3
    # the free memory of the model's device (psutil on CPU, CUDA's own count on a GPU): the
    # searches' KV caches fit in half of it
    config = lm.model.config
    per_search = 2 * 6 * 4096 * (2 * config.num_hidden_layers * config.num_key_value_heads
                                 * (config.hidden_size // config.num_attention_heads) * 4)
    for available, slots in ((per_search, 1), (5 * per_search, 2), (10**15, cap)):
        with pytest.MonkeyPatch.context() as mp:
            if gpu:
                mp.setattr(torch.cuda, "mem_get_info", lambda device=None: (available, available))
            else:
                mp.setattr(lockstep.psutil, "virtual_memory", lambda: SimpleNamespace(
                    available=available))
            assert lockstep.auto_slots(lm.engine, rows=6, positions=4096) == slots
    with pytest.raises(ValueError, match="batch_size='many' is not a valid integer"):
        SoftReasonLM(pretrained="unused", batch_size="many")
    with pytest.raises(ValueError, match="batch_size=0 must be an integer >= 1"):
        SoftReasonLM(pretrained="unused", batch_size=0)


def test_engine_and_its_per_search_view_implement_the_engine_protocol(peaked_dir):
    import inspect
    from dataclasses import fields

    from lm_eval_softreason.engine import DecodeCall, DecodingEngine
    from lm_eval_softreason.search.problem import Engine, protocol_members

    engine = _lm(peaked_dir).engine
    view = lockstep.EngineView(engine, worker=None)
    assert isinstance(engine, Engine) and isinstance(view, Engine)
    # Python >= 3.12 checks a Protocol with inspect.getattr_static, which never calls
    # __getattr__: every member must be found statically (this fails on 3.11 too)
    for name in protocol_members(Engine):
        inspect.getattr_static(view, name)
    for name in protocol_members(Engine) - {"decode", "prefill", "stats"}:
        assert getattr(view, name) == getattr(engine, name), name  # the engine's own
    assert view.stats is not engine.stats  # the search's own cost
    with pytest.raises(AttributeError, match="sees the Engine protocol only"):
        view.decode_many  # noqa: B018  (past the scheduler: not for a search)
    # the view forwards decode's keywords into a DecodeCall: they must be the same names
    keywords = {p.name for p in inspect.signature(DecodingEngine.decode).parameters.values()
                if p.kind is p.KEYWORD_ONLY}
    assert keywords == {f.name for f in fields(DecodeCall)} - {"prefix", "soft_embeds", "stats"}


def test_run_lockstep_refuses_zero_slots():
    with pytest.raises(ValueError, match="slots must be >= 1"):
        lockstep.run_lockstep(None, [], 0, lambda *a: None)
