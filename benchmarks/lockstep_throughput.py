"""Cross-request batching on CPU: generated tokens/s, wall time per problem and peak RSS for
1, 4 and 8 concurrent searches (``batch_size``), same problems, same settings.

Each setting runs in its own process (so peak RSS is that setting's), one after the other, on
the first ``--limit`` problems of ``--task`` through lm-eval, with the chat template. It also
checks that every problem's answer is the same at every setting.

    python benchmarks/lockstep_throughput.py --limit 8 --out results/lockstep_throughput
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def one_setting(args: argparse.Namespace) -> dict:
    import lm_eval

    from lm_eval_softreason import _hook
    from lm_eval_softreason.lm import SoftReasonLM

    _hook.install()
    from lm_eval.tasks import TaskManager

    slots = args.slots[0]
    lm = SoftReasonLM(batch_size=slots, dtype=args.dtype, **_kv(args.model_args))
    tm = TaskManager(metadata={"data_dir": args.data_dir}, include_defaults=False,
                     include_path=[_hook.tasks_dir()])
    start = time.perf_counter()
    result = lm_eval.simple_evaluate(model=lm, tasks=[args.task], limit=args.limit,
                                     apply_chat_template=True, log_samples=True,
                                     task_manager=tm, bootstrap_iters=0)
    wall = time.perf_counter() - start
    totals = lm.totals
    samples = sorted(result["samples"][args.task], key=lambda s: s["doc_id"])
    return {
        "slots": slots, "problems": len(samples), "wall_s": wall,
        "wall_s_per_problem": wall / len(samples),
        "gen_tokens": totals["gen_tokens"], "gen_tokens_per_s": totals["gen_tokens"] / wall,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "acc": result["results"][args.task]["acc,none"],
        "answers": [s["resps"][0][0].stats["answer"] for s in samples],
        "texts": [str(s["resps"][0][0]) for s in samples],
        "rounds": [s["resps"][0][0].stats["rounds"] for s in samples],
    }


def _kv(text: str) -> dict:
    return dict(kv.split("=", 1) for kv in text.split(",") if kv)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slots", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--limit", type=int, default=8)
    p.add_argument("--task", default="svamp")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--model-args", default="", help="extra softreason model_args (k=v,...)")
    p.add_argument("--data-dir", default=os.environ.get("LM_EVAL_SOFTREASON_DATA", "../shared/data"))
    p.add_argument("--out", type=Path, help="write <out>.json and <out>.md")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(one_setting(args)))
        return
    runs = []
    for slots in args.slots:  # one process per setting, one at a time
        cmd = [sys.executable, __file__, "--child", "--slots", str(slots), "--limit",
               str(args.limit), "--task", args.task, "--dtype", args.dtype,
               "--model-args", args.model_args, "--data-dir", args.data_dir]
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
        r = runs[-1]
        print(f"slots={slots}: {r['gen_tokens_per_s']:.1f} gen tok/s, "
              f"{r['wall_s_per_problem']:.1f} s/problem, peak RSS {r['peak_rss_gib']:.2f} GiB, "
              f"acc {r['acc']:.3f}", flush=True)
    base = runs[0]
    for r in runs:
        r["speedup_vs_1"] = base["wall_s"] / r["wall_s"]
        r["same_answers_as_first"] = r["answers"] == base["answers"]
        r["same_texts_as_first"] = sum(a == b for a, b in zip(r["texts"], base["texts"]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"task": args.task, "limit": args.limit, "dtype": args.dtype,
                "model_args": args.model_args, "cpu_threads": os.cpu_count(),
                "command": " ".join(sys.argv)}
        args.out.with_suffix(".json").write_text(json.dumps({**meta, "runs": runs}, indent=2))
        lines = [f"# Cross-request batching, {args.task} first {args.limit}, "
                 f"embedded model unless model_args say otherwise\n",
                 "| concurrent searches | gen tok/s | s/problem | speed-up | peak RSS GiB "
                 "| same answers as 1 | same texts as 1 | acc |",
                 "|---|---|---|---|---|---|---|---|"]
        for r in runs:
            lines.append(f"| {r['slots']} | {r['gen_tokens_per_s']:.1f} | "
                         f"{r['wall_s_per_problem']:.1f} | {r['speedup_vs_1']:.2f}x | "
                         f"{r['peak_rss_gib']:.2f} | {r['same_answers_as_first']} | "
                         f"{r['same_texts_as_first']}/{r['problems']} | {r['acc']:.3f} |")
        args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
