"""BO against random search, round by round, from two `softreason-bench` cells of one task.

    python benchmarks/bo_vs_random_cells.py results/qwen2.5-coder-1.5b/svamp_dev \\
        [--bo softreason] [--random random] [--out results/dev/bo_vs_random_svamp_dev.md]

``compare_cells.py`` gives the two cells' accuracy, tokens and paired split. This says where
the GP could have made a difference: both searches draw the same first round (its points
depend only on the seed), so they can differ only from round 2 on. On the problems where both
ran a round 2 it compares, paired per problem: round 2's best reward minus round 1's (did the
proposals find better points?), how often round 2 beat round 1, how many answers round 2
added that round 1 had not seen, round 2's mean reward, and the final answers. Rewards are
the ones each search recorded (under preset v3, ``w_verifier=0``, they are coherence alone).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from scipy import stats

from compare_cells import load
from lm_eval_softreason.bench import records


def compare(task_dir: Path, bo: str, rnd: str, k: int = 5) -> str:
    a, b = load(task_dir, bo), load(task_dir, rnd)
    shared = sorted(set(a) & set(b))
    same_first = sum(a[i]["stats"]["candidate_answers"][:k] ==
                     b[i]["stats"]["candidate_answers"][:k] for i in shared)
    both = [i for i in shared if a[i]["stats"]["rounds"] >= 2 and b[i]["stats"]["rounds"] >= 2]
    lines = [f"# BO (`{bo}`) against random search (`{rnd}`): {task_dir.parent.name} / "
             f"{task_dir.name}", "",
             f"n = {len(shared)} problems both cells recorded. Round 1 gave the same {k} "
             f"candidate answers in both on {same_first}/{len(shared)} (same points by "
             f"design); both went on to a round 2 on {len(both)}.", ""]
    if not both:
        return "\n".join(lines + ["No problem ran a round 2 in both: nothing to compare."]) + "\n"

    def figures(cell: dict) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {"gain": [], "beat": [], "new": [], "mean2": []}
        for i in both:
            rewards, answers = cell[i]["stats"]["rewards"], cell[i]["stats"]["candidate_answers"]
            gain = max(rewards[k:2 * k]) - max(rewards[:k])
            out["gain"].append(gain)
            out["beat"].append(float(gain > 0))
            out["new"].append(float(len(set(answers[k:2 * k]) - set(answers[:k]))))
            out["mean2"].append(statistics.fmean(rewards[k:2 * k]))
        return out

    fa, fb = figures(a), figures(b)

    def cell(values: list[float], digits: int) -> str:
        mean, se = records.mean_and_stderr(values)
        return f"{mean:.{digits}f} ± " + ("–" if se is None else f"{se:.{digits}f}")

    def wilcoxon(x: list[float], y: list[float]) -> str:
        diffs = [u - v for u, v in zip(x, y)]
        if not any(diffs):
            return "p = 1 (all ties)"
        return f"p = {stats.wilcoxon(x, y).pvalue:.2g}"

    lines += [f"On those {len(both)} (mean ± standard error; paired Wilcoxon signed-rank p):", "",
              f"| per problem | `{bo}` | `{rnd}` | paired |", "|---|---:|---:|---:|"]
    for key, what, digits in (("gain", "round 2's best reward − round 1's", 4),
                              ("beat", "round 2 beat round 1 (share)", 2),
                              ("new", "answers round 2 added", 2),
                              ("mean2", "round 2's mean reward", 4)):
        lines.append(f"| {what} | {cell(fa[key], digits)} | {cell(fb[key], digits)} | "
                     f"{wilcoxon(fa[key], fb[key])} |")
    right_a = sum(a[i]["acc"] for i in both)
    right_b = sum(b[i]["acc"] for i in both)
    same = sum(a[i]["answer"] == b[i]["answer"] for i in both)
    tokens_a = statistics.fmean(a[i]["gen_tokens"] for i in shared)
    tokens_b = statistics.fmean(b[i]["gen_tokens"] for i in shared)
    lines += ["", f"Final answers: the same on {same}/{len(both)} of them; right {right_a:.0f} "
              f"(`{bo}`) and {right_b:.0f} (`{rnd}`). Generated tokens per problem over all "
              f"{len(shared)}: {tokens_a:,.0f} and {tokens_b:,.0f} "
              f"({tokens_a / tokens_b:.2f}x).", "",
              "Not shown: rounds 3 and later (few problems reach them); other tasks or models; "
              "a reward with a verifier term.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("task_dir", type=Path)
    ap.add_argument("--bo", default="softreason")
    ap.add_argument("--random", default="random")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    text = compare(args.task_dir, args.bo, args.random)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
