"""The HF engine on CPU, before and after the fast path, in one run (issue 19, part 1).

    python benchmarks/cpu_engine.py --bench-model qwen2.5-coder-1.5b [--problems 8] \
        [--tokens 64] [--with-v1] [--out results/cpu_engine]

Configurations of the same weights and dtype:

* ``before``: ``cpu_linear=aten`` (torch's default linear: MKL sgemm, which repacks the
  weights at every call) and torch's default thread count;
* ``after``: ``cpu_linear=onednn`` (weights prepacked once for oneDNN) and ``threads=auto``
  (the CPUs this process may use);
* ``v1`` (with ``--with-v1``): ``before``'s engine under ``preset=v1``, the defaults when issue
  19 was filed (verifier every round, at least two rounds). Only its searches run (its engine
  is ``before``'s), so the report can also say what a default search costs now against then.

For each: decode tokens/s of our engine, of ``model.generate`` and of lm-eval's ``hf`` model
(aten always: the reference users know) at batch 1, 5 and 10 (EOS disabled, so every row
makes ``--tokens`` tokens), and the wall time of ``--problems`` Soft Reasoning searches
(default preset) on ``svamp_dev`` with their answers, so the two configurations' answers can
be compared. The searches run ``--concurrent`` at a time (default: all of them, as the
leaderboard's cells run; 1 measures one search's latency, which is a serial chain of decodes
and several times slower to measure). Writes ``<out>.json`` and ``<out>.md``; each finished
configuration is kept in ``<out>.partial.json`` and reused by a rerun with the same
arguments, commit and machine. Run it alone: another job on the cores makes every figure
meaningless.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import torch

from lm_eval_softreason.bench import provenance
from lm_eval_softreason.bench.runner import default_data_dir, model_spec

CONFIGS = {"before": {"cpu_linear": "aten"}, "after": {"cpu_linear": "onednn", "threads": "auto"},
           "v1": {"cpu_linear": "aten", "preset": "v1"}}
BATCHES = (1, 5, 10)
PROMPT = ("Solve the math word problem. Reason step by step, then give the final answer as a "
          "number on a last line of the form \"Answer: <number>\".\n\nQuestion: Edward spent $6 "
          "to buy 2 books each book costing him the same amount of money. Now he has $12. How "
          "much did each book cost?")


def _throughput(lm, tokens: int) -> dict:
    """Tokens/s of the engine and of model.generate at each batch size (EOS disabled)."""
    tok, model, engine = lm.tokenizer, lm.model, lm.engine
    text = tok.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False,
                                   add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    saved_eos, engine.eos_ids = engine.eos_ids, frozenset()
    out = {}
    try:
        for batch in BATCHES:
            prefix = engine.prefill(ids)
            engine.decode(prefix, None, max_new_tokens=4, n=batch)  # warm the kernels
            start = time.perf_counter()
            rows = engine.decode(prefix, None, max_new_tokens=tokens, n=batch)
            engine_s = time.perf_counter() - start
            made = sum(len(r.token_ids) for r in rows)
            inputs = torch.tensor([ids] * batch)
            start = time.perf_counter()
            model.generate(inputs, attention_mask=torch.ones_like(inputs), do_sample=False,
                           max_new_tokens=tokens, min_new_tokens=tokens,
                           pad_token_id=tok.pad_token_id)
            generate_s = time.perf_counter() - start
            out[batch] = {"engine_tok_s": made / engine_s,
                          "generate_tok_s": batch * tokens / generate_s}
    finally:
        engine.eos_ids = saved_eos
    return out


def _hf_throughput(load_args: dict, tokens: int) -> dict:
    """lm-eval's own ``hf`` model (HFLM.generate_until) at each batch size, same weights."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from lm_eval_softreason.config import SoftReasonConfig
    from lm_eval_softreason.loading import resolve_source

    # the same files SoftReasonLM loads (a GGUF file for the embedded model)
    source, gguf_file, _ = resolve_source(SoftReasonConfig.from_model_args(**load_args))
    out = {}
    for batch in BATCHES:
        hf = HFLM(pretrained=source, dtype=load_args.get("dtype", "float32"), device="cpu",
                  batch_size=batch, **({"gguf_file": gguf_file} if gguf_file else {}))
        hf.model.generation_config.eos_token_id = None  # every row runs the full length
        context = hf.apply_chat_template([{"role": "user", "content": PROMPT}])
        reqs = [Instance("generate_until", {}, (context, {"until": [], "max_gen_toks": tokens,
                                                          "do_sample": False}), i)
                for i in range(batch)]
        start = time.perf_counter()
        texts = hf.generate_until(reqs, disable_tqdm=True)
        elapsed = time.perf_counter() - start
        made = sum(len(hf.tok_encode(t)) for t in texts)
        out[batch] = {"hf_tok_s": made / elapsed}
        del hf
        gc.collect()
    return out


