"""The Soft Reasoning search against a fake engine: rewards, verifier, vote, tie-breaks,
ablations, determinism. (The BO loop itself is tested in test_loop.py / test_bo.py.)"""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
import torch

from lm_eval_softreason.config import SoftReasonConfig
from lm_eval_softreason.engine import Candidate, EngineStats
from lm_eval_softreason.search import baselines, softreason, verifier
from lm_eval_softreason.search.problem import Problem

HIDDEN = 16


class FakeTokenizer:
    def decode(self, ids, skip_special_tokens=True):
        return "" if not ids else "So,"


class FakeEngine:
    """Candidate i's answer is a deterministic function of its soft vector; the verifier
    (a plain decode of a prompt) always answers ``verdict``."""

    def __init__(self, verdict="3", answer_fn=None, coherence=0.5):
        self.tokenizer = FakeTokenizer()
        self.stats = EngineStats()
        self.verdict = verdict
        self.answer_fn = answer_fn or (lambda v: int(abs(float(v.sum())) * 3) % 4)
        self.coherence = coherence
        self.verifier_prompts: list[list[int]] = []
        self.hidden_size = HIDDEN

    def embedding_rms(self):
        return 1.0

    def embed(self, ids):
        return torch.ones(len(ids), HIDDEN)

    def prefill(self, ids):
        self.stats.prefill_tokens += len(ids)
        self.stats.forward_passes += 1

        class P:
            greedy_token = 7
            prompt_ids = list(ids)

        return P()

    def decode(self, prefix, soft, *, until=None, max_new_tokens=16, n=1, **kw):
        lp = float(torch.tensor(self.coherence).log())
        if soft is None:  # the verifier (or greedy)
            self.verifier_prompts.append(prefix.prompt_ids)
            verdict = self.verdict(len(self.verifier_prompts)) if callable(self.verdict) else (
                self.verdict)
            text = verdict if "\n" in str(verdict) else f"Checked.\nAnswer: {verdict}"
            return [Candidate(text, [1, 2], [lp, lp], "eos")] * n
        out = []
        for row in soft:
            ans = self.answer_fn(row)
            out.append(Candidate(f" x.\nAnswer: {ans}", [1, 2, 3], [lp] * 3, "eos"))
        return out


def _problem(**kw):
    return Problem(prompt_ids=[1, 2, 3], question="q?", until=[], max_gen_toks=8, seed=11,
                   answer_type="numeric", render=lambda text: [9] * 5, **kw)


def _cfg(preset="v2", **kw):  # v2: the tests below exercise the verifier
    return replace(SoftReasonConfig(preset=preset), **{"k": 4, "proj_dim": 6, "max_rounds": 3,
                                                       "min_rounds": 3, **kw})


def test_rewards_are_verifier_agreement_plus_coherence():
    engine = FakeEngine(verdict="3", coherence=0.5)
    out = softreason.search(_cfg(), engine, _problem())
    s = out.stats
    assert s.rounds == 3 and s.candidates == 12
    for answer, reward in zip(s.candidate_answers, s.rewards):
        assert reward == pytest.approx((1.0 if answer == 3.0 else 0.0) + 0.5)
    assert s.verifier_answers == [3.0, 3.0, 3.0]
    assert s.verifier_tokens == 6 and s.candidate_tokens == 36
    assert s.prompt_tokens == 3 + 3 * 5  # prompt once + three verifier prompts


def test_vote_counts_verifier_answers_and_returns_a_candidate_text_with_it():
    engine = FakeEngine(verdict="3")
    out = softreason.search(_cfg(), engine, _problem())
    votes = out.stats.candidate_answers + out.stats.verifier_answers
    counts = {a: votes.count(a) for a in set(votes)}
    assert out.stats.answer == max(counts, key=counts.get)
    assert out.text.startswith("So,") and f"Answer: {int(out.stats.answer)}" in out.text


def test_verifier_text_is_returned_when_only_the_verifier_has_the_winning_answer():
    fresh = iter(range(100, 200))  # every candidate a different answer: one vote each
    engine = FakeEngine(verdict="42", answer_fn=lambda v: next(fresh))
    cfg = _cfg(k=2, max_rounds=2, min_rounds=2)
    out = softreason.search(cfg, engine, _problem())
    assert out.stats.answer == 42.0
    assert out.text.startswith("Checked.")


