"""Soft Reasoning (Zhu et al., ICML 2025) for one request: perturb the first response
position's embedding, decode greedily, reward each candidate with the self-verifier and its
coherence, let Bayesian optimisation (``loop.run_loop`` + ``bo``) choose the next points, and
vote. ``search=random`` is the same with random points instead of the GP.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from ..answers import (answers_match, extract_answer, final_line_answer, group_answers,
                       majority_answer)
from ..config import SoftReasonConfig
from ..engine import Candidate, DecodingEngine, Prefix
from ..stats import RequestStats
from .loop import RoundOutcome, run_loop
from .problem import Problem, SearchOutcome
from .verifier import ask, grouped_verification_prompt, verification_prompt


def projection(seed: int, d: int, hidden: int) -> torch.Tensor:
    """The request's fixed random projection ``A`` (d x hidden), entries N(0, 1)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(d, hidden, generator=generator, dtype=torch.float64)


def soft_vectors(x: torch.Tensor, base: torch.Tensor, a: torch.Tensor, sigma: float) -> torch.Tensor:
    """``base + sigma * x A / sqrt(d)``: q x hidden; each coordinate of the perturbation has
    standard deviation ``sigma`` when x ~ N(0, I)."""
    return base + sigma * (x.to(a.dtype) @ a) / math.sqrt(a.shape[0])


@dataclass
class Perturbation:
    """Where a request's soft vectors come from: ``base + sigma_abs * x A / sqrt(d)``."""

    base: torch.Tensor  # hidden; the greedy first token's embedding, or zeros
    a: torch.Tensor  # d x hidden, the request's fixed projection
    sigma_abs: float  # per-coordinate std in embedding units
    lead: str  # text of the token the vector stands for ("" for base=zero)

    def vectors(self, x: torch.Tensor) -> torch.Tensor:
        return soft_vectors(x, self.base, self.a, self.sigma_abs)


def perturbation(cfg: SoftReasonConfig, engine: DecodingEngine, prefix: Prefix,
                 seed: int) -> Perturbation:
    """The request's perturbation under ``cfg`` (sigma, sigma_scale, base, proj_dim)."""
    hidden = engine.hidden_size
    scale = engine.embedding_rms() if cfg.sigma_scale == "embedding_rms" else 1.0
    if cfg.base == "token":
        token = prefix.greedy_token
        base = engine.embed([token])[0].double().cpu()
        # the vector stands for that token, perturbed: show its text before the continuation
        lead = engine.tokenizer.decode([token], skip_special_tokens=True)
    else:
        base, lead = torch.zeros(hidden, dtype=torch.float64), ""
    return Perturbation(base, projection(seed, cfg.proj_dim, hidden), cfg.sigma * scale, lead)