def searches(lm, problems: int) -> dict:
    """Wall time and answers of ``problems`` softreason searches on svamp_dev."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from lm_eval_softreason import _hook

    _hook.install()
    data = default_data_dir()
    tm = TaskManager(include_defaults=False, include_path=[_hook.tasks_dir()],
                     metadata={"data_dir": data} if data else {})
    start = time.perf_counter()
    res = lm_eval.simple_evaluate(model=lm, tasks=["svamp_dev"], limit=problems,
                                  apply_chat_template=True, task_manager=tm, log_samples=True)
    wall = time.perf_counter() - start
    samples = res["samples"]["svamp_dev"]
    return {"wall_s": wall, "wall_s_per_problem": wall / problems,
            "answers": [s["resps"][0][0].stats.get("answer") if hasattr(s["resps"][0][0], "stats")
                        else None for s in samples],
            "acc": [s["acc"] for s in samples],
            "gen_tokens": [s["gen_tokens"] for s in samples]}


def model_arguments(description: str, problems: int) -> argparse.ArgumentParser:
    """The arguments this benchmark shares with backend_throughput.py."""
    ap = argparse.ArgumentParser(description=description)
    model = ap.add_mutually_exclusive_group()
    model.add_argument("--bench-model")
    model.add_argument("--pretrained")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--problems", type=int, default=problems)
    return ap


def report_head(args: argparse.Namespace) -> tuple[dict, dict]:
    """(load args for SoftReasonLM, the report's provenance fields) for ``args``."""
    spec = model_spec(args.pretrained, args.bench_model)
    return ({**spec.load_args, "dtype": args.dtype},
            {"model": spec.label, "dtype": args.dtype, "tokens": args.tokens,
             "device": provenance.device_info("cpu"), "versions": provenance.versions(),
             "git": provenance.git_commit()})


def write_report(report: dict, out: str, render) -> None:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str))
    path.with_suffix(".md").write_text(render(report))
    print(render(report))


def main() -> None:
    ap = model_arguments(__doc__.split("\n\n")[0], problems=8)
    ap.add_argument("--skip-hf", action="store_true", help="leave out lm-eval's hf model")
    ap.add_argument("--concurrent", type=int, help="searches in flight at once "
                    "(batch_size; default: --problems)")
    ap.add_argument("--with-v1", action="store_true",
                    help="also time the searches under preset=v1 with before's engine")
    ap.add_argument("--out", default="results/cpu_engine")
    args = ap.parse_args()
    from lm_eval_softreason.lm import SoftReasonLM

    load_args, head = report_head(args)
    head["concurrent"] = args.concurrent or args.problems
    head["with_v1"] = args.with_v1
    default_threads = torch.get_num_threads()
    partial = Path(args.out).with_suffix(".partial.json")
    report: dict = {**head, "configs": {}}
    if partial.exists():  # a killed run's finished configurations, if they match this run
        kept = json.loads(partial.read_text())
        if {k: kept.get(k) for k in head} == json.loads(json.dumps(head, default=str)):
            report["configs"] = kept["configs"]
    for name, keys in CONFIGS.items():
        if name == "v1" and not args.with_v1:
            continue
        if name in report["configs"]:
            print(name, "kept from", partial, flush=True)
            continue
        if name in ("before", "v1"):  # torch's own default thread count, as before the change
            keys = {**keys, "threads": default_threads}
        keys = {**keys, "batch_size": head["concurrent"]}
        lm = SoftReasonLM(**load_args, **keys)
        entry = {"model_args": keys, "threads": torch.get_num_threads()}
        if name != "v1":  # v1's engine is before's: only its searches differ
            entry["throughput"] = _throughput(lm, args.tokens)
        entry["search"] = searches(lm, args.problems)
        report["configs"][name] = entry
        partial.write_text(json.dumps(report, indent=1, default=str))
        print(name, json.dumps(entry, default=str)[:600], flush=True)
        del lm
        gc.collect()
    if not args.skip_hf:
        torch.set_num_threads(default_threads)
        report["hf"] = _hf_throughput(load_args, args.tokens)
    write_report(report, args.out, render)
    partial.unlink(missing_ok=True)


