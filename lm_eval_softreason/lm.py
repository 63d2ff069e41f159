"""The lm-eval adapter: ``Instance`` objects in, answer strings (with their cost) out.

``SoftReasonLM`` is lm-eval's ``HFLM`` with a different ``generate_until``: each request is
tokenised exactly as ``hf`` would tokenise it, handed to the configured search
(``search/``), and the chosen text comes back as a ``GenerationResult`` that carries the
request's cost record. ``loglikelihood*``, chat templates and system instructions are HFLM's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from lm_eval.models.huggingface import HFLM
from tqdm import tqdm

from . import __version__, distributed
from .answers import ANSWER_TYPES
from .cache import isolate_cache
from .config import SoftReasonConfig
from .engine import DecodingEngine, EngineStats
from .loading import load_model_and_tokenizer, load_vllm
from .lockstep import auto_slots, run_lockstep
from .search import baselines, softreason
from .search.problem import Engine, Problem, SearchOutcome
from .stats import GenerationResult, RequestStats

log = logging.getLogger(__name__)

# the function that runs each name in search/choices.py's SEARCHES (the one list of names,
# which config validates against; tests/test_lm.py checks the two agree)
SEARCH_FUNCTIONS: dict[str, Callable[[SoftReasonConfig, Engine, Problem], SearchOutcome]] = {
    "softreason": softreason.search,
    "random": softreason.search,
    "greedy": baselines.greedy,
    "sc": baselines.self_consistency,
}

# gen_kwargs keys the model understands; `answer_type` is ours and is popped first
_GEN_KWARGS = ("until", "max_gen_toks", "do_sample", "temperature", "top_p", "answer_type")


@dataclass
class _Prepared:
    """A request made ready for its search (tokenised, checked)."""

    problem: Problem
    truncated: bool
    sampling: float | None  # the task's do_sample temperature, if it asked for sampling


def _unique_requests(requests: list) -> tuple[list[tuple[Any, int]], list[int]]:
    """(request, repeat index) to run, and for each input position the run that answers it.

    The k-th occurrence of one Instance object is its repeat k while k < ``instance.repeats``;
    later occurrences are lm-eval's rank padding and reuse repeat ``k % repeats``."""
    unique: list[tuple[Any, int]] = []
    runs: dict[tuple[int, int], int] = {}
    seen: dict[int, int] = {}
    source = []
    for request in requests:
        k = seen.get(id(request), 0)
        seen[id(request)] = k + 1
        repeat = k % max(1, int(getattr(request, "repeats", 1) or 1))
        key = (id(request), repeat)
        if key not in runs:
            runs[key] = len(unique)
            unique.append((request, repeat))
        source.append(runs[key])
    return unique, source


def _context_and_kwargs(request: Any) -> tuple[str, dict]:
    context, gen_kwargs = request.args
    return context, dict(gen_kwargs)


def chat_opening(render: Callable[[list[dict[str, str]]], str]) -> str:
    """The text every prompt rendered by a chat template starts with: the common prefix of
    four conversations that differ in every message (with and without a system turn, which
    some templates refuse). "" when there is no template or no such prefix beyond whitespace.

    ``render`` turns a message list into the prompt string (the tokenizer's template)."""
    user = [[{"role": "user", "content": c}] for c in ("x", "y")]
    system = [[{"role": "system", "content": c}, *user[0]] for c in ("s", "t")]
    rendered = []
    for messages in user + system:
        try:
            rendered.append(render(messages))
        except Exception:  # no template, or one that refuses a system turn
            continue
    opening = os.path.commonprefix(rendered) if len(rendered) >= 2 else ""
    return opening if opening.strip() else ""


