"""Summarise a ``trace_dir`` written by ``--model_args trace_dir=...``: per request, the
rounds with their rewards and answers, the verifier's answers, tokens and the time split; then
the share of wall time spent in BO (GP fit + acquisition) over all requests.

    python benchmarks/trace_summary.py results/paper_tasks_limit5/traces [--task svamp] [--first 1]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _fmt(answer) -> str:
    return "-" if answer is None else f"{answer:g}" if isinstance(answer, float) else str(answer)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace_dir")
    ap.add_argument("--task", default=None)
    ap.add_argument("--first", type=int, default=None, help="print details of the first N requests")
    args = ap.parse_args()
    records = [json.loads(line) for path in sorted(Path(args.trace_dir).glob("*.jsonl"))
               for line in path.read_text().splitlines() if line.strip()]
    if args.task:
        records = [r for r in records if r["task"] == args.task]
    for rec in records[: args.first if args.first is not None else len(records)]:
        s = rec["stats"]
        print(f"# {rec['task']} doc {rec['doc_id']}: {rec['question'][:100]}")
        rounds = sorted({c["round"] for c in rec["candidates"]})
        for r in rounds:
            cands = [c for c in rec["candidates"] if c["round"] == r]
            pairs = ", ".join(f"{_fmt(c['answer'])}:{c['reward']:.2f}" for c in cands)
            verdict = rec["verifier_answers"][r - 1] if r - 1 < len(rec["verifier_answers"]) else None
            print(f"  round {r}: answer:reward  {pairs}   | verifier: {_fmt(verdict)}")
        print(f"  chosen answer {_fmt(s['answer'])}; stop {s['stop_reason']}; "
              f"distinct answers/round {s['distinct_answers_per_round']}")
        print(f"  tokens: prompt {s['prompt_tokens']}, candidates {s['candidate_tokens']}, "
              f"verifier {s['verifier_tokens']}, forward passes {s['forward_passes']}")
        print(f"  time: wall {s['wall_s']:.1f}s = decode {s['decode_s']:.1f} + verify "
              f"{s['verify_s']:.1f} + BO {s['bo_s']:.2f} (+ other)\n")
    wall = sum(r["stats"]["wall_s"] for r in records)
    bo = sum(r["stats"]["bo_s"] for r in records)
    decode = sum(r["stats"]["decode_s"] for r in records)
    verify = sum(r["stats"]["verify_s"] for r in records)
    if records:
        print(f"{len(records)} requests: wall {wall:.0f}s, decode {100 * decode / wall:.1f}%, "
              f"verify {100 * verify / wall:.1f}%, BO {100 * bo / wall:.2f}% "
              f"({bo / max(1, sum(r['stats']['rounds'] - 1 for r in records)):.2f}s per BO round)")


if __name__ == "__main__":
    main()