def render(report: dict) -> str:
    before, after = report["configs"]["before"], report["configs"]["after"]
    dev = report["device"]
    lines = [f"# CPU engine: {report['model']}, {report['dtype']}, {dev['cpu']} "
             f"({dev['cpu_class']}, {dev['cpu_count']} cores)", "",
             f"commit {report['git'].get('commit', '?')[:10]}; torch "
             f"{report['versions']['torch']}; {report['tokens']} new tokens per row; threads "
             f"before {before['threads']}, after {after['threads']}", "",
             "| batch | engine before (tok/s) | engine after | after / before | generate before "
             "| generate after | lm-eval hf | after / hf |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for batch in BATCHES:
        b, a = before["throughput"][batch], after["throughput"][batch]
        hf = (report.get("hf") or {}).get(batch, {}).get("hf_tok_s")
        lines.append(
            f"| {batch} | {b['engine_tok_s']:.1f} | {a['engine_tok_s']:.1f} | "
            f"{a['engine_tok_s'] / b['engine_tok_s']:.2f}x | {b['generate_tok_s']:.1f} | "
            f"{a['generate_tok_s']:.1f} | {hf:.1f} | {a['engine_tok_s'] / hf:.2f}x |"
            if hf else
            f"| {batch} | {b['engine_tok_s']:.1f} | {a['engine_tok_s']:.1f} | "
            f"{a['engine_tok_s'] / b['engine_tok_s']:.2f}x | {b['generate_tok_s']:.1f} | "
            f"{a['generate_tok_s']:.1f} | – | – |")
    sb, sa = before["search"], after["search"]
    same = sum(x == y for x, y in zip(sb["answers"], sa["answers"]))
    at_once = report.get("concurrent", 1)  # reports before --concurrent ran one at a time
    lines += ["", f"Soft Reasoning, {len(sb['answers'])} svamp_dev problems (default preset, "
              f"{at_once} at once): "
              f"{sb['wall_s_per_problem']:.0f} s per problem before, "
              f"{sa['wall_s_per_problem']:.0f} s after "
              f"({sa['wall_s_per_problem'] / sb['wall_s_per_problem']:.2f}x); same answer on "
              f"{same}/{len(sb['answers'])}; right {sum(sb['acc']):.0f} before, "
              f"{sum(sa['acc']):.0f} after; generated tokens {sum(sb['gen_tokens']):.0f} before, "
              f"{sum(sa['gen_tokens']):.0f} after."]
    if "v1" in report["configs"]:
        v1 = report["configs"]["v1"]["search"]
        lines += ["", f"The same {len(v1['answers'])} problems under preset v1 (the defaults when "
                  f"issue 19 was filed) with before's engine: {v1['wall_s_per_problem']:.0f} s "
                  f"per problem, so a default search now takes "
                  f"{sa['wall_s_per_problem'] / v1['wall_s_per_problem']:.2f}x of that "
                  f"(engine and method together); right {sum(v1['acc']):.0f}; generated tokens "
                  f"{sum(v1['gen_tokens']):.0f} (the verifier's included)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
