"""Decode throughput of the engine vs ``model.generate`` (and lm-eval's ``hf`` model), batch 1
and batch k, on one model in one process; plus prefill tokens computed vs the naive count.

    python benchmarks/engine_throughput.py [--dtype bfloat16] [--tokens 128] [--out results/engine_throughput.json]

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


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pretrained", default=None, help="default: the embedded SmolLM2 GGUF")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--k", type=int, default=5)
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
    engine.eos_ids = frozenset()
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

    hf = HFLM(pretrained=model, tokenizer=tok, batch_size=1)
    req = Instance("generate_until", {}, (prompt, {"until": [], "max_gen_toks": n, "do_sample": False}), 0)
    hf_model_eos = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = None  # same no-EOS rule for a like-for-like count
    [text], wall = _timed(lambda: hf.generate_until([req], disable_tqdm=True))
    model.generation_config.eos_token_id = hf_model_eos
    rows["lm_eval_hf_b1_tok_s"] = len(tok(text, add_special_tokens=False)["input_ids"]) / wall

    rounds = 3
    rows["prefill_tokens_per_problem"] = len(ids)
    rows["prefill_tokens_naive"] = len(ids) * k * rounds
    report = {
        "model": name, "dtype": str(model.dtype), "new_tokens": n, "k": k,
        "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
        "processor": platform.processor(), "torch": torch.__version__, **rows,
        "note": f"prefill counts for one request of {rounds} rounds x k={k} candidates",
    }
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
