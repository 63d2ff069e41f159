"""Perturbation scale sweep on a development task: what round 1 of the search sees per setting.

    python benchmarks/perturbation_sweep.py --bench-model qwen2.5-coder-1.5b --task svamp_dev \
        --limit 30 [--settings token:rms:1 token:rms:4 ... ] [--out results/dev/...]

For each problem (the task's exact lm-eval prompt: chat template, gen_prefix), the greedy
answer and, per setting, the k soft vectors of the search's round 1 (same x, same per-request
projection as ``search=softreason`` would use) decoded greedily. A setting is
``base:unit:sigma``: base ``token`` (perturb the greedy first token's embedding) or ``zero``
(pure projection), unit ``rms`` (sigma in units of the model's embedding RMS) or ``abs``
(absolute). The paper's text is ``token:abs:1``; the released code's ``x @ A`` with
A ~ N(0, 1) is ``zero:abs:7.07`` (sqrt(50) per coordinate).

All settings' rows of a problem decode in one batch from one prefill (faster than one call per
setting; a batch can flip a near-tie in the last float bits, so a row may differ from the
search's own k-row call in rare cases). One JSON line per problem is appended to ``--out``
as it finishes (a rerun skips recorded doc ids); the summary (mean and standard error over
problems, per setting) is written next to it as ``.md`` and ``.json``.

Development splits only (svamp_dev, gsm8k_dev): defaults are chosen from this table.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from lm_eval_softreason.answers import answers_match, extract_answer, group_answers, majority_answer
from lm_eval_softreason.bench import provenance
from lm_eval_softreason.search.loop import round_seed
from lm_eval_softreason.search.softreason import perturbation

from devtask import DEV_TASKS, add_model_options, load_lm, run_requests  # benchmarks/devtask.py

DEFAULT_SETTINGS = ("token:rms:1", "token:rms:4", "token:rms:16", "token:abs:1", "zero:abs:1",
                    "zero:abs:7.07")


def parse_setting(text: str) -> dict:
    """``base:unit:sigma`` -> SoftReasonConfig keys; ValueError naming what is allowed."""
    parts = text.split(":")
    if len(parts) != 3 or parts[0] not in ("token", "zero") or parts[1] not in ("rms", "abs"):
        raise ValueError(f"setting {text!r}: expected base:unit:sigma with base token|zero, "
                         "unit rms|abs, e.g. token:rms:4")
    sigma = float(parts[2])
    if not sigma > 0:
        raise ValueError(f"setting {text!r}: sigma must be > 0")
    return {"base": parts[0], "sigma": sigma,
            "sigma_scale": "embedding_rms" if parts[1] == "rms" else "absolute"}


def sweep_problem(lm, request, settings: list[str]) -> dict:
    """Greedy plus round 1 of every setting for one lm-eval request; one record."""
    context, gen_kwargs = request.args
    problem = lm._problem(context, dict(gen_kwargs), request).problem
    engine, cfg = lm.engine, lm.cfg
    gold = request.doc["answer"]
    start = time.perf_counter()
    prefix = engine.prefill(problem.prompt_ids)
    generator = torch.Generator().manual_seed(round_seed(problem.seed, 1))
    x = torch.randn(cfg.k, cfg.proj_dim, generator=generator, dtype=torch.float64).clamp(
        -cfg.box, cfg.box)
    perturbations = [perturbation(replace(cfg, **parse_setting(s)), engine, prefix, problem.seed)
                     for s in settings]
    soft = torch.cat([p.vectors(x) for p in perturbations])
    [greedy] = engine.decode(prefix, None, until=problem.until, max_new_tokens=problem.max_gen_toks)
    rows = engine.decode(prefix, soft, until=problem.until, max_new_tokens=problem.max_gen_toks)
    kind = problem.answer_type
    greedy_answer = extract_answer(greedy.text, kind)
    record = {"doc_id": request.doc_id, "gold": gold, "greedy_answer": greedy_answer,
              "greedy_correct": answers_match(greedy_answer, gold, kind),
              "greedy_tokens": len(greedy.token_ids), "wall_s": None, "settings": {}}
    for i, (name, p) in enumerate(zip(settings, perturbations)):
        cands = rows[i * cfg.k:(i + 1) * cfg.k]
        answers = [extract_answer(p.lead + c.text, kind) for c in cands]
        vote = majority_answer(answers, kind)
        record["settings"][name] = {
            "sigma_abs": p.sigma_abs, "answers": answers,
            "distinct": len(group_answers(answers, kind)),
            "parsable": sum(a is not None for a in answers),
            "coverage": any(answers_match(a, gold, kind) for a in answers),
            "vote_correct": answers_match(vote, gold, kind),
            "vote_is_greedy": vote is not None and answers_match(vote, greedy_answer, kind),
            "coherence": [c.coherence for c in cands],
            "tokens": [len(c.token_ids) for c in cands],
            "stops": [c.stop_reason for c in cands],
        }
    record["wall_s"] = time.perf_counter() - start
    return record


def _mean_se(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return statistics.fmean(values), se


def summarise(records: list[dict], settings: list[str], k: int) -> list[dict]:
    rows = []
    for name in settings:
        per = [r["settings"][name] for r in records if name in r["settings"]]
        if not per:
            continue
        metrics = {
            "distinct_per_k": [p["distinct"] for p in per],
            "parsable_rate": [p["parsable"] / k for p in per],
            "coverage": [float(p["coverage"]) for p in per],
            "vote_acc": [float(p["vote_correct"]) for p in per],
            "vote_is_greedy": [float(p["vote_is_greedy"]) for p in per],
            "coherence": [statistics.fmean(p["coherence"]) for p in per],
            "tokens_per_candidate": [statistics.fmean(p["tokens"]) for p in per],
            "max_tokens_rate": [p["stops"].count("max_tokens") / k for p in per],
        }
        row = {"setting": name, "n": len(per), "sigma_abs": per[0]["sigma_abs"]}
        for key, values in metrics.items():
            row[key], row[key + "_se"] = _mean_se(values)
        rows.append(row)
    return rows


def render(rows: list[dict], records: list[dict], header: str) -> str:
    greedy = _mean_se([float(r["greedy_correct"]) for r in records])
    lines = [header, "",
             f"greedy accuracy: {greedy[0]:.3f} ± {greedy[1]:.3f} (n={len(records)})", "",
             "| setting (base:unit:sigma) | sigma abs | n | distinct answers / k | parsable | "
             "coverage | vote acc | vote = greedy | coherence | tokens / cand. | hit max tokens |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cells = [f"`{r['setting']}`", f"{r['sigma_abs']:.4g}", str(r["n"])]
        for key, fmt in (("distinct_per_k", "{:.2f}"), ("parsable_rate", "{:.2f}"),
                         ("coverage", "{:.2f}"), ("vote_acc", "{:.2f}"),
                         ("vote_is_greedy", "{:.2f}"), ("coherence", "{:.3f}"),
                         ("tokens_per_candidate", "{:.0f}"), ("max_tokens_rate", "{:.2f}")):
            cells.append(f"{fmt.format(r[key])} ± {fmt.format(r[key + '_se'])}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Mean ± standard error over problems. Round 1 only (k soft vectors from "
              "N(0, I), no verifier, no GP); `coverage`: any of the k right; `vote acc`: their "
              "majority right; `vote = greedy`: the majority equals greedy's answer."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_options(ap)
    ap.add_argument("--task", default="svamp_dev", choices=DEV_TASKS)
    ap.add_argument("--limit", type=int, default=30)
    ap.add_argument("--settings", nargs="+", default=list(DEFAULT_SETTINGS))
    ap.add_argument("--out", default=None, help="JSONL of per-problem records")
    args = ap.parse_args()
    if args.limit < 1:
        ap.error(f"--limit must be >= 1, got {args.limit}")
    for s in args.settings:
        parse_setting(s)

    spec, lm = load_lm(args)
    out = Path(args.out or f"results/dev/perturbation_{spec.label}_{args.task}.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {json.loads(line)["doc_id"] for line in out.open()} if out.exists() else set()

    def generate_until(requests):
        texts = []
        for request in requests:
            if request.doc_id not in done:
                record = sweep_problem(lm, request, args.settings)
                with out.open("a") as fh:
                    fh.write(json.dumps(record) + "\n")
                print(f"doc {request.doc_id}: {record['wall_s']:.0f} s", flush=True)
            texts.append("")
        return texts

    run_requests(lm, args.task, generate_until, limit=args.limit)

    records = [json.loads(line) for line in out.open()]
    records = sorted((r for r in records if r["doc_id"] < args.limit), key=lambda r: r["doc_id"])
    rows = summarise(records, args.settings, lm.cfg.k)
    device = provenance.device_info(lm.engine.device)
    header = (f"# Perturbation sweep: {spec.label}, {args.task}, first {len(records)} problems\n\n"
              f"dtype {lm.cfg.dtype if lm.cfg.dtype != 'auto' else lm.model.dtype}; "
              f"k={lm.cfg.k}, d={lm.cfg.proj_dim}; embedding RMS "
              f"{lm.engine.embedding_rms():.4g}; {device['cpu']} ({device['cpu_class']}, "
              f"{device['torch_threads']} threads); "
              f"`python benchmarks/perturbation_sweep.py --task {args.task} --limit {args.limit}"
              f"{' --bench-model ' + args.bench_model if args.bench_model else ''}`")
    out.with_suffix(".md").write_text(render(rows, records, header))
    out.with_suffix(".json").write_text(json.dumps({"header": header, "rows": rows}, indent=1))
    print(render(rows, records, header))


if __name__ == "__main__":
    main()