class _Search:
    """State of one request's search; ``evaluate`` is the loop's black box."""

    def __init__(self, cfg: SoftReasonConfig, engine: DecodingEngine, problem: Problem):
        self.cfg, self.engine, self.problem = cfg, engine, problem
        self.stats = RequestStats(search=cfg.search)
        self.prefix = engine.prefill(problem.prompt_ids)
        self.perturbation = perturbation(cfg, engine, self.prefix, problem.seed)
        self.sigma, self.lead = self.perturbation.sigma_abs, self.perturbation.lead
        self.candidates: list[dict] = []  # every decoded candidate, in order
        self.analyses: list[str] = []  # verifier analyses, one per verified round
        self.verifier_answers: list = []
        self.verdict_rounds: list[int] = []  # the round each verifier answer was given in
        self.verdict = None  # the latest verdict (rescore mode)

    def evaluate(self, x: torch.Tensor) -> RoundOutcome:
        cfg, problem = self.cfg, self.problem
        start = time.perf_counter()
        soft = self.perturbation.vectors(x)
        decoded: list[Candidate] = self.engine.decode(
            self.prefix, soft, until=problem.until, max_new_tokens=problem.max_gen_toks
        )
        self.stats.decode_s += time.perf_counter() - start
        texts = [self.lead + c.text for c in decoded]
        answers = [extract_answer(t, problem.answer_type) for t in texts]
        tokens = sum(len(c.token_ids) for c in decoded)
        self.stats.candidate_tokens += tokens
        self.stats.candidates += len(decoded)
        round_index = len(self.stats.distinct_answers_per_round) + 1
        distinct = len(group_answers(answers, problem.answer_type))
        self.stats.distinct_answers_per_round.append(distinct)
        new = [{"round": round_index, "x": xi.tolist(), "text": text, "answer": answer,
                "coherence": cand.coherence, "tokens": len(cand.token_ids),
                "stop": cand.stop_reason}
               for xi, text, answer, cand in zip(x, texts, answers, decoded)]
        self.candidates.extend(new)
        # all k agree on one answer: the vote is settled and a verdict could not change it
        unanimous = distinct == 1 and all(a is not None for a in answers)
        stop = "unanimous" if cfg.stop_unanimous and unanimous and round_index == 1 else None
        verdict = None
        if cfg.w_verifier > 0 and stop is None:
            verdict, verifier_tokens = self._verify(new)
            tokens += verifier_tokens
            self.verdict_rounds.append(round_index)
        if cfg.rescore:
            # one objective for the whole search: every candidate against the latest verdict
            if verdict is not None:  # an unparsable reply keeps the verdict before it
                self.verdict = verdict
            for cand in self.candidates:
                self._score(cand, self.verdict)
            history = torch.tensor([c["reward"] for c in self.candidates], dtype=torch.float64)
            return RoundOutcome(rewards=history[-len(new):], tokens=tokens, history=history,
                                stop=stop)
        for cand in new:  # v1: each round scored against its own verdict, never revisited
            self._score(cand, verdict)
        return RoundOutcome(rewards=torch.tensor([c["reward"] for c in new], dtype=torch.float64),
                            tokens=tokens, stop=stop)

    def _score(self, cand: dict, verdict: object) -> None:
        agree = 1.0 if answers_match(cand["answer"], verdict, self.problem.answer_type) else 0.0
        cand["agree"] = agree
        cand["reward"] = self.cfg.w_verifier * agree + self.cfg.w_coherence * cand["coherence"]

    def _verify(self, new: list[dict]) -> tuple[object, int]:
        """One verifier generation; returns (its answer or None, tokens it generated).

        ``attempts`` (v1): this round's parsable candidates, de-duplicated by text, plus the
        verifier's earlier analyses; any answer in the reply counts. ``grouped`` (v2): every
        candidate so far, one reasoning per distinct answer with how many reached it; only
        the reply's final ``Answer:`` line counts."""
        answer_type = self.problem.answer_type
        if self.cfg.verifier == "grouped":
            pool = self.candidates
            groups = group_answers([c["answer"] for c in pool], answer_type)
            if not groups:
                return None, 0
            shown = [(max((pool[i] for i in g), key=lambda c: c["coherence"]), len(g))
                     for g in sorted(groups, key=len, reverse=True)]  # stable: ties first-seen
            prompt = grouped_verification_prompt(
                self.problem.question, [(c["text"], c["answer"], n) for c, n in shown], len(pool))
            parse = final_line_answer
        else:
            seen, attempts = set(), []
            for cand in new:
                if cand["answer"] is not None and cand["text"] not in seen:
                    seen.add(cand["text"])
                    attempts.append((cand["text"], cand["answer"]))
            if not attempts:
                return None, 0
            prompt = verification_prompt(self.problem.question, attempts, self.analyses)
            parse = extract_answer
        start = time.perf_counter()
        verdict = ask(self.engine, self.problem, prompt,
                      max_new_tokens=self.cfg.verifier_max_gen_toks, parse=parse,
                      force_answer=self.cfg.verifier_force_answer)
        self.stats.prompt_tokens += verdict.prompt_tokens
        self.stats.verify_s += time.perf_counter() - start
        self.stats.verifier_tokens += verdict.tokens
        self.stats.forced_verdicts += verdict.forced
        self.analyses.append(verdict.text)
        self.verifier_answers.append(verdict.answer)
        return verdict.answer, verdict.tokens

    def choose(self) -> str:
        """The final answer by ``cfg.select`` over everything seen; the text to return."""
        ranked = sorted(self.candidates, key=lambda c: -c["reward"])  # stable: ties keep order
        answer_type = self.problem.answer_type
        answers = [c["answer"] for c in ranked]  # highest reward first: wins first-seen ties
        if not ranked:
            winner = None
        elif self.cfg.select == "best":
            winner = ranked[0]["answer"]
        elif self.cfg.select == "vote":  # the paper's: candidates and verifier answers
            winner = majority_answer(answers + self.verifier_answers, answer_type)
        elif self.cfg.select == "vote_candidates":
            winner = majority_answer(answers, answer_type)
        else:  # weighted: each candidate votes with its reward
            winner = majority_answer(answers, answer_type,
                                     weights=[max(c["reward"], 0.0) for c in ranked])
        self.stats.answer = winner
        for cand in ranked:
            if answers_match(cand["answer"], winner, answer_type):
                return cand["text"]
        for analysis, answer in zip(self.analyses, self.verifier_answers):
            if answers_match(answer, winner, answer_type):
                return analysis  # only the verifier produced this answer
        return ranked[0]["text"] if ranked else ""


def search(cfg: SoftReasonConfig, engine: DecodingEngine, problem: Problem) -> SearchOutcome:
    """Run Soft Reasoning (``cfg.search`` = softreason, or random for the no-GP baseline)."""
    state = _Search(cfg, engine, problem)
    state.stats.prompt_tokens += len(problem.prompt_ids)
    error = None
    try:
        result = run_loop(
            state.evaluate, d=cfg.proj_dim, k=cfg.k, max_rounds=cfg.max_rounds,
            min_rounds=cfg.min_rounds, stop_threshold=cfg.stop_threshold,
            token_budget=cfg.token_budget,
            acquisition="random" if cfg.search == "random" else cfg.acquisition,
            box=cfg.box, seed=problem.seed, min_spread=cfg.min_spread,
        )
        state.stats.rounds, state.stats.stop_reason = result.rounds, result.stop_reason
        state.stats.bo_s = result.bo_s
        state.stats.bo_fallbacks = len(result.fallbacks)
    except Exception as exc:  # keep what earlier rounds found; the adapter logs it
        if not state.candidates:
            raise
        error = f"{type(exc).__name__}: {exc}"
        state.stats.rounds = len(state.stats.distinct_answers_per_round)
        state.stats.stop_reason = "error"
        state.stats.error = error
    text = state.choose()
    state.stats.candidate_answers = [c["answer"] for c in state.candidates]
    state.stats.verifier_answers = list(state.verifier_answers)
    state.stats.verdict_rounds = list(state.verdict_rounds)
    state.stats.rewards = [c["reward"] for c in state.candidates]
    trace = {
        "seed": problem.seed, "sigma_abs": state.sigma, "lead": state.lead,
        "candidates": state.candidates, "verifier": state.analyses,
        "verifier_answers": state.verifier_answers, "verdict_rounds": state.verdict_rounds,
        "error": error,
    }
    return SearchOutcome(text, state.stats, trace)
