"""How many distinct answers do k random soft vectors give, per sigma and base?

    python benchmarks/diversity.py --problems 5 --sigmas 0.5 1 2 --out results/diversity.json

Round-1 of the search only (x ~ N(0, I), no verifier): the figure that sets the default sigma.
Uses SVAMP rows from the data dir (LM_EVAL_SOFTREASON_DATA or ../shared/data).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tqdm import tqdm

from lm_eval_softreason.answers import extract_answer
from lm_eval_softreason.bench.provenance import path_roots, portable
from lm_eval_softreason.bench.common import default_data_dir
from lm_eval_softreason.config import SoftReasonConfig
from lm_eval_softreason.engine import DecodingEngine
from lm_eval_softreason.loading import load_model_and_tokenizer
from lm_eval_softreason.search.softreason import projection, soft_vectors

PROMPT = ("Solve the problem. Reason step by step, then finish with a line 'Answer: <number>'.\n\n"
          "Question: {q}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pretrained", default=None)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--problems", type=int, default=5)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    ap.add_argument("--bases", nargs="+", default=["token", "zero"])
    ap.add_argument("--max-gen-toks", type=int, default=256)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.problems < 1 or args.k < 1:
        ap.error(f"--problems and --k must be >= 1, got {args.problems} and {args.k}")
    data_dir = default_data_dir()
    if data_dir is None:
        raise SystemExit("no benchmark data: set LM_EVAL_SOFTREASON_DATA to the folder "
                         "that holds svamp/test300.json")
    data = Path(data_dir)
    rows = json.loads((data / "svamp" / "test300.json").read_text())[: args.problems]
    model, tok, name = load_model_and_tokenizer(
        SoftReasonConfig.from_model_args(pretrained=args.pretrained, dtype=args.dtype))
    engine = DecodingEngine(model, tok)
    rms = engine.embedding_rms()
    token_norm = float(model.get_input_embeddings().weight.detach().float().norm(dim=-1).mean())
    results = []
    settings = [(b, s) for b in args.bases for s in args.sigmas]
    for i, row in enumerate(tqdm(rows, desc="problems")):
        msgs = [{"role": "user", "content": PROMPT.format(q=row["question"])}]
        text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        ids = tok(text + "Let's think step by step.", add_special_tokens=False)["input_ids"]
        prefix = engine.prefill(ids)
        a = projection(1000 + i, 50, engine.hidden_size)
        x = torch.randn(args.k, 50, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
        for base, sigma in settings:
            if base == "token":
                b = engine.embed([prefix.greedy_token])[0].double()
            else:
                b = torch.zeros(engine.hidden_size, dtype=torch.float64)
            cands = engine.decode(prefix, soft_vectors(x, b, a, sigma * rms),
                                  max_new_tokens=args.max_gen_toks)
            answers = [extract_answer(c.text, "numeric") for c in cands]
            gold = float(row["answer"])
            results.append({
                "problem": i, "base": base, "sigma": sigma,
                "distinct_texts": len({c.text for c in cands}),
                "distinct_answers": len({a for a in answers if a is not None}),
                "parsable": sum(a is not None for a in answers),
                "any_correct": any(a is not None and abs(a - gold) < 1e-6 for a in answers),
                "mean_coherence": sum(c.coherence for c in cands) / len(cands),
            })
    summary = []
    for base, sigma in settings:
        sel = [r for r in results if r["base"] == base and r["sigma"] == sigma]
        summary.append({
            "base": base, "sigma": sigma,
            **{key: sum(r[key] for r in sel) / len(sel) for key in
               ("distinct_texts", "distinct_answers", "parsable", "any_correct", "mean_coherence")},
        })
    report = {"model": portable(name, path_roots(str(data))), "embedding_rms": rms,
              "token_norm": token_norm, "k": args.k,
              "problems": len(rows), "summary": summary, "per_problem": results}
    print(f"{'base':6} {'sigma':>5} {'texts':>6} {'answers':>8} {'parsable':>8} {'covered':>8} {'coh':>6}")
    for s in summary:
        print(f"{s['base']:6} {s['sigma']:5.2f} {s['distinct_texts']:6.2f} {s['distinct_answers']:8.2f} "
              f"{s['parsable']:8.2f} {s['any_correct']:8.2f} {s['mean_coherence']:6.3f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