def request_seed(seed: int, context: str, repeat: int = 0) -> int:
    """Per-request seed from (config seed, request text, repeat index): independent of order
    and sharding; the repeats of a task with ``repeats: N`` get N different seeds."""
    key = f"{seed}\x00{context}" + (f"\x00{repeat}" if repeat else "")
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class SoftReasonLM(HFLM):
    """``lm_eval --model softreason --model_args ...``; keys are documented in the README."""

    def __init__(self, **model_args: Any) -> None:
        self.cfg = SoftReasonConfig.from_model_args(**model_args)
        engine: Engine | None = None
        if self.cfg.backend == "vllm":
            if distributed.launched_world_size() > 1:
                raise ValueError("softreason: backend=vllm runs in one process (vLLM spreads "
                                 "the model itself: tensor_parallel_size); launch it without "
                                 "torchrun/accelerate, or use backend=hf for data parallelism")
            accelerator = None
            model, tokenizer, self.model_name, engine = load_vllm(self.cfg)
        else:
            accelerator = distributed.start(self.cfg.device)  # torchrun / accelerate, N processes
            self.cfg = replace(self.cfg,
                               device=distributed.rank_device(self.cfg.device, accelerator))
            model, tokenizer, self.model_name = load_model_and_tokenizer(self.cfg)
        super().__init__(
            pretrained=model, tokenizer=tokenizer, batch_size=self.cfg.batch_size,
            max_length=self.cfg.max_length,
        )
        if accelerator is not None:  # what HFLM skips for a preloaded model
            self.accelerator = accelerator
            self._rank, self._world_size = accelerator.process_index, accelerator.num_processes
        self._all_rank_totals: list[dict[str, float]] | None = None
        self.engine = engine or DecodingEngine(self.model, self.tokenizer)
        # dtype=auto is bfloat16 on some machines and float32 on others: fingerprint the one used
        self._loaded_dtype = str(self.model.dtype).removeprefix("torch.")
        # what every chat-formatted prompt of this model starts with ("" if it has no template)
        self._chat_opening = chat_opening(self._render_chat)
        if not self._chat_opening and getattr(self.tokenizer, "chat_template", None):
            log.warning("softreason: cannot tell this chat template's prompts from plain ones; "
                        "the verifier's prompt will be plain text")
        self._warned: set[str] = set()
        self.totals: dict[str, float] = {
            "requests": 0, "gen_tokens": 0, "prompt_tokens": 0, "candidates": 0, "rounds": 0,
            "wall_s": 0.0, "bo_s": 0.0, "fallbacks": 0, "truncated": 0,
        }

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None):
        """``model_args`` win over the CLI's ``--batch_size/--device``. lm-eval's CLI sends
        ``device=cuda:0`` by default even on CPU-only machines, so that one value falls back
        to ``auto``; a ``device`` given in ``model_args`` is taken literally (and checked)."""
        extra = {k: v for k, v in (additional_config or {}).items()
                 if v is not None and k not in arg_dict}
        if str(extra.get("device", "")).startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                extra["device"] = "auto"
        return cls(**arg_dict, **extra)

    # --- the verifier's prompt: chat-formatted when the request's prompt is -----------------
    def _render_chat(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=True)

    def verifier_uses_chat(self, context: str) -> bool:
        """Whether the verifier's prompt for a request with this context is chat-formatted: as
        the request's own prompt is. lm-eval's ``--apply_chat_template`` renders the context
        with the model's chat template, so it starts with the template's opening exactly then.
        A function of the request (and the model) only, never of earlier calls."""
        return bool(self._chat_opening) and context.startswith(self._chat_opening)

    def _render_user_turn(self, text: str, chat: bool) -> list[int]:
        """Token ids of a verifier instruction: one user turn of the chat template (with the
        assistant turn opened), or the plain text and a newline."""
        if chat:
            return self._encode(self.apply_chat_template([{"role": "user", "content": text}]))
        return self._encode(text + "\n")

    def _encode(self, text: str) -> list[int]:
        """Token ids exactly as HFLM's generate_until makes them (same BOS handling)."""
        return self.tok_batch_encode([text])[0][0].tolist()

    # --- generation -----------------------------------------------------------------------
    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        """One search per request; ``batch_size`` > 1 runs that many searches in lockstep
        (``lockstep.py``), so each decode step serves all their rows. Results come back in
        request order and each goes into lm-eval's cache as soon as it is done."""
        # lm-eval passes a task's `repeats` as the same Instance N times (each a new sample),
        # and in multi-process runs appends copies of a rank's last request beyond that to even
        # out the ranks: those copies are answered from their original, never run or counted
        unique, source = _unique_requests(requests)
        # tokenise every request first, here: bad input fails before any compute
        prepared = [self._problem(*_context_and_kwargs(r), r, repeat) for r, repeat in unique]
        results: list[GenerationResult | None] = [None] * len(unique)
        slots = self.concurrency(len(unique))
        bar = tqdm(total=len(unique), desc=f"softreason ({self.cfg.search}, {slots} at once)",
                   disable=disable_tqdm or self.rank != 0)

        def done(i: int, outcome: SearchOutcome, engine_stats: EngineStats) -> None:
            request = unique[i][0]
            results[i] = self._finish(prepared[i], outcome, engine_stats)
            # into lm-eval's cache at once: a killed run resumes from here (--use_cache)
            self.cache_hook.add_partial("generate_until", request.args, results[i])
            if self.cfg.trace_dir:
                self._trace(request, prepared[i].problem, outcome)
            bar.update(1)

        if slots == 1:
            for i, prep in enumerate(prepared):
                before = self.engine.stats.copy()
                outcome = self._search(self.engine, prep)
                done(i, outcome, self.engine.stats.since(before))
        else:
            run_lockstep(self.engine, [partial(self._search, prep=prep) for prep in prepared],
                         slots, done)
        bar.close()
        return [results[i] for i in source]

    def concurrency(self, n_requests: int) -> int:
        """Searches in flight: ``batch_size``, or with ``auto`` as many as fit in free memory."""
        if self.cfg.batch_size != "auto":
            return min(int(self.cfg.batch_size), max(1, n_requests))
        if self.cfg.backend == "vllm":  # vLLM schedules and pages its own KV memory
            return min(self.cfg.max_batch_size or 64, max(1, n_requests))
        rows = {"softreason": self.cfg.k + 1, "random": self.cfg.k + 1, "sc": self.cfg.n}
        slots = auto_slots(self.engine, rows.get(self.cfg.search, 1), min(self.max_length, 4096),
                           cap=self.cfg.max_batch_size)
        return min(slots, max(1, n_requests))

    def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list:
        self._hf_backend_only("loglikelihood")
        return super().loglikelihood(requests, disable_tqdm)

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list:
        self._hf_backend_only("loglikelihood_rolling")
        return super().loglikelihood_rolling(requests, disable_tqdm)

    def _hf_backend_only(self, kind: str) -> None:
        if self.cfg.backend != "hf":
            raise NotImplementedError(
                f"softreason: backend={self.cfg.backend} answers generate_until requests only; "
                f"this task asks for {kind}: run it with backend=hf")

    def _search(self, engine: Engine, prep: "_Prepared") -> SearchOutcome:
        """Run the configured search; any exception becomes a greedy fallback (one hard
        request must not end a long run)."""
        start = time.perf_counter()
        problem = prep.problem
        run = SEARCH_FUNCTIONS[self.cfg.search]
        if prep.sampling is not None and self.cfg.search == "greedy":
            # the task asked for do_sample: honour it (at its temperature) in greedy mode
            run = partial(self._sampled, temperature=prep.sampling)
        try:
            outcome = run(self.cfg, engine, problem)
        except Exception as exc:
            self._warn_once(type(exc).__name__, f"softreason: search failed on a request "
                            f"({type(exc).__name__}: {exc}); falling back to greedy")
            outcome = self._fallback(engine, problem, exc)
        outcome.stats.wall_s = time.perf_counter() - start
        return outcome

    def _finish(self, prep: "_Prepared", outcome: SearchOutcome,
                engine_stats: EngineStats) -> GenerationResult:
        stats = outcome.stats
        stats.truncated = prep.truncated
        stats.forward_passes = engine_stats.forward_passes
        stats.config_fingerprint = self.fingerprint()
        self._account(stats)
        return GenerationResult(outcome.text, stats.to_dict())

    def _problem(self, context: str, gen_kwargs: dict, request: Any,
                 repeat: int = 0) -> "_Prepared":
        # the task's answer type: a gen_kwargs key (ours, popped before anything else sees it),
        # else the doc's `answer_type` field (our tasks set it), else the model_args default
        doc = getattr(request, "doc", None)
        answer_type = gen_kwargs.pop("answer_type", None) or (
            doc.get("answer_type") if isinstance(doc, dict) else None) or self.cfg.answer_type
        if answer_type not in ANSWER_TYPES:
            raise ValueError(f"softreason: answer_type={answer_type!r} is not allowed; choose "
                             f"one of {', '.join(ANSWER_TYPES)}")
        unknown = sorted(set(gen_kwargs) - set(_GEN_KWARGS))
        if unknown:
            self._warn_once(f"gen_kwargs:{unknown}", f"softreason: ignoring gen_kwargs {unknown}; "
                            f"understood: {', '.join(_GEN_KWARGS)}")
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        max_gen_toks = int(gen_kwargs.get("max_gen_toks", self.cfg.max_gen_toks))
        sampling = None
        if gen_kwargs.get("do_sample") and float(gen_kwargs.get("temperature", 1.0) or 0) > 0:
            sampling = float(gen_kwargs.get("temperature", 1.0))
            if self.cfg.search in ("softreason", "random"):
                self._warn_once("do_sample", "softreason: the task asks for do_sample; Soft "
                                "Reasoning decodes its candidates greedily by design")
        ids = self._encode(context) if context else []
        if not ids:
            ids = [self.prefix_token_id]
        budget = max(1, self.max_length - max_gen_toks - 1)
        truncated = len(ids) > budget
        if truncated:
            self._warn_once("truncated", f"softreason: a prompt of {len(ids)} tokens exceeds the "
                            f"context window ({self.max_length} - {max_gen_toks} new tokens); "
                            "keeping its last tokens (stats flag `truncated`)")
            ids = ids[-budget:]
        question = doc.get(self.cfg.question_field) if isinstance(doc, dict) else None
        problem = Problem(
            prompt_ids=ids, question=str(question) if question else context, until=until,
            max_gen_toks=max_gen_toks, seed=request_seed(self.cfg.seed, context, repeat),
            answer_type=answer_type,
            render=partial(self._render_user_turn, chat=self.verifier_uses_chat(context)),
        )
        return _Prepared(problem, truncated, sampling)

    def _sampled(self, cfg: SoftReasonConfig, engine: Engine, problem: Problem,
                 temperature: float) -> SearchOutcome:
        one = replace(cfg, n=1, temperature=temperature)
        outcome = baselines.self_consistency(one, engine, problem)
        outcome.stats.search = "sample"
        return outcome

    def _fallback(self, engine: Engine, problem: Problem,
                  exc: Exception) -> SearchOutcome:
        error = f"{type(exc).__name__}: {exc}"
        try:
            outcome = baselines.greedy(self.cfg, engine, problem)
        except Exception as exc2:  # even greedy failed: return nothing, keep the run going
            outcome = SearchOutcome("", RequestStats(search=self.cfg.search))
            error += f"; greedy fallback failed: {type(exc2).__name__}: {exc2}"
        outcome.stats.error = error
        outcome.stats.stop_reason = "fallback"
        return outcome

    def _account(self, stats: RequestStats) -> None:
        t = self.totals
        t["requests"] += 1
        t["gen_tokens"] += stats.gen_tokens
        t["prompt_tokens"] += stats.prompt_tokens
        t["candidates"] += stats.candidates
        t["rounds"] += stats.rounds
        t["wall_s"] += stats.wall_s
        t["bo_s"] += stats.bo_s
        t["fallbacks"] += stats.stop_reason == "fallback"
        t["truncated"] += stats.truncated

    def _trace(self, request: Any, problem: Problem, outcome: SearchOutcome) -> None:
        path = Path(self.cfg.trace_dir) / f"trace_rank{self.rank}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        task, doc_id = (request.metadata[:2] if getattr(request, "metadata", None) else (None, None))
        record = {"task": task, "doc_id": doc_id, "question": problem.question,
                  "stats": outcome.stats.to_dict(), **outcome.trace}
        with open(path, "a") as fh:
            fh.write(json.dumps(record, default=str) + "\n")

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)

    def fingerprint(self) -> str:
        """The configuration fingerprint (``SoftReasonConfig.fingerprint``) with the dtype the
        model was loaded in: what the cache table and every result's stats are keyed on."""
        return replace(self.cfg, dtype=self._loaded_dtype).fingerprint()

    def set_cache_hook(self, cache_hook: Any) -> None:
        """lm-eval's --use_cache keys on (prompt, gen_kwargs) only; give each configuration
        its own table so a changed setting never reuses another configuration's answers."""
        super().set_cache_hook(cache_hook)
        isolate_cache(cache_hook, self.fingerprint())

    # --- reporting ------------------------------------------------------------------------
    def gather_object(self, obj: Any, dst: int = 0) -> list | None:
        """HFLM's, plus this rank's run totals to ``dst`` on the same occasion: lm-eval calls
        this on every rank after the last request, and reads ``get_model_info`` on rank 0 only
        (a collective there would hang the other ranks)."""
        gathered = super().gather_object(obj, dst)
        if self.world_size > 1:
            totals = super().gather_object(dict(self.totals), dst)
            if self.rank == dst:
                self._all_rank_totals = totals
        return gathered

    def get_model_info(self) -> dict:
        """Lands in the results JSON's ``config``: model, settings and run totals."""
        return {
            "model_name": self.model_name,
            "model_num_parameters": sum(p.numel() for p in self.model.parameters()),
            "model_dtype": str(self.model.dtype),
            "softreason_version": __version__,
            "softreason_config": self.cfg.to_dict(),
            "softreason_fingerprint": self.fingerprint(),
            "softreason_totals": (distributed.sum_totals(self._all_rank_totals)
                                  if self._all_rank_totals else dict(self.totals)),
            "softreason_world_size": self.world_size,
        }
