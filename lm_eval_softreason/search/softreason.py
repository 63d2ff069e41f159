"""Soft Reasoning (Zhu et al., ICML 2025) for one request: perturb the first response
position's embedding, decode greedily, reward each candidate with the self-verifier and its
coherence, let Bayesian optimisation (``loop.run_loop`` + ``bo``) choose the next points, and
vote. ``search=random`` is the same with random points instead of the GP.
"""

from __future__ import annotations

import math
import time

import torch

from ..answers import extract_answer, majority_answer, answers_match
from ..config import SoftReasonConfig
from ..engine import Candidate, DecodingEngine
from ..stats import RequestStats
from .loop import RoundOutcome, run_loop
from .problem import Problem, SearchOutcome
from .verifier import verification_prompt


def projection(seed: int, d: int, hidden: int) -> torch.Tensor:
    """The request's fixed random projection ``A`` (d x hidden), entries N(0, 1)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(d, hidden, generator=generator, dtype=torch.float64)


def soft_vectors(x: torch.Tensor, base: torch.Tensor, a: torch.Tensor, sigma: float) -> torch.Tensor:
    """``base + sigma * x A / sqrt(d)``: q x hidden; each coordinate of the perturbation has
    standard deviation ``sigma`` when x ~ N(0, I)."""
    return base + sigma * (x.to(a.dtype) @ a) / math.sqrt(a.shape[0])


class _Search:
    """State of one request's search; ``evaluate`` is the loop's black box."""

    def __init__(self, cfg: SoftReasonConfig, engine: DecodingEngine, problem: Problem):
        self.cfg, self.engine, self.problem = cfg, engine, problem
        self.stats = RequestStats(search=cfg.search)
        self.prefix = engine.prefill(problem.prompt_ids)
        hidden = engine.hidden_size
        self.a = projection(problem.seed, cfg.proj_dim, hidden)
        scale = engine.embedding_rms() if cfg.sigma_scale == "embedding_rms" else 1.0
        self.sigma = cfg.sigma * scale
        if cfg.base == "token":
            token = self.prefix.greedy_token
            self.base = engine.embed([token])[0].double().cpu()
            # the vector stands for that token, perturbed: show its text before the continuation
            self.lead = engine.tokenizer.decode([token], skip_special_tokens=True)
        else:
            self.base = torch.zeros(hidden, dtype=torch.float64)
            self.lead = ""
        self.candidates: list[dict] = []  # every decoded candidate, in order
        self.analyses: list[str] = []  # verifier analyses, one per verified round
        self.verifier_answers: list = []

    def evaluate(self, x: torch.Tensor) -> RoundOutcome:
        cfg, problem = self.cfg, self.problem
        start = time.perf_counter()
        soft = soft_vectors(x, self.base, self.a, self.sigma)
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
        self.stats.distinct_answers_per_round.append(
            len({repr(a) for a in answers if a is not None})
        )
        verdict = None
        if cfg.w_verifier > 0:
            verdict, verifier_tokens = self._verify(texts, answers)
            tokens += verifier_tokens
        rewards = []
        for xi, text, answer, cand in zip(x, texts, answers, decoded):
            agree = 1.0 if answers_match(answer, verdict, problem.answer_type) else 0.0
            reward = cfg.w_verifier * agree + cfg.w_coherence * cand.coherence
            rewards.append(reward)
            self.candidates.append({
                "round": round_index, "x": xi.tolist(), "text": text, "answer": answer,
                "agree": agree, "coherence": cand.coherence, "reward": reward,
                "tokens": len(cand.token_ids), "stop": cand.stop_reason,
            })
        return RoundOutcome(rewards=torch.tensor(rewards, dtype=torch.float64), tokens=tokens)

    def _verify(self, texts: list[str], answers: list) -> tuple[object, int]:
        """One verifier generation over this round's parsable candidates: (answer, tokens)."""
        seen, attempts = set(), []
        for text, answer in zip(texts, answers):
            if answer is not None and text not in seen:
                seen.add(text)
                attempts.append((text, answer))
        if not attempts:
            return None, 0
        start = time.perf_counter()
        prompt = verification_prompt(self.problem.question, attempts, self.analyses)
        ids = self.problem.render(prompt)
        prefilled = self.engine.stats.prefill_tokens
        [reply] = self.engine.decode(
            self.engine.prefill(ids), None, until=self.problem.until,
            max_new_tokens=self.cfg.verifier_max_gen_toks,
        )
        self.stats.prompt_tokens += self.engine.stats.prefill_tokens - prefilled
        self.stats.verify_s += time.perf_counter() - start
        self.stats.verifier_tokens += len(reply.token_ids)
        answer = extract_answer(reply.text, self.problem.answer_type)
        self.analyses.append(reply.text)
        self.verifier_answers.append(answer)
        return answer, len(reply.token_ids)

    def choose(self) -> str:
        """Vote (or best reward) over everything seen; the text to return."""
        ranked = sorted(self.candidates, key=lambda c: -c["reward"])  # stable: ties keep order
        answer_type = self.problem.answer_type
        if self.cfg.select == "best" or not ranked:
            winner = ranked[0]["answer"] if ranked else None
        else:
            # highest reward first, so majority_answer's first-seen tie-break is "higher reward"
            votes = [c["answer"] for c in ranked] + self.verifier_answers
            winner = majority_answer(votes, answer_type)
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
            box=cfg.box, seed=problem.seed,
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
    state.stats.rewards = [c["reward"] for c in state.candidates]
    trace = {
        "seed": problem.seed, "sigma_abs": state.sigma, "lead": state.lead,
        "candidates": state.candidates, "verifier": state.analyses,
        "verifier_answers": state.verifier_answers, "error": error,
    }
    return SearchOutcome(text, state.stats, trace)
