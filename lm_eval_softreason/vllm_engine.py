"""The search's ``Engine`` on vLLM (``model_args backend=vllm``).

Same protocol as ``engine.DecodingEngine``, so every search, the verifier and the baselines run
unchanged. Every request goes to vLLM as prompt *embeddings* (``enable_prompt_embeds``): a soft
candidate's prompt is the request's token embeddings with its soft vector as one more row, so
the first generated token follows the soft position exactly as in the HF engine. Plain rows
(greedy, self-consistency, the verifier) send the same token embeddings, so all of a request's
rows share one prefix-cache key and reuse its KV blocks. ``decode_many`` hands every parked
call (all candidates, verifier calls and concurrent searches, from ``lockstep``) to one
``LLM.generate``: vLLM's scheduler does the batching.

vLLM is an optional extra (``pip install "lm-eval-softreason[vllm]"``); nothing here is
imported unless ``backend=vllm`` is asked for.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (AutoConfig, AutoModelForCausalLM, GenerationConfig, PreTrainedModel,
                          PreTrainedTokenizerBase)

from .config import SoftReasonConfig
from .engine import (Candidate, DecodeCall, Decoder, EngineStats, Prefix, candidate_text,
                     eos_token_ids)


@dataclass
class VLLMPrefix(Prefix):
    """A prompt vLLM has run once: its greedy next token (base=token needs it) and the prompt
    embeddings every later request of this prompt sends. Its KV cache lives in vLLM."""

    token: int = -1
    embeds: torch.Tensor | None = None

    @property
    def greedy_token(self) -> int:
        return self.token


class VLLMEngine(Decoder):
    """``Engine`` protocol on a ``vllm.LLM``; see the module docstring."""

    def __init__(self, llm: Any, tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel,
                 embedding: torch.Tensor) -> None:
        self.llm = llm
        self.tokenizer = tokenizer
        self.model = model  # weightless (meta device): config and dtype only
        self.device = torch.device("cpu")  # where prompt embeddings are built
        self._embedding = embedding  # (vocab, hidden), the model's own input embeddings
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.stats = EngineStats()

    @property
    def hidden_size(self) -> int:
        return int(self._embedding.shape[1])

    def embed(self, token_ids: list[int]) -> torch.Tensor:
        return self._embedding[torch.tensor(token_ids, dtype=torch.long)]

    def embedding_rms(self) -> float:
        return float(self._embedding.float().pow(2).mean().sqrt())

    def prefill(self, prompt_ids: list[int]) -> VLLMPrefix:
        """One greedy token from the prompt: its KV blocks go into vLLM's prefix cache, and
        the token is the base of base=token soft vectors."""
        if not prompt_ids:
            raise ValueError("prefill needs at least one prompt token")
        start = time.perf_counter()
        embeds = self.embed(prompt_ids)
        out = self._generate([{"prompt_embeds": embeds}], [dict(max_tokens=1, temperature=0.0)])[0]
        self.stats.prefill_tokens += len(prompt_ids) - (out.num_cached_tokens or 0)
        self.stats.forward_passes += 1
        self.stats.prefill_s += time.perf_counter() - start
        return VLLMPrefix(list(prompt_ids), None, torch.empty(0),
                          token=int(out.outputs[0].token_ids[0]), embeds=embeds)

    def decode_many(self, calls: list[DecodeCall]) -> list[list[Candidate]]:
        """Every call's rows as vLLM requests in one ``generate``; each call's ``stats`` gets
        its own rows' counts (prompt positions vLLM computed, not served from its cache)."""
        start = time.perf_counter()
        prompts, params, owner = [], [], []
        for index, call in enumerate(calls):
            for prompt, param in self._requests(call):
                prompts.append(prompt)
                params.append(param)
                owner.append((index, len(call.prefix.prompt_ids)))
        outputs = self._generate(prompts, params) if prompts else []
        per_call: list[list[Candidate]] = [[] for _ in calls]
        counts = [EngineStats() for _ in calls]
        for (index, prompt_len), out in zip(owner, outputs):
            call, count = calls[index], counts[index]
            # prompt positions computed for this request; its soft row, if any, is counted in
            # soft_positions (as in the HF engine) and is never served from the cache
            count.prefill_tokens += max(0, prompt_len - (out.num_cached_tokens or 0))
            count.soft_positions += call.soft_embeds is not None
            for completion in out.outputs:
                candidate = self._candidate(completion, call.until or [])
                count.generated_tokens += len(candidate.token_ids)  # EOS not counted, as HF
                # one decode step per token of the call's longest row (its soft position or
                # first token comes with the prompt pass)
                count.forward_passes = max(count.forward_passes, len(completion.token_ids))
                per_call[index].append(candidate)
        elapsed = time.perf_counter() - start
        for call, count in zip(calls, counts):
            count.decode_s = elapsed  # each call waited for the whole batch, as in HF
            if call.stats is not None:
                call.stats.add(count)
            count.decode_s = 0.0
            self.stats.add(count)
        self.stats.decode_s += elapsed
        return per_call

    # --- internals -------------------------------------------------------------------------
    def _requests(self, call: DecodeCall) -> list[tuple[dict, dict]]:
        """(prompt, SamplingParams keys) of one call: one request per soft row, or one with
        ``n`` (vLLM forks its samples from one prompt)."""
        if call.max_new_tokens <= 0:
            rows = call.soft_embeds.shape[0] if call.soft_embeds is not None else call.n
            if rows > 0:
                raise ValueError("vLLM cannot decode zero tokens; the HF engine returns empty "
                                 "candidates for max_new_tokens=0")
            return []
        embeds = call.prefix.embeds if isinstance(call.prefix, VLLMPrefix) else None
        if embeds is None:
            embeds = self.embed(call.prefix.prompt_ids)
        # the engine's eos_ids decide where a row ends, as in the HF engine (vLLM's own EOS
        # check is off, so a caller that empties eos_ids gets full-length rows on both)
        stop = [u for u in call.until or [] if u]
        # vLLM detokenizes only to find stop strings: text comes from our tokenizer (_candidate)
        common = dict(max_tokens=call.max_new_tokens, stop=stop, detokenize=bool(stop),
                      stop_token_ids=sorted(self.eos_ids), ignore_eos=True, logprobs=0,
                      skip_special_tokens=True)
        if call.sample:
            sampling = dict(temperature=call.temperature, top_p=call.top_p, seed=call.seed)
        else:
            sampling = dict(temperature=0.0)
        if call.soft_embeds is None:
            return [({"prompt_embeds": embeds}, dict(n=call.n, **sampling, **common))]
        soft = call.soft_embeds.to(embeds.dtype)
        return [({"prompt_embeds": torch.cat([embeds, row.view(1, -1)])},
                 dict(n=1, **sampling, **common)) for row in soft]

    def _generate(self, prompts: list[dict], params: list[dict]) -> list:
        """vLLM's ``RequestOutput`` of each prompt, in order (one ``generate``: one batch)."""
        from vllm import SamplingParams

        return self.llm.generate(prompts, [SamplingParams(**p) for p in params], use_tqdm=False)

    def _candidate(self, completion: Any, until: list[str]) -> Candidate:
        """The HF engine's Candidate: EOS not among the tokens, text cut before ``until``."""
        ids = list(completion.token_ids)
        logprobs = [float(step[token].logprob) for step, token in
                    zip(completion.logprobs or [], ids)]
        reason = "max_tokens"
        if completion.finish_reason == "stop":
            reason = "until" if isinstance(completion.stop_reason, str) else "eos"
        if ids and ids[-1] in self.eos_ids and reason == "eos":
            ids, logprobs = ids[:-1], logprobs[:-1]
        return Candidate(candidate_text(self.tokenizer, ids, until), ids, logprobs, reason)


