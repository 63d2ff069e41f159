"""Cross-request batching before and after a change, on the same problems (issue 19).

    python benchmarks/batching_ab.py --bench-model qwen2.5-coder-1.5b --before 5773058 \
        --problems 8 --slots 4 [--first 90] [--out results/batching_ab]

Runs the same Soft Reasoning searches (``svamp_dev`` problems ``--first`` onwards, default
preset, ``batch_size=--slots``) twice, each in a process of its own: first with the package as
it was at git ref ``--before`` (checked out into a temporary worktree that goes first on
``PYTHONPATH``), then with this checkout. Reports the wall time, seconds per problem,
generated tokens per second, and whether every problem's answer, generated tokens, rounds and
forward passes agree. Run it alone: another job on the cores makes the timings meaningless.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cpu_engine import report_head, write_report

REPO = Path(__file__).resolve().parents[1]


def child(args: argparse.Namespace) -> None:
    """(in the child process) The searches with whichever package is first on sys.path."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    import lm_eval_softreason
    from lm_eval_softreason import _hook
    from lm_eval_softreason.lm import SoftReasonLM

    _hook.install()
    load_args = json.loads(args.load_args)
    lm = SoftReasonLM(**load_args, batch_size=args.slots)
    tm = TaskManager(include_defaults=False, include_path=[_hook.tasks_dir()],
                     metadata={"data_dir": args.data_dir})
    docs = list(range(args.first, args.first + args.problems))
    start = time.perf_counter()
    res = lm_eval.simple_evaluate(model=lm, tasks=["svamp_dev"], samples={"svamp_dev": docs},
                                  apply_chat_template=True, task_manager=tm, log_samples=True,
                                  bootstrap_iters=0)
    wall = time.perf_counter() - start
    problems = []
    for s in sorted(res["samples"]["svamp_dev"], key=lambda e: e["doc_id"]):
        stats = s["resps"][0][0].stats
        problems.append({"doc_id": s["doc_id"], "answer": stats["answer"], "acc": s["acc"],
                         "gen_tokens": stats["gen_tokens"], "rounds": stats["rounds"],
                         "forward_passes": stats["forward_passes"]})
    # which checkout was imported, named relative to this script's repo (no machine paths)
    imported = Path(lm_eval_softreason.__file__).resolve().parents[1]
    checkout = "this checkout" if imported == REPO else "the --before worktree"
    print("RESULT " + json.dumps({"checkout": checkout, "wall_s": wall,
                                  "problems": problems, "engine": lm.engine.stats.__dict__}))


def run_side(args: argparse.Namespace, load_args: dict, pythonpath: str | None) -> dict:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    from lm_eval_softreason.bench.runner import default_data_dir

    # this checkout's data dir: the other checkout's default (next to it) is not there
    cmd = [sys.executable, __file__, "--child", "--load-args", json.dumps(load_args),
           "--data-dir", str(Path(default_data_dir()).resolve()),
           "--slots", str(args.slots), "--first", str(args.first),
           "--problems", str(args.problems)]
    out = subprocess.run(cmd, env=env, cwd=tempfile.gettempdir(), capture_output=True,
                         text=True)
    if out.returncode:
        raise SystemExit(f"the {'before' if pythonpath else 'after'} run failed:\n"
                         + out.stderr[-3000:])
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")][-1]
    side = json.loads(line[len("RESULT "):])
    expected = "the --before worktree" if pythonpath else "this checkout"
    if side["checkout"] != expected:
        raise SystemExit(f"the run imported {side['checkout']}, expected {expected}")
    tokens = sum(p["gen_tokens"] for p in side["problems"])
    side.update(s_per_problem=side["wall_s"] / args.problems, gen_tok_s=tokens / side["wall_s"])
    return side


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    model = ap.add_mutually_exclusive_group()
    model.add_argument("--bench-model")
    model.add_argument("--pretrained")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--before", help="git ref of the package to compare against")
    ap.add_argument("--problems", type=int, default=8)
    ap.add_argument("--first", type=int, default=90, help="first svamp_dev doc id")
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--out", default="results/batching_ab")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--load-args", help=argparse.SUPPRESS)
    ap.add_argument("--data-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    if not args.before:
        ap.error("--before REF is required")
    args.tokens = None
    load_args, head = report_head(args)
    report = {**head, "before_ref": args.before, "slots": args.slots, "first": args.first,
              "problems": args.problems}
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "before"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree),
                        args.before], check=True, capture_output=True)
        try:
            report["before"] = run_side(args, load_args, str(tree))
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
                           capture_output=True)
    report["after"] = run_side(args, load_args, None)
    write_report(report, args.out, render)


def render(report: dict) -> str:
    b, a = report["before"], report["after"]
    keys = ("answer", "gen_tokens", "rounds", "forward_passes")
    same = {k: sum(x[k] == y[k] for x, y in zip(b["problems"], a["problems"])) for k in keys}
    n, dev = report["problems"], report["device"]
    return "\n".join([
        f"# Cross-request batching before/after: {report['model']}, {report['dtype']}, "
        f"{dev['cpu']} ({dev['cpu_class']}, {dev['cpu_count']} cores)", "",
        f"svamp_dev problems {report['first']}-{report['first'] + n - 1} (n={n}), softreason "
        f"default preset, batch_size={report['slots']}; before = {report['before_ref']}, after "
        f"= {report['git'].get('commit', '?')[:10]}"
        f"{' (dirty)' if report['git'].get('dirty') else ''}", "",
        "| | wall s | s / problem | gen tok/s | right |", "|---|---:|---:|---:|---:|",
        *(f"| {name} | {side['wall_s']:.0f} | {side['s_per_problem']:.0f} | "
          f"{side['gen_tok_s']:.2f} | {sum(p['acc'] for p in side['problems']):.0f}/{n} |"
          for name, side in (("before", b), ("after", a))),
        "", f"after / before wall: {a['wall_s'] / b['wall_s']:.2f}x. Same per problem: "
        + ", ".join(f"{k} {v}/{n}" for k, v in same.items()) + ".", ""])


if __name__ == "__main__":
    main()
