"""Bad inputs through the real ``LM`` on a tiny model: each ends in a result or a clear error,
never a hang or a traceback from deep inside torch."""

from __future__ import annotations

import math

import pytest
import torch
from lm_eval.api.instance import Instance

from lm_eval_softreason.lm import SoftReasonLM
from lm_eval_softreason.search import bo
from lm_eval_softreason.stats import GenerationResult

GK = {"until": ["Question:"], "max_gen_toks": 8}


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    # exactly two rounds whatever the preset (no early unanimous stop): the cost is pinned
    return SoftReasonLM(pretrained=str(tiny_model_dir("llama")), dtype="float32", device="cpu",
                        k=2, min_rounds=2, max_rounds=2, stop_unanimous=False,
                        verifier_max_gen_toks=6, max_length=96)


def _req(context, gen_kwargs=None, doc=None):
    return Instance("generate_until", doc or {}, (context, dict(gen_kwargs or GK)), 0, ("fuzz", 0, 1))


CASES = {
    "empty context": ("", GK),
    "whitespace only": ("  \n\t ", GK),
    "longer than the window": ("apples " * 500, GK),
    "unicode and control chars": ("Qüestion: 3 ✕ 4 = ? \x00\x07\u202e ☃ 漢字 \r\n", GK),
    "context holds the stop string": ("Question: 1+1? Question: 2+2?", GK),
    "until empty": ("Question: 1+1?", {"until": [], "max_gen_toks": 6}),
    "until is a string": ("Question: 1+1?", {"until": "Question:", "max_gen_toks": 6}),
    "until has an empty string": ("Question: 1+1?", {"until": [""], "max_gen_toks": 6}),
    "max_gen_toks 0": ("Question: 1+1?", {"until": [], "max_gen_toks": 0}),
    "max_gen_toks 1": ("Question: 1+1?", {"until": [], "max_gen_toks": 1}),
    "max_gen_toks above the window": ("Question: 1+1?", {"until": [], "max_gen_toks": 500}),
    "do_sample with temperature": ("Question: 1+1?", {"max_gen_toks": 4, "do_sample": True, "temperature": 0.7}),
    "unknown gen_kwarg": ("Question: 1+1?", {"max_gen_toks": 4, "top_k": 3}),
}


TRUNCATED = {"longer than the window", "max_gen_toks above the window"}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gives_a_result(lm, name):
    """The whole search runs (k=2, 2 rounds), its cost adds up, and no case errs or falls back."""
    context, gk = CASES[name]
    [out] = lm.generate_until([_req(context, gk)], disable_tqdm=True)
    assert type(out) is GenerationResult
    s = out.stats
    assert s["error"] is None, s["error"]
    assert (s["search"], s["stop_reason"], s["rounds"], s["candidates"]) == (
        "softreason", "max_rounds", 2, 4)
    assert s["gen_tokens"] == s["candidate_tokens"] + s["verifier_tokens"]
    assert s["candidate_tokens"] <= 4 * gk["max_gen_toks"]
    assert s["verifier_tokens"] <= 6 * len(s["verifier_answers"])
    assert s["truncated"] is (name in TRUNCATED)


def test_long_context_is_truncated_and_flagged(lm):
    [out] = lm.generate_until([_req("apples " * 500)], disable_tqdm=True)
    assert out.stats["truncated"] is True


def test_bad_answer_type_in_gen_kwargs_is_a_clear_error(lm):
    with pytest.raises(ValueError, match="answer_type='words'"):
        lm.generate_until([_req("Q", {"answer_type": "words", "max_gen_toks": 2})], disable_tqdm=True)


def test_model_that_emits_eos_at_once(tiny_model_dir):
    lm = SoftReasonLM(pretrained=str(tiny_model_dir("qwen2")), dtype="float32", k=2, max_rounds=2)
    bias = torch.zeros(len(lm.tokenizer))
    bias[lm.tokenizer.eos_token_id] = 1e4
    handle = lm.model.lm_head.register_forward_hook(lambda m, i, o: o + bias)
    try:
        [out] = lm.generate_until([_req("Question: 1+1?")], disable_tqdm=True)
    finally:
        handle.remove()
    assert out.stats["error"] is None
    assert out.stats["candidate_tokens"] == 0 and out.stats["candidate_answers"] == [None] * 4
    assert out.stats["verifier_tokens"] == 0  # nothing parsable: no verifier call


def test_unparsable_verifier_reply_and_no_parsable_candidate(lm, monkeypatch):
    from lm_eval_softreason.search import softreason

    monkeypatch.setattr(softreason, "extract_answer", lambda text, answer_type="auto": None)
    [out] = lm.generate_until([_req("Question: 1+1?")], disable_tqdm=True)
    assert out.stats["answer"] is None and out.stats["error"] is None


def test_gp_fit_that_raises_falls_back_to_random_points(lm, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("fit exploded")

    monkeypatch.setattr(bo, "fit_gpytorch_mll", broken)
    [out] = lm.generate_until([_req("Question: 1+1?")], disable_tqdm=True)
    assert out.stats["error"] is None and out.stats["rounds"] == 2


def test_nan_logprobs_do_not_crash_the_search(lm):
    """NaN logits: every round still runs, each reward is NaN (which the GP step leaves out),
    and the request ends normally, not in the greedy fallback."""
    nan_hook = lambda m, i, o: torch.full_like(o, float("nan"))
    handle = lm.model.lm_head.register_forward_hook(nan_hook)
    try:
        [out] = lm.generate_until([_req("Question: 1+1?")], disable_tqdm=True)
    finally:
        handle.remove()
    s = out.stats
    assert s["error"] is None and s["stop_reason"] == "max_rounds"
    assert (s["rounds"], s["candidates"]) == (2, 4)
    assert len(s["rewards"]) == 4 and all(math.isnan(r) for r in s["rewards"])


@pytest.mark.slow
def test_all_bad_inputs_together_in_lockstep_equal_one_at_a_time(lm):
    """The same cases as one request list through 4 concurrent searches: every case still ends
    in a result, each the same as when it ran alone (lengths 0..window, empty stops, ...)."""
    requests = [_req(context, gk) for context, gk in CASES.values()]
    alone = lm.generate_until(requests, disable_tqdm=True)
    lm.cfg.batch_size = 4
    try:
        together = lm.generate_until([_req(context, gk) for context, gk in CASES.values()],
                                     disable_tqdm=True)
    finally:
        lm.cfg.batch_size = 1
    assert [str(x) for x in together] == [str(x) for x in alone]
    assert all(x.stats["error"] is None for x in together)
