"""Baselines under the same engine: plain greedy decoding and self-consistency."""

from __future__ import annotations

import time

from ..answers import answers_match, extract_answer, majority_answer
from ..config import SoftReasonConfig
from ..engine import DecodingEngine
from ..stats import RequestStats
from .problem import Problem, SearchOutcome


def greedy(cfg: SoftReasonConfig, engine: DecodingEngine, problem: Problem) -> SearchOutcome:
    """One greedy continuation: what lm-eval's ``hf`` model returns for the same prompt."""
    stats = RequestStats(search="greedy", prompt_tokens=len(problem.prompt_ids))
    start = time.perf_counter()
    [cand] = engine.decode(
        engine.prefill(problem.prompt_ids), None, until=problem.until,
        max_new_tokens=problem.max_gen_toks,
    )
    stats.decode_s = time.perf_counter() - start
    stats.candidate_tokens, stats.candidates, stats.rounds = len(cand.token_ids), 1, 1
    stats.stop_reason = cand.stop_reason
    stats.answer = extract_answer(cand.text, problem.answer_type)
    stats.candidate_answers = [stats.answer]
    return SearchOutcome(cand.text, stats, {"candidates": [{"text": cand.text}]})


def self_consistency(
    cfg: SoftReasonConfig, engine: DecodingEngine, problem: Problem
) -> SearchOutcome:
    """``cfg.n`` samples at ``cfg.temperature``/``cfg.top_p`` from one prefill, majority vote.

    Returns the most coherent sample among those with the winning answer.
    """
    stats = RequestStats(search="sc", prompt_tokens=len(problem.prompt_ids))
    start = time.perf_counter()
    samples = engine.decode(
        engine.prefill(problem.prompt_ids), None, until=problem.until,
        max_new_tokens=problem.max_gen_toks, n=cfg.n, sample=True,
        temperature=cfg.temperature, top_p=cfg.top_p, seed=problem.seed,
    )
    stats.decode_s = time.perf_counter() - start
    answers = [extract_answer(s.text, problem.answer_type) for s in samples]
    winner = majority_answer(answers, problem.answer_type)
    stats.candidate_tokens = sum(len(s.token_ids) for s in samples)
    stats.candidates, stats.rounds, stats.stop_reason = len(samples), 1, "samples"
    stats.candidate_answers, stats.answer = answers, winner
    stats.rewards = [s.coherence for s in samples]
    stats.distinct_answers_per_round = [len({repr(a) for a in answers if a is not None})]
    ranked = sorted(zip(samples, answers), key=lambda sa: -sa[0].coherence)
    text = next((s.text for s, a in ranked if answers_match(a, winner, problem.answer_type)),
                ranked[0][0].text)
    trace = {"candidates": [{"text": s.text, "answer": a, "coherence": s.coherence}
                            for s, a in zip(samples, answers)]}
    return SearchOutcome(text, stats, trace)
