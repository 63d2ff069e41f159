"""How good is the self-verifier, and which final-answer rule should the search use?

    python benchmarks/verifier_rules.py results/qwen2.5-coder-1.5b/svamp_dev/softreason.samples.jsonl [...]

Reads ``softreason-bench`` sample records of softreason-family cells (every candidate's answer
and reward, every verifier answer and the round it was given in) and prints, per file:

* the verifier per call against the plain majority of the candidates it was shown (v1: that
  round's; grouped/v2: every candidate so far), who is right where they disagree, and how
  often a verdict that matches no candidate is right;
* every final-answer rule replayed on the same candidates: ``vote`` (candidates + verifier
  answers, the paper's), ``vote_candidates``, ``weighted`` (each candidate votes with its
  reward), ``best`` (highest reward), with accuracy ± standard error and the exact McNemar
  p-value of each against ``vote`` (paired by problem).

The replay uses the rewards as recorded, so it is exact for the rule the cell ran and for
the rules that read only answers; ``weighted``/``best`` see final (re-scored) rewards.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from lm_eval_softreason.answers import answers_match, majority_answer, parse_gold
from lm_eval_softreason.bench.compare import exact_mcnemar

RULES = ("vote", "vote_candidates", "weighted", "best")


def _k(stats: dict) -> int:
    rounds = max(1, int(stats.get("rounds") or 1))
    return max(1, len(stats.get("candidate_answers") or []) // rounds)


def replay(stats: dict, rule: str, kind: str = "numeric"):
    """The final answer ``rule`` gives on one request's recorded candidates."""
    answers = stats.get("candidate_answers") or []
    rewards = stats.get("rewards") or [0.0] * len(answers)
    order = sorted(range(len(answers)), key=lambda i: -rewards[i])  # as the search ranks them
    ranked = [answers[i] for i in order]
    if not ranked:
        return None
    if rule == "best":
        return ranked[0]
    if rule == "vote":
        return majority_answer(ranked + list(stats.get("verifier_answers") or []), kind)
    if rule == "vote_candidates":
        return majority_answer(ranked, kind)
    return majority_answer(ranked, kind, weights=[max(rewards[i], 0.0) for i in order])


def verifier_calls(stats: dict, grouped: bool) -> list[tuple[object, object, list]]:
    """(verdict, majority of what it was shown, the answers it was shown) per verifier call."""
    answers = stats.get("candidate_answers") or []
    k = _k(stats)
    verdicts = stats.get("verifier_answers") or []
    rounds = stats.get("verdict_rounds") or list(range(1, len(verdicts) + 1))
    calls = []
    for verdict, r in zip(verdicts, rounds):
        shown = answers[: r * k] if grouped else answers[(r - 1) * k: r * k]
        calls.append((verdict, majority_answer(shown, "numeric"), shown))
    return calls


def mcnemar(a: list[bool], b: list[bool]) -> tuple[int, int, float]:
    """(right only with a, right only with b, exact two-sided McNemar p)."""
    only_a = sum(x and not y for x, y in zip(a, b))
    only_b = sum(y and not x for x, y in zip(a, b))
    return only_a, only_b, exact_mcnemar(only_a, only_b)


def _acc(values: list[bool]) -> str:
    n = len(values)
    p = sum(values) / n if n else float("nan")
    se = math.sqrt(p * (1 - p) / n) if n else float("nan")
    return f"{p:.3f} ± {se:.3f}"


def analyse(path: Path) -> str:
    records = [json.loads(line) for line in path.open() if line.strip()]
    grouped = any((r.get("stats") or {}).get("verdict_rounds") for r in records)
    lines = [f"## {path}", "", f"n = {len(records)} problems; verifier prompt: "
             f"{'grouped (v2)' if grouped else 'attempts (v1)'}", ""]
    calls = right_v = right_m = disagree = v_only = m_only = unmatched = unmatched_right = 0
    for r in records:
        gold = parse_gold(r["target"])
        for verdict, majority, shown in verifier_calls(r["stats"], grouped):
            calls += 1
            v_ok, m_ok = answers_match(verdict, gold), answers_match(majority, gold)
            right_v += v_ok
            right_m += m_ok
            if not answers_match(verdict, majority):
                disagree += 1
                v_only += v_ok and not m_ok
                m_only += m_ok and not v_ok
            if verdict is not None and not any(answers_match(verdict, a) for a in shown):
                unmatched += 1
                unmatched_right += v_ok
    none = sum(v is None for r in records for v in (r["stats"].get("verifier_answers") or []))
    if calls:
        lines += [f"- verifier calls: {calls}; right {right_v / calls:.3f}; the plain majority of "
                  f"the candidates it saw: right {right_m / calls:.3f}",
                  f"- they disagree on {disagree} calls: verifier right {v_only}, majority right "
                  f"{m_only}",
                  f"- verdicts matching no candidate it saw: {unmatched}, of them right "
                  f"{unmatched_right}; unparsable verdicts: {none}", ""]
    else:
        lines += ["- no verifier calls (every request stopped before verifying)", ""]
    golds = [parse_gold(r["target"]) for r in records]
    right = {rule: [answers_match(replay(r["stats"], rule), g) for r, g in zip(records, golds)]
             for rule in RULES}
    lines += ["| rule | accuracy | right only with rule / only with `vote` (McNemar p) |",
              "|---|---:|---:|"]
    for rule in RULES:
        a, b, p = mcnemar(right[rule], right["vote"])
        versus = "–" if rule == "vote" else f"+{a} / −{b} (p={p:.2g})"
        lines.append(f"| `{rule}` | {_acc(right[rule])} | {versus} |")
    recorded = [bool(r.get("acc")) for r in records]
    lines += ["", f"recorded accuracy (the rule the cell ran): {_acc(recorded)}",
              f"mean verifier calls per problem: "
              f"{statistics.fmean(len(r['stats'].get('verifier_answers') or []) for r in records):.2f}",
              ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("samples", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = ap.parse_args()
    missing = [str(p) for p in args.samples if not p.is_file()]
    if missing:
        sys.exit(f"no such samples file: {', '.join(missing)}")
    report = "\n".join(analyse(p) for p in args.samples)
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)


if __name__ == "__main__":
    main()
