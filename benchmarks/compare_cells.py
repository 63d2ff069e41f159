"""Paired comparison of any `softreason-bench` cells of one task, finished or not.

    python benchmarks/compare_cells.py results/qwen2.5-coder-1.5b/svamp_dev \\
        greedy sc@10 softreason sr-noverifier [--out results/dev/F.md]

`softreason-bench report` pairs only complete cells; a development decision (keep the verifier
or not, which preset) is often taken on the first n problems that every candidate cell has.
This reads the cells' sample records, keeps the doc ids that *all* named cells recorded, and
prints per method: accuracy ± standard error, coverage, generated tokens per problem (of them
the verifier's), prompt tokens, rounds; then every pair's paired split (right only with the
row / only with the column) and its exact two-sided McNemar p. Costs are on the same problems,
so token ratios compare like with like.
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import statistics
import sys
from pathlib import Path

from lm_eval_softreason.bench import provenance, records
from lm_eval_softreason.bench.report import ENGINE_ARGS
from lm_eval_softreason.bench.compare import exact_mcnemar


def _where(task_dir: Path, method: str) -> tuple[str, Path]:
    """(method, folder): ``method:DIR`` names a cell kept under another results root (e.g. a
    superseded preset's or a check's)."""
    if ":" in method:
        method, folder = method.split(":", 1)
        return method, Path(folder)
    return method, task_dir


def load(task_dir: Path, method: str) -> dict[int, dict]:
    """The records of cell ``method`` in ``task_dir`` (``method:DIR``: in DIR)."""
    method, task_dir = _where(task_dir, method)
    paths = records.samples_paths_for(task_dir / f"{method}.json")
    found = records.read_samples(paths)
    if not found:
        raise SystemExit(f"no sample records for method {method!r} under {task_dir}")
    return {r["doc_id"]: r for r in found}


def cell_setup(task_dir: Path, method: str) -> str:
    """Where ``method``'s cell ran: its machines and the model_args that name the engine, so a
    check that varies one of them (CPU class, linear kernel) says so in its own table."""
    method, task_dir = _where(task_dir, method)
    try:
        cell = records.read_cell(task_dir / f"{method}.json")
    except (OSError, ValueError):
        return "no cell JSON"
    machines = [provenance.describe_device(d)
                for d in records.devices(cell.get("provenance") or {})]
    args = cell.get("model_args") or {}
    engine = ", ".join(f"{k}={args[k]}" for k in ENGINE_ARGS if args.get(k) is not None)
    return f"{' and '.join(dict.fromkeys(machines)) or '?'}; {engine or '?'}"


def _mean(values: list[float]) -> str:
    return f"{statistics.fmean(values):,.0f}" if values else "–"


def label(method: str) -> str:
    """``NAME`` or, for ``NAME:DIR``, ``NAME [results root of DIR]``."""
    if ":" not in method:
        return method
    name, folder = _where(Path(), method)
    return f"{name} [{folder.parent.parent}]"


def compare(task_dir: Path, methods: list[str]) -> str:
    setups = [f"- `{label(m)}`: {cell_setup(task_dir, m)}" for m in methods]
    cells = {label(m): load(task_dir, m) for m in methods}
    methods = list(cells)
    shared = sorted(set.intersection(*(set(c) for c in cells.values())))
    if not shared:
        raise SystemExit(f"the cells {', '.join(methods)} share no problem")
    lines = [f"# {task_dir.parent.name} / {task_dir.name}: {', '.join(methods)}", "",
             f"n = {len(shared)} problems recorded by every cell (doc ids {shared[0]}-"
             f"{shared[-1]}{'' if shared[-1] - shared[0] + 1 == len(shared) else ', with gaps'})",
             "", f"`python benchmarks/compare_cells.py {shlex.join(sys.argv[1:])}`", "",
             *setups, "",
             "| method | accuracy | coverage | gen tokens / problem | of them verifier | "
             "prompt tokens | rounds |", "|---|---:|---:|---:|---:|---:|---:|"]
    for m, cell in cells.items():
        rs = [cell[i] for i in shared]
        acc, se = records.mean_and_stderr([float(r["acc"]) for r in rs])
        cov = [float(r["coverage"]) for r in rs if r.get("coverage") is not None]
        stats = [r.get("stats") or {} for r in rs]
        coverage = f"{statistics.fmean(cov):.3f}" if cov else "–"
        gen = [r["gen_tokens"] for r in rs if r.get("gen_tokens") is not None]
        prompt = [r["prompt_tokens"] for r in rs if r.get("prompt_tokens") is not None]
        verifier = [s["verifier_tokens"] for s in stats if "verifier_tokens" in s]
        rounds = statistics.fmean(s.get("rounds", 1) for s in stats)
        lines.append(f"| `{m}` | {acc:.3f} ± {se or 0:.3f} | {coverage} | {_mean(gen)} | "
                     f"{_mean(verifier)} | {_mean(prompt)} | {rounds:.2f} |")
    lines += ["", "| row vs column: right only with row / only with column (exact McNemar p) | "
              + " | ".join(f"`{m}`" for m in methods) + " |",
              "|---|" + "---:|" * len(methods)]
    for a in methods:
        row = []
        for b in methods:
            if a == b:
                row.append("–")
                continue
            a_only = sum(cells[a][i]["acc"] > cells[b][i]["acc"] for i in shared)
            b_only = sum(cells[b][i]["acc"] > cells[a][i]["acc"] for i in shared)
            row.append(f"+{a_only} / −{b_only} (p={exact_mcnemar(a_only, b_only):.2g})")
        lines.append(f"| `{a}` | " + " | ".join(row) + " |")

    def agree(key: str) -> str:
        return "; ".join(
            f"`{a}` = `{b}`: {sum(cells[a][i].get(key) == cells[b][i].get(key) for i in shared)}"
            for a, b in itertools.combinations(methods, 2))

    lines += ["", "Same final answer on the shared problems: " + agree("answer") + ".",
              "Same returned text, character for character: " + agree("response") + ".", "",
              "Not shown: anything beyond these problems; wall time (cells may have run under "
              "different loads and batch sizes).", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("task_dir", type=Path, help="results/<model>/<task>")
    ap.add_argument("methods", nargs="+",
                    help="cell names (method names) in that folder; NAME:DIR for one elsewhere")
    ap.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = ap.parse_args()
    if len(args.methods) < 2:
        sys.exit("name at least two methods to compare")
    report = compare(args.task_dir, args.methods)
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report, encoding="utf-8")


if __name__ == "__main__":
    main()