def load_vllm_engine(cfg: SoftReasonConfig, source: str, dtype: torch.dtype,
                     tokenizer: PreTrainedTokenizerBase) -> VLLMEngine:
    """A ``vllm.LLM`` on the HF-format directory ``source`` and its engine."""
    try:
        from vllm import LLM
    except ImportError as err:
        raise ImportError("softreason: model_args backend=vllm needs vLLM: pip install "
                          "\"lm-eval-softreason[vllm]\" (README, 'vLLM backend')") from err
    config = AutoConfig.from_pretrained(source, trust_remote_code=cfg.trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype,
                                                 trust_remote_code=cfg.trust_remote_code)
    model.eval()
    try:  # its EOS ids; from_config does not read generation_config.json
        model.generation_config = GenerationConfig.from_pretrained(source)
    except OSError:
        pass
    embedding = input_embedding_weight(model, Path(source)).to(dtype)
    kwargs: dict[str, Any] = dict(
        model=source, tokenizer=source, dtype=str(dtype).removeprefix("torch."),
        seed=cfg.seed, enable_prompt_embeds=True, enable_prefix_caching=True,
        tensor_parallel_size=cfg.tensor_parallel_size, enforce_eager=cfg.enforce_eager,
        trust_remote_code=cfg.trust_remote_code)
    if cfg.max_length is not None:
        kwargs["max_model_len"] = cfg.max_length
    share = cfg.gpu_memory_utilization or cpu_memory_share()
    if share is not None:
        kwargs["gpu_memory_utilization"] = share
    return VLLMEngine(LLM(**kwargs), tokenizer, model, embedding)


def cpu_memory_share() -> float | None:
    """On CPU, vLLM's ``gpu_memory_utilization`` is the share of RAM it reserves, and it
    refuses to start if that much is not free (its default 0.92 fails beside any other job):
    take 80% of what is free. None on GPUs (vLLM's default)."""
    if torch.cuda.is_available():
        return None
    import psutil

    memory = psutil.virtual_memory()
    return round(0.8 * memory.available / memory.total, 2)


def input_embedding_weight(model: PreTrainedModel, source: Path) -> torch.Tensor:
    """The input embedding matrix, read from the checkpoint's safetensors alone (vLLM holds
    the model; loading it a second time through transformers would double the memory)."""
    from safetensors import safe_open

    weight = model.get_input_embeddings().weight
    name = next(n for n, p in model.named_parameters() if p is weight)
    files = sorted(source.glob("*.safetensors"))
    # checkpoints name it with or without the base model's prefix
    wanted = {name, name.removeprefix("model."), f"model.{name}"}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                if key in wanted:
                    return handle.get_tensor(key)
    raise FileNotFoundError(f"softreason: backend=vllm found no {name!r} tensor in the "
                            f"safetensors files of {source} ({len(files)} files)")