def test_vote_ties_go_to_the_higher_reward():
    # two answers, two votes each, no verifier: coherence decides the tie
    engine = FakeEngine()
    state = softreason._Search(_cfg(w_verifier=0.0), engine, _problem())
    state.candidates = [
        {"answer": 1.0, "reward": 0.2, "text": "a1"}, {"answer": 2.0, "reward": 0.9, "text": "b1"},
        {"answer": 1.0, "reward": 0.3, "text": "a2"}, {"answer": 2.0, "reward": 0.1, "text": "b2"},
    ]
    assert state.choose() == "b1" and state.stats.answer == 2.0


def test_select_best_returns_the_highest_reward_candidate():
    engine = FakeEngine()
    state = softreason._Search(_cfg(select="best"), engine, _problem())
    state.candidates = [
        {"answer": 1.0, "reward": 0.2, "text": "a"}, {"answer": 1.0, "reward": 0.3, "text": "a2"},
        {"answer": 2.0, "reward": 0.9, "text": "b"},
    ]
    assert state.choose() == "b"


def test_unparsable_answers_never_win():
    engine = FakeEngine()
    state = softreason._Search(_cfg(w_verifier=0.0), engine, _problem())
    state.candidates = [
        {"answer": None, "reward": 0.9, "text": "n1"}, {"answer": None, "reward": 0.8, "text": "n2"},
        {"answer": 5.0, "reward": 0.1, "text": "five"},
    ]
    assert state.choose() == "five"


def test_no_verifier_ablation_makes_no_verifier_call():
    engine = FakeEngine()
    out = softreason.search(_cfg(w_verifier=0.0), engine, _problem())
    assert engine.verifier_prompts == [] and out.stats.verifier_tokens == 0
    assert all(r == pytest.approx(0.5) for r in out.stats.rewards)


def test_verifier_prompt_holds_question_attempts_and_earlier_analyses():
    seen = []
    engine = FakeEngine()
    problem = _problem()
    problem.render = lambda text: seen.append(text) or [9]
    softreason.search(_cfg("v1", max_rounds=2, min_rounds=2), engine, problem)
    assert len(seen) == 2
    assert "q?" in seen[0] and "Attempt 1:" in seen[0] and "Earlier check" not in seen[0]
    assert "Earlier check 1:" in seen[1] and "Checked." in seen[1]


def test_same_seed_same_result_and_random_shares_round_one():
    a = softreason.search(_cfg(), FakeEngine(), _problem())
    b = softreason.search(_cfg(), FakeEngine(), _problem())
    assert a.text == b.text and a.stats.rewards == b.stats.rewards
    assert [c["x"] for c in a.trace["candidates"]] == [c["x"] for c in b.trace["candidates"]]
    r = softreason.search(_cfg(search="random"), FakeEngine(), _problem())
    assert [c["x"] for c in r.trace["candidates"][:4]] == [c["x"] for c in a.trace["candidates"][:4]]


