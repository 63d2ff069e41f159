"""Engine efficiency on one model in one process (the leaderboard issue's three figures):

1. decode throughput of the engine vs ``model.generate`` and vs lm-eval's ``hf`` model, at
   batch 1 and batch k (tokens/s and ratios; EOS disabled so every row makes the same count);
2. prefill positions actually computed per problem by a real Soft Reasoning search (defaults)
   vs the naive count, where every candidate row and every verifier call re-encodes its prompt;
3. the share of that search's wall time spent in GP fitting + acquisition (``bo_s``).

    python benchmarks/engine_throughput.py [--dtype auto] [--tokens 128] [--problems 2] [--out results/engine_throughput.json]

Run it alone: two torch processes on two cores distort each other's timings.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from lm_eval_softreason.config import SoftReasonConfig
from lm_eval_softreason.engine import DecodingEngine
from lm_eval_softreason.loading import load_model_and_tokenizer

QUESTION = ("Edward spent $6 to buy 2 books each book costing him the same amount of money. "
            "Now he has $12. How much did each book cost?")
# the search part runs on these (the first SVAMP-style questions of the regression eval)
QUESTIONS = [
    QUESTION,
    "There are 41 bird families living near the mountain. If 35 bird families flew away to "
    "asia and 62 bird families flew away to africa, how many more bird families flew away to "
    "africa than those that flew away to asia?",
    "Jack had 9 action figures and 7 books on a shelf. He added 7 more action figures to the "
    "shelf. How many more action figures than books were on his shelf?",
]


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def search_cost(engine: DecodingEngine, tok, problems: int) -> dict:
    """Run Soft Reasoning (defaults) on ``problems`` questions; count prefill positions actually
    computed against the naive count, and the wall-time share of GP fit + acquisition."""
    from lm_eval_softreason.search import softreason
    from lm_eval_softreason.search.problem import Problem

    cfg = SoftReasonConfig.from_model_args()
    naive = 0
    decode = engine.decode

    def counting_decode(prefix, soft_embeds=None, **kw):
        nonlocal naive  # without a shared prefix cache, every row re-encodes its prompt
        rows = soft_embeds.shape[0] if soft_embeds is not None else kw.get("n", 1)
        naive += len(prefix.prompt_ids) * rows
        return decode(prefix, soft_embeds, **kw)

    def render(text: str) -> list[int]:
        chat = tok.apply_chat_template([{"role": "user", "content": text}],
                                       add_generation_prompt=True, tokenize=False)
        return tok(chat, add_special_tokens=False)["input_ids"]

    engine.decode = counting_decode
    computed = bo_s = wall_s = gen = 0.0
    rounds = []
    for i, question in enumerate(QUESTIONS[:problems]):
        ids = render(question + "\nLet's think step by step.")
        before = engine.stats.copy()
        start = time.perf_counter()
        outcome = softreason.search(cfg, engine, Problem(
            prompt_ids=ids, question=question, until=[], max_gen_toks=cfg.max_gen_toks,
            seed=i, render=render))
        wall_s += time.perf_counter() - start
        computed += engine.stats.since(before).prefill_tokens
        bo_s += outcome.stats.bo_s
        gen += outcome.stats.gen_tokens
        rounds.append(outcome.stats.rounds)
    engine.decode = decode
    return {"search_problems": problems, "search_rounds": rounds,
            "prefill_tokens_per_problem": computed / problems,
            "prefill_tokens_naive_per_problem": naive / problems,
            "prefill_saving": naive / computed if computed else None,
            "gen_tokens_per_problem": gen / problems,
            "search_wall_s_per_problem": wall_s / problems,
            "bo_share_of_wall": bo_s / wall_s if wall_s else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pretrained", default=None, help="default: the embedded SmolLM2 GGUF")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--problems", type=int, default=2, help="Soft Reasoning searches to run")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    cfg = SoftReasonConfig.from_model_args(pretrained=args.pretrained, dtype=args.dtype)
    model, tok, name = load_model_and_tokenizer(cfg)
    engine = DecodingEngine(model, tok)
    msgs = [{"role": "user", "content": QUESTION}]
    prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    prompt += "Let's think step by step."
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    n, k = args.tokens, args.k
    # no EOS: every row produces exactly n tokens, so tokens/s compare like for like
    eos_ids, engine.eos_ids = engine.eos_ids, frozenset()
    gen_kw = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)

    def engine_run(batch: int) -> float:
        prefix = engine.prefill(ids)
        soft = engine.embed([prefix.greedy_token]).repeat(batch, 1)
        soft = soft + 0.5 * engine.embedding_rms() * torch.randn(soft.shape, generator=torch.Generator().manual_seed(0)).to(soft.dtype)
        cands, wall = _timed(lambda: engine.decode(prefix, soft if batch > 1 else None, max_new_tokens=n))
        return sum(len(c.token_ids) for c in cands) / wall

    def generate_run(batch: int) -> float:
        x = torch.tensor([ids] * batch)
        with torch.no_grad():
            out, wall = _timed(lambda: model.generate(x, **gen_kw))
        return (out.shape[1] - len(ids)) * batch / wall

    engine_run(1)  # warm-up (allocator, kernels)
    rows = {}
    for batch in (1, k):
        rows[f"engine_b{batch}_tok_s"] = engine_run(batch)
        rows[f"generate_b{batch}_tok_s"] = generate_run(batch)
        rows[f"ratio_b{batch}"] = rows[f"engine_b{batch}_tok_s"] / rows[f"generate_b{batch}_tok_s"]

    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    hf_model_eos = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = None  # same no-EOS rule for a like-for-like count
    for batch in (1, k):
        hf = HFLM(pretrained=model, tokenizer=tok, batch_size=batch)
        reqs = [Instance("generate_until", {}, (prompt, {"until": [], "max_gen_toks": n,
                                                         "do_sample": False}), i)
                for i in range(batch)]
        texts, wall = _timed(lambda: hf.generate_until(reqs, disable_tqdm=True))
        tokens = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
        rows[f"lm_eval_hf_b{batch}_tok_s"] = tokens / wall
        rows[f"engine_vs_lm_eval_hf_b{batch}"] = rows[f"engine_b{batch}_tok_s"] / (tokens / wall)
    model.generation_config.eos_token_id = hf_model_eos
    engine.eos_ids = eos_ids  # searches stop at EOS as usual
    rows.update(search_cost(engine, tok, args.problems))

    report = {
        "model": name, "dtype": str(model.dtype), "new_tokens": n, "k": k,
        "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
        "processor": platform.processor(), "torch": torch.__version__, **rows,
        "note": "decode: one prompt, EOS disabled; search: softreason defaults, chat template",
    }
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
