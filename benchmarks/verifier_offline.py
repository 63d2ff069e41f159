"""Verifier variants on fixed candidates: is any self-verifier better than the plain vote?

    python benchmarks/verifier_offline.py --bench-model qwen2.5-coder-1.5b --task svamp_dev \\
        --trace TRACE.jsonl --gold results/qwen2.5-coder-1.5b/svamp_dev/greedy.samples.jsonl \\
        [--prompts grouped attempts] [--slots 10] [--out results/dev/verifier_offline_...md]

A whole search per verifier idea costs hours here; the verifier's question ("which answer is
right?") needs only the candidates. This reads a softreason-family trace (``trace_dir``: every
candidate's text, answer and coherence), takes each request's **round-1 candidates** (the same
for every preset that shares the perturbation: the x's come from the request seed), keeps the
requests where they do not all agree (the only ones v2 verifies), and asks the model, for each
prompt kind, exactly what ``search=softreason`` would ask after round 1:

* ``grouped`` (v2): one reasoning per distinct answer, with how many attempts reached it;
* ``attempts`` (v1's prompt): the de-duplicated attempts, numbered.

Each call runs with ``verifier_force_answer`` (``search/verifier.py``), so one decode gives two
rows per prompt: the strict verdict (the reply's own ``Answer:`` line, None otherwise) and the
forced one. Per row: right, unparsable, and the paired split against the plain majority of
the same candidates (exact McNemar p). Calls run in lockstep (``--slots`` at once). Traces
may be gzipped. Every call (prompt kind, verdicts, text) goes to ``--out`` with ``.jsonl``;
``--summarise-only`` re-renders the table from that file without a model.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

from lm_eval_softreason.answers import (answers_match, final_line_answer, group_answers,
                                        majority_answer, parse_gold)
from lm_eval_softreason.bench import provenance
from lm_eval_softreason.bench.compare import exact_mcnemar
from lm_eval_softreason.search.verifier import (ask, grouped_verification_prompt,
                                                verification_prompt)

from devtask import DEV_TASKS, add_model_options, load_lm, run_requests  # benchmarks/devtask.py

PROMPTS = ("grouped", "attempts")


def round_one(trace: dict) -> list[dict]:
    return [c for c in trace["candidates"] if c["round"] == 1]


def verifier_prompt(kind: str, question: str, cands: list[dict], answer_type: str) -> str:
    """The prompt ``softreason._Search._verify`` builds after round 1 for this kind."""
    if kind == "grouped":
        groups = group_answers([c["answer"] for c in cands], answer_type)
        shown = [(max((cands[i] for i in g), key=lambda c: c["coherence"]), len(g))
                 for g in sorted(groups, key=len, reverse=True)]
        return grouped_verification_prompt(question, [(c["text"], c["answer"], n)
                                                      for c, n in shown], len(cands))
    seen, attempts = set(), []
    for c in cands:
        if c["answer"] is not None and c["text"] not in seen:
            seen.add(c["text"])
            attempts.append((c["text"], c["answer"]))
    return verification_prompt(question, attempts, [])


def summarise(calls: list[dict], kinds: list[str]) -> str:
    n = len({c["doc_id"] for c in calls})
    lines = ["| verdict | calls | right | unparsable | vs the plain majority of the same "
             "candidates: right only with verdict / only with majority (p) | gen tokens / call | "
             "prompt tokens / call (forcing included) |", "|---|---:|---:|---:|---:|---:|---:|"]
    majority = {c["doc_id"]: c["majority_right"] for c in calls}
    lines.append(f"| plain majority of round 1 | {n} | "
                 f"{statistics.fmean(majority.values()):.3f} | – | – | 0 | 0 |")
    for kind in kinds:
        rows = [c for c in calls if c["prompt"] == kind]
        for label, key in ((kind, "strict"), (f"{kind} + forced answer", "forced")):
            right = [r[f"{key}_right"] for r in rows]
            none = sum(r[f"{key}_answer"] is None for r in rows)
            v_only = sum(a and not r["majority_right"] for a, r in zip(right, rows))
            m_only = sum(r["majority_right"] and not a for a, r in zip(right, rows))
            tokens = statistics.fmean(r["tokens"] if key == "forced" else r["strict_tokens"]
                                      for r in rows)
            # every prefill of the call, the forced continuation's included
            prompt = statistics.fmean(r["prompt_tokens"] for r in rows)
            lines.append(f"| {label} | {len(rows)} | {statistics.fmean(right):.3f} | {none} | "
                         f"+{v_only} / −{m_only} (p={exact_mcnemar(v_only, m_only):.2g}) | "
                         f"{tokens:.0f} | {prompt:,.0f} |")
    return "\n".join(lines)


def coherence_auc(traces: dict, gold: dict) -> tuple[float | None, int]:
    """How well the coherence reward ranks a request's right candidates above its wrong ones:
    the probability that a random (right, wrong) pair of one request is ordered right-first
    (ties half), over every such pair of every traced request; 0.5 is no signal."""
    wins = pairs = 0.0
    for doc_id, trace in traces.items():
        if doc_id not in gold:
            continue
        right = [c["coherence"] for c in trace["candidates"]
                 if answers_match(c["answer"], gold[doc_id])]
        wrong = [c["coherence"] for c in trace["candidates"]
                 if not answers_match(c["answer"], gold[doc_id])]
        for a in right:
            for b in wrong:
                pairs += 1
                wins += 1.0 if a > b else 0.5 if a == b else 0.0
    return (wins / pairs if pairs else None), int(pairs)


def _coherence_line(traces: dict, gold: dict) -> str:
    auc, pairs = coherence_auc(traces, gold)
    if auc is None:
        return "Coherence as a signal: no request has both right and wrong candidates.\n"
    return (f"Coherence as a signal (all rounds of all {len(traces)} traced requests): a right "
            f"candidate out-ranks a wrong one of the same request with probability {auc:.2f} "
            f"({pairs} pairs; 0.5 = no signal).\n")


def _open(path: Path):
    return gzip.open(path, "rt") if path.suffix == ".gz" else path.open()


def _header(label: str, task: str, split: list[int], traced: int, detail: str) -> str:
    return (f"# Verifier variants on fixed round-1 candidates: {label}, {task}\n\n"
            f"{len(split)} requests whose round-1 candidates disagree (doc ids "
            f"{', '.join(map(str, split))}), from {traced} traced; {detail}\n\n"
            f"`python benchmarks/verifier_offline.py {shlex.join(sys.argv[1:])}`\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_options(ap)
    ap.add_argument("--task", default="svamp_dev", choices=DEV_TASKS)
    ap.add_argument("--trace", type=Path, required=True, nargs="+")
    ap.add_argument("--gold", type=Path, required=True,
                    help="any cell's samples file of the task (doc_id -> target)")
    ap.add_argument("--prompts", nargs="+", default=list(PROMPTS), choices=PROMPTS)
    ap.add_argument("--slots", type=int, default=10)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--summarise-only", action="store_true",
                    help="re-render --out from its .jsonl of calls; no model")
    args = ap.parse_args()
    if args.slots < 1:
        ap.error(f"--slots must be >= 1, got {args.slots}")

    traces = {}
    for path in args.trace:
        for line in _open(path):
            t = json.loads(line)
            if t.get("task") == args.task and t.get("candidates"):
                traces.setdefault(t["doc_id"], t)  # a rerun's duplicate: the first is kept
    gold = {r["doc_id"]: parse_gold(r["target"])
            for r in map(json.loads, args.gold.open()) if r.get("target") is not None}
    split = {d: t for d, t in traces.items() if d in gold and len(
        group_answers([c["answer"] for c in round_one(t)], "numeric")) > 1}
    if not split:
        raise SystemExit("no traced request with a split round 1 and a known gold answer")
    by_question = {t["question"]: t for t in split.values()}
    if args.summarise_only:
        if args.out is None:
            ap.error("--summarise-only needs --out (its .jsonl holds the calls)")
        calls = [json.loads(line) for line in args.out.with_suffix(".jsonl").open()]
        label = args.bench_model or args.pretrained or "smollm2-135m"
        report = (_header(label, args.task, sorted(split), len(traces),
                          "re-rendered from the recorded calls.") + "\n"
                  + summarise(calls, args.prompts) + "\n\n" + _coherence_line(traces, gold))
        args.out.write_text(report)
        print(report)
        return

    from lm_eval_softreason.lockstep import run_lockstep

    spec, lm = load_lm(args)
    calls: list[dict] = []
    started = time.perf_counter()

    def generate_until(requests):
        jobs = []
        for request in requests:
            context, gen_kwargs = request.args
            problem = lm._problem(context, dict(gen_kwargs), request).problem
            # by question: with `samples`, lm-eval's request.doc_id need not be the doc's index
            trace = by_question.get(problem.question)
            if trace is None:
                continue
            cands = round_one(trace)
            for kind in args.prompts:
                jobs.append((trace["doc_id"], kind, problem,
                             verifier_prompt(kind, trace["question"], cands, problem.answer_type),
                             cands))

        def search(job):
            doc_id, kind, problem, prompt, cands = job

            def fn(engine):
                return ask(engine, problem, prompt, max_new_tokens=lm.cfg.verifier_max_gen_toks,
                           parse=final_line_answer, force_answer=True)
            return fn

        def on_done(i, verdict, stats):
            doc_id, kind, problem, _, cands = jobs[i]
            g = gold[doc_id]
            majority = majority_answer([c["answer"] for c in cands], problem.answer_type)
            strict = None if verdict.forced else verdict.answer
            calls.append({
                "doc_id": doc_id, "prompt": kind, "gold": g,
                "candidates": [c["answer"] for c in cands], "majority": majority,
                "majority_right": answers_match(majority, g),
                "strict_answer": strict, "strict_right": answers_match(strict, g),
                "forced_answer": verdict.answer, "forced_right": answers_match(verdict.answer, g),
                "forced": verdict.forced, "tokens": verdict.tokens,
                "strict_tokens": verdict.tokens - verdict.forced_tokens,
                "prompt_tokens": verdict.prompt_tokens, "text": verdict.text})
            print(f"doc {doc_id} {kind}: verdict {verdict.answer} (forced {verdict.forced}), "
                  f"majority {majority}, gold {g}", flush=True)

        print(f"{len(requests)} requests, {len(jobs)} verifier calls", flush=True)
        run_lockstep(lm.engine, [search(j) for j in jobs], args.slots, on_done)
        return [""] * len(requests)

    run_requests(lm, args.task, generate_until, samples=sorted(split))
    wall = time.perf_counter() - started
    calls.sort(key=lambda c: (c["doc_id"], c["prompt"]))
    device = provenance.device_info(lm.engine.device)
    out = args.out or Path(f"results/dev/verifier_offline_{spec.label}_{args.task}.md")
    header = _header(spec.label, args.task, sorted(split), len(traces),
                     f"dtype {lm.model.dtype}; {device['cpu']} ({device['cpu_class']}); "
                     f"{wall:.0f} s.")
    report = (header + "\n" + summarise(calls, args.prompts) + "\n\n"
              + _coherence_line(traces, gold))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    out.with_suffix(".jsonl").write_text("".join(json.dumps(c, default=str) + "\n"
                                                 for c in calls))
    print(report)


if __name__ == "__main__":
    main()