def test_soft_vector_perturbation_has_sigma_per_coordinate():
    a = softreason.projection(0, 50, 2000)
    x = torch.randn(200, 50, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    v = softreason.soft_vectors(x, torch.zeros(2000, dtype=torch.float64), a, 0.7)
    assert float(v.std()) == pytest.approx(0.7, rel=0.05)
    assert torch.equal(a, softreason.projection(0, 50, 2000))


def test_an_error_after_round_one_keeps_what_was_found():
    engine = FakeEngine()
    calls = {"n": 0}
    original = engine.decode

    def flaky(prefix, soft, **kw):
        if soft is not None:
            calls["n"] += 1
            if calls["n"] == 2:
                raise RuntimeError("boom")
        return original(prefix, soft, **kw)

    engine.decode = flaky
    out = softreason.search(_cfg(), engine, _problem())
    assert out.stats.stop_reason == "error" and "boom" in out.stats.error
    assert out.stats.candidates == 4 and out.text


def test_self_consistency_votes_over_samples():
    engine = FakeEngine(verdict="5")
    out = baselines.self_consistency(_cfg(n=3), engine, _problem())
    assert out.stats.candidates == 3 and out.stats.answer == 5.0


# --- preset v2: grouped verifier, strict parse, re-scored rewards, stopping, selection -------


def _alternating():
    """Candidates answer 1, 2, 1, 2, ...: never a unanimous round."""
    answers = itertools.cycle([1, 2])
    return lambda v: next(answers)


def test_presets_fill_only_the_keys_not_given():
    v1 = SoftReasonConfig.from_model_args(preset="v1")
    v2 = SoftReasonConfig.from_model_args(preset="v2")
    v3 = SoftReasonConfig.from_model_args()
    assert (v1.verifier, v1.rescore, v1.min_rounds, v1.stop_unanimous) == (
        "attempts", False, 2, False)
    assert (v2.preset, v2.verifier, v2.rescore, v2.stop_unanimous) == ("v2", "grouped", True, True)
    assert (v1.sigma, v2.sigma, v2.sigma_scale, v2.base) == (1.0, 8.0, "embedding_rms", "token")
    assert (v1.w_verifier, v2.w_verifier, v2.verifier_force_answer) == (1.0, 1.0, False)
    # v3, the default: v2 without the verifier (forcing on for whoever turns it back on)
    assert (v3.preset, v3.w_verifier, v3.verifier_force_answer) == ("v3", 0.0, True)
    assert {k: v for k, v in v3.to_dict().items() if k not in (
        "preset", "w_verifier", "verifier_force_answer")} == {
        k: v for k, v in v2.to_dict().items() if k not in (
            "preset", "w_verifier", "verifier_force_answer")}
    mixed = SoftReasonConfig.from_model_args(preset="v1", sigma="4", verifier="grouped")
    assert (mixed.sigma, mixed.verifier, mixed.rescore) == (4.0, "grouped", False)
    assert len({v1.fingerprint(), v2.fingerprint(), v3.fingerprint(), mixed.fingerprint()}) == 4
    with pytest.raises(ValueError, match="preset='v9' is not allowed; choose one of v1, v2, v3"):
        SoftReasonConfig.from_model_args(preset="v9")


def test_the_baselines_fingerprints_ignore_soft_reasoning_keys():
    """greedy/sc cannot read sigma, the verifier or the preset: a new default preset must not
    invalidate their caches and cells; a key they do read still changes the fingerprint."""
    for search, reads in (("greedy", {"top_p": 0.9}), ("sc", {"temperature": 0.7, "n": 4})):
        base = SoftReasonConfig.from_model_args(search=search)
        for other in ({"preset": "v1"}, {"preset": "v2"}, {"sigma": 2.0}, {"w_verifier": 1.0}):
            assert SoftReasonConfig.from_model_args(search=search, **other).fingerprint() \
                == base.fingerprint()
        for key, value in reads.items():
            assert SoftReasonConfig.from_model_args(search=search, **{key: value}).fingerprint() \
                != base.fingerprint()
        assert "preset" not in base.output_settings()
    # Soft Reasoning keeps every key
    soft = SoftReasonConfig.from_model_args()
    assert soft.fingerprint() != SoftReasonConfig.from_model_args(preset="v2").fingerprint()
    assert "temperature" in soft.output_settings()


def test_grouped_verifier_shows_each_answer_once_with_its_count_and_letter_labels():
    seen = []
    answers = iter([5, 5, 5, 9])
    engine = FakeEngine(answer_fn=lambda v: next(answers))
    problem = _problem()
    problem.render = lambda text: seen.append(text) or [9]
    softreason.search(_cfg(max_rounds=1, min_rounds=1), engine, problem)
    [prompt] = seen
    assert "Candidate A: final answer 5, reached by 3 of 4 attempts" in prompt
    assert "Candidate B: final answer 9, reached by 1 of 4 attempts" in prompt
    assert prompt.count("Its reasoning:") == 2 and "Attempt 1" not in prompt


@pytest.mark.parametrize("reply, verdict", [
    ("I checked them.\nAttempt 3 is correct.", None),  # v1 read this as the answer 3
    ("Checked.\nAnswer: attempt 3", None),
    ("Candidate A is right, 3 apples.\nAnswer: A", None),
    ("Work: 2 + 5 = 7.\n**Answer:** 7", 7.0),
    ("Answer: 4\nOn reflection, 7.\nAnswer: 7", 7.0),
])
def test_grouped_verifier_reads_only_its_final_answer_line(reply, verdict):
    engine = FakeEngine(verdict=reply, answer_fn=_alternating())
    out = softreason.search(_cfg(max_rounds=1, min_rounds=1), engine, _problem())
    assert out.stats.verifier_answers == [verdict]


class ForcingEngine(FakeEngine):
    """The verifier's analysis stops without an answer line; continued after "Answer:" (the
    prompt ends in the encoded FORCE_SUFFIX) it states ``forced``."""

    def __init__(self, analysis="2 + 5 is 7, so candidate B is", forced=" 7", **kw):
        super().__init__(verdict=analysis + "\n", **kw)
        self.analysis, self.forced = analysis, forced
        self.tokenizer.encode = lambda text, add_special_tokens=False: [ord(c) for c in text]
        self.forced_calls: list[tuple[list[int], list[str], int]] = []

    def decode(self, prefix, soft, *, until=None, max_new_tokens=16, n=1, **kw):
        ids = prefix.prompt_ids
        if soft is None and ids[-len(verifier.FORCE_SUFFIX):] == [ord(c) for c in
                                                                   verifier.FORCE_SUFFIX]:
            self.forced_calls.append((ids, list(until), max_new_tokens))
            return [Candidate(self.forced, [5, 6], [0.0, 0.0], "until")]
        return super().decode(prefix, soft, until=until, max_new_tokens=max_new_tokens, n=n, **kw)


def test_a_verdict_without_an_answer_line_is_forced_only_when_asked():
    cfg = _cfg(max_rounds=1, min_rounds=1)
    plain = ForcingEngine(answer_fn=_alternating())
    out = softreason.search(cfg, plain, _problem())
    assert out.stats.verifier_answers == [None] and plain.forced_calls == []
    assert out.stats.forced_verdicts == 0

    engine = ForcingEngine(answer_fn=_alternating())
    out = softreason.search(replace(cfg, verifier_force_answer=True), engine, _problem())
    assert out.stats.verifier_answers == [7.0] and out.stats.forced_verdicts == 1
    [(ids, until, cap)] = engine.forced_calls
    # the verifier prompt, then the reply's text (trailing space cut) and "\nAnswer:"
    body = [ord(c) for c in engine.analysis + verifier.FORCE_SUFFIX]
    assert ids == [9] * 5 + body
    assert until[0] == "\n" and cap == verifier.FORCE_MAX_TOKENS
    # cost: both decodes' tokens and both prefills are counted
    assert out.stats.verifier_tokens == 2 + 2
    direct = verifier.ask(ForcingEngine(), _problem(), "check", max_new_tokens=9,
                          parse=lambda text, kind: None if "Answer:" not in text else 7.0,
                          force_answer=True)
    assert (direct.answer, direct.forced, direct.tokens, direct.forced_tokens) == (7.0, True, 4, 2)
    assert out.stats.prompt_tokens == 3 + 5 + len(ids)
    assert out.trace["verifier"] == [engine.analysis + verifier.FORCE_SUFFIX + " 7"]


def test_forcing_leaves_a_verdict_with_an_answer_line_alone():
    engine = ForcingEngine(answer_fn=_alternating())
    engine.verdict = "Checked.\nAnswer: 1"
    out = softreason.search(_cfg(max_rounds=1, min_rounds=1, verifier_force_answer=True),
                            engine, _problem())
    assert out.stats.verifier_answers == [1.0] and engine.forced_calls == []
    assert out.stats.forced_verdicts == 0


def test_force_answer_is_off_in_v1_and_v2_and_out_of_their_fingerprints_on_in_v3():
    for preset in ("v1", "v2"):
        cfg = SoftReasonConfig.from_model_args(preset=preset)
        assert cfg.verifier_force_answer is False
        assert "verifier_force_answer" not in cfg.output_settings()
    on = SoftReasonConfig.from_model_args(preset="v2", verifier_force_answer="true")
    assert on.verifier_force_answer is True and on.output_settings()["verifier_force_answer"]
    assert on.fingerprint() != SoftReasonConfig.from_model_args(preset="v2").fingerprint()
    assert SoftReasonConfig.from_model_args().verifier_force_answer is True  # v3


def test_rescored_rewards_follow_the_latest_verdict_across_rounds():
    # the verdict flips from 1 to 2 in round 2: round 1's rewards must be re-scored against 2
    engine = FakeEngine(verdict=lambda call: 1 if call == 1 else 2,
                        answer_fn=_alternating())
    out = softreason.search(_cfg(max_rounds=2, min_rounds=2), engine, _problem())
    assert out.stats.verifier_answers == [1.0, 2.0]
    for cand in out.trace["candidates"]:
        assert cand["agree"] == (1.0 if cand["answer"] == 2.0 else 0.0)
        assert cand["reward"] == pytest.approx(cand["agree"] + 0.5)
    # v1 keeps each round's own verdict: round 1 agreed with 1
    old = softreason.search(_cfg("v1", max_rounds=2, min_rounds=2), FakeEngine(
        verdict=lambda call: 1 if call == 1 else 2, answer_fn=_alternating()),
        _problem())
    first = [c for c in old.trace["candidates"] if c["round"] == 1]
    assert all(c["agree"] == (1.0 if c["answer"] == 1.0 else 0.0) for c in first)


def test_the_gp_is_fitted_on_the_rescored_history(monkeypatch):
    from lm_eval_softreason.search import bo

    fitted = []
    fit = bo._fit_gp

    def spy(x, y, box):
        fitted.append(y.clone())
        return fit(x, y, box)

    monkeypatch.setattr(bo, "_fit_gp", spy)
    engine = FakeEngine(verdict=lambda call: 1 if call < 3 else 2,
                        answer_fn=_alternating())
    out = softreason.search(_cfg(max_rounds=3, min_rounds=3, acquisition="logei"), engine,
                            _problem())
    # the fit before round 3 sees round 1 and 2 scored against verdict 1; the final record
    # has all of them against verdict 2 (the re-scored, current objective)
    assert len(fitted) == 2 and fitted[1].shape == (8,)
    final = torch.tensor(out.stats.rewards[:8], dtype=torch.float64)
    answers = torch.tensor(out.stats.candidate_answers[:8])
    assert torch.allclose(fitted[1], (answers == 1).double() + 0.5)
    assert torch.allclose(final, (answers == 2).double() + 0.5)


def test_unanimous_first_round_stops_without_a_verifier_call():
    engine = FakeEngine(answer_fn=lambda v: 6)
    out = softreason.search(_cfg(max_rounds=5, min_rounds=1), engine, _problem())
    assert out.stats.rounds == 1 and out.stats.stop_reason == "unanimous"
    assert engine.verifier_prompts == [] and out.stats.verifier_tokens == 0
    assert out.stats.answer == 6.0
    # a split first round goes on, and so does a unanimous one when the rule is off
    split = softreason.search(_cfg(max_rounds=5, min_rounds=1), FakeEngine(), _problem())
    assert split.stats.rounds > 1 or split.stats.stop_reason != "unanimous"
    off = softreason.search(_cfg(max_rounds=2, min_rounds=2, stop_unanimous=False),
                            FakeEngine(answer_fn=lambda v: 6), _problem())
    assert off.stats.rounds == 2


def test_token_budget_counts_verifier_tokens_and_stops_before_a_round_that_would_pass_it():
    # a round costs 4 candidates x 3 tokens + 2 verifier tokens = 14
    out = softreason.search(_cfg(max_rounds=5, min_rounds=5, token_budget=30), FakeEngine(),
                            _problem())
    assert out.stats.gen_tokens == 28 and out.stats.rounds == 2
    assert out.stats.stop_reason == "token_budget"
    # without the verifier's tokens the same budget affords more rounds: they are counted
    cheap = softreason.search(_cfg(max_rounds=5, min_rounds=5, token_budget=30,
                                   w_verifier=0.0), FakeEngine(), _problem())
    assert cheap.stats.gen_tokens == 24 and cheap.stats.rounds == 2
    assert softreason.search(_cfg(max_rounds=5, min_rounds=5, token_budget=36, w_verifier=0.0),
                             FakeEngine(), _problem()).stats.rounds == 3


def test_select_rules_read_the_same_candidates_differently():
    engine = FakeEngine()
    cands = [{"answer": 1.0, "reward": 0.2, "text": "a1"}, {"answer": 1.0, "reward": 0.2, "text": "a2"},
             {"answer": 2.0, "reward": 1.5, "text": "b1"}]

    def pick(select, verifier_answers):
        state = softreason._Search(_cfg(select=select), engine, _problem())
        state.candidates, state.verifier_answers = list(cands), list(verifier_answers)
        state.analyses = ["check"] * len(verifier_answers)
        state.choose()
        return state.stats.answer

    assert pick("vote_candidates", [2.0, 2.0]) == 1.0  # verifier answers do not vote
    assert pick("vote", [2.0, 2.0]) == 2.0  # they do: 2 + 1 votes against 2
    assert pick("weighted", []) == 2.0  # reward 1.5 against 0.4
    assert pick("best", []) == 2.0
