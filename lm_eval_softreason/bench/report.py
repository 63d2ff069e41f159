"""``softreason-bench report``: ``results/LEADERBOARD.md`` and ``results/pareto_<task>.png``,
regenerated from the cell files only (``results/<model>/<task>/<method>.json`` and their
samples); never edit the outputs by hand.

Per task and model, one row per method: accuracy ± standard error and n, coverage, generated
tokens, candidates and rounds per problem, wall seconds per problem (timed around the model's
``generate_until``, the same clock for every method), tokens and time relative to ``greedy`` on
the problems both ran (time only where both ran on the same machine: "(n=k)" when that is
fewer), and the paired right/wrong split against ``greedy`` with its exact
McNemar p (plus ``softreason`` against every other method). A cell that has not finished is
listed as "incomplete (k/n done)", and a planned cell (``<model>/planned.json``, written by the
runner) that never started as "not started (0/n)"; neither is dropped.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from . import provenance, records
from .compare import answer_agreement, paired_text, relative_cost, shared_ids
from .methods import METHODS, SR_AT_SC10
from .paper import paper_section

HEADER = ("method", "accuracy", "n", "coverage", "gen tokens / problem", "candidates / problem",
          "rounds / problem", "wall s / problem", "tokens vs greedy", "time vs greedy",
          "right/wrong vs greedy (p)")
REFERENCES = ("greedy", "hf-greedy")  # what "relative to greedy" divides by, first found
ENGINE_ARGS = ("preset", "backend", "cpu_linear", "batch_size")  # named on each table's setup line


def _method_order(name: str) -> tuple[int, bool, str]:
    """METHODS order; an ``sc@<N>`` row next to ``sc@10``, an ``sr@<N>`` row next to
    ``softreason``, anything else last."""
    order = list(METHODS)
    base = name if name in order else (
        "sc@10" if name.startswith("sc@") else
        "softreason" if name.startswith("sr@") else None)
    return (order.index(base) if base else len(order), name != base, name)


def _num(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:,.{digits}f}"


def load_cells(results_dir: Path) -> dict[str, dict[str, dict[str, dict]]]:
    """{task: {model: {method: cell}}} with each cell's records under ``"_records"`` and, for
    unfinished cells, ``n_done`` recounted from the samples file (it may run one ahead)."""
    table: dict[str, dict[str, dict[str, dict]]] = defaultdict(lambda: defaultdict(dict))
    for path, cell in records.iter_cells(results_dir):
        cell = dict(cell)
        samples = records.read_samples(records.samples_paths_for(path))
        cell["_records"] = {r["doc_id"]: r for r in samples if r["doc_id"] < cell["n_target"]}
        if not cell.get("complete"):
            cell["n_done"] = len(cell["_records"])
            cell["complete"] = cell["n_done"] >= cell["n_target"]
            if cell["complete"]:
                cell["metrics"] = records.aggregate(list(cell["_records"].values()))
        table[cell["task"]][cell["model"]][cell["method"]] = cell
    for model, planned in records.read_planned(results_dir).items():
        largest: dict[tuple[str, str], int] = {}  # chunked runs ask for 10, 20, 30: take 30
        for method, task, limit in planned:
            largest[method, task] = max(limit, largest.get((method, task), 0))
        for (method, task), limit in largest.items():
            cell = table[task][model].setdefault(method, {
                "task": task, "model": model, "method": method, "complete": False,
                "n_done": 0, "n_target": limit, "limit": limit, "_records": {}, "metrics": {}})
            # run so far to a smaller limit (10 of a planned 30): incomplete, not a finished
            # row; a cell capped by the task's size (n_target < limit) is left as it is
            if limit > cell.get("limit", limit) and cell["n_target"] >= cell["limit"]:
                cell["n_target"], cell["complete"] = limit, False
    return table


def table_rows(cells: dict[str, dict]) -> list[list[str]]:
    """The leaderboard rows of one (task, model): one per method, in METHODS order."""
    reference = next((cells[r] for r in REFERENCES if r in cells and cells[r]["_records"]), None)
    rows = []
    for name in sorted(cells, key=_method_order):
        cell = cells[name]
        if not cell["complete"]:
            state = "incomplete" if cell["n_done"] else "not started"
            rows.append([f"`{name}`", f"{state} ({cell['n_done']}/{cell['n_target']} done)",
                         *["–"] * (len(HEADER) - 2)])
            continue
        m = cell["metrics"]
        tokens_ratio, time_ratio, timed = (relative_cost(cell, reference) if reference
                                           else (None, None, 0))
        accuracy = "–" if m["acc"] is None else (
            f"{m['acc']:.3f} ± {m['acc_stderr']:.3f}" if m.get("acc_stderr") is not None
            else f"{m['acc']:.3f}")
        tokens = _num(m["gen_tokens"]) + ("*" if m.get("gen_tokens_source") == "retokenized"
                                          else "")
        rows.append([f"`{name}`", accuracy, str(m["n"]), _num(m["coverage"], 3), tokens,
                     _num(m["candidates"]), _num(m["rounds"]), _num(m["generate_s"]),
                     _num(tokens_ratio, 2) + ("x" if tokens_ratio is not None else ""),
                     _num(time_ratio, 2) + ("x" if time_ratio is not None else "")
                     + (f" (n={timed})" if time_ratio is not None
                        and timed < len(shared_ids(cell, reference)) else ""),
                     "–" if reference is None or cell is reference
                     else paired_text(cell, reference)])
    return rows


def _machines(cells: dict[str, dict]) -> list[str]:
    """Every machine that wrote any of these cells, in first-seen order."""
    machines: list[str] = []
    for c in cells.values():
        for d in records.devices(c.get("provenance") or {}):
            text = provenance.describe_device(d)
            if text not in machines:
                machines.append(text)
    return machines


def plot_labels(task: str, model: str, cells: dict[str, dict]) -> tuple[str, dict[str, str]]:
    """The Pareto panel's title (task, model and every machine class behind its points) and
    one label per plotted method; a point on fewer problems than the panel's largest cell
    says its n, so points on different problem sets are not read as one comparison."""
    plotted = {name: c for name, c in cells.items()
               if c["complete"] and c["metrics"].get("acc") is not None
               and c["metrics"].get("gen_tokens")}
    top = max((c["metrics"]["n"] for c in plotted.values()), default=0)
    labels = {name: name + (f" (n={c['metrics']['n']})" if c["metrics"]["n"] < top else "")
              for name, c in plotted.items()}
    machines = _machines({n: c for n, c in cells.items() if "provenance" in c})
    title = f"{task}: {model}" + (f", n={top}" if top else "")
    return "\n".join([title, *machines]), labels  # one machine a line: a wrap would split one


def _commits_text(cells: dict[str, dict]) -> str:
    """The commits whose runs wrote these cells: all of them when few, else how many and the
    first and latest (each cell lists every one); runs from a checkout whose package or tasks
    differed from its commit are named, since their code is not that commit's."""
    by_start = sorted(cells.values(), key=lambda c: str(c["provenance"].get("started") or ""))
    runs = [g for c in by_start for g in records.git_commits(c["provenance"])]
    commits = list(dict.fromkeys(g.get("commit", "?")[:10] for g in runs))
    if not commits:
        return "commit ?"
    latest = max(cells.values(), key=lambda c: str(c["provenance"].get("updated") or ""))
    last = (records.git_commits(latest["provenance"]) or [{}])[-1].get("commit", "?")[:10]
    text = (f"commit {', '.join(commits)}" if len(commits) <= 3 else
            f"{len(commits)} commits, first {commits[0]}, latest {last}")
    dirty = list(dict.fromkeys(g.get("commit", "?")[:10] for g in runs if g.get("dirty")))
    if dirty:
        text += (f" ({len(dirty)} of them with uncommitted package changes: "
                 f"{', '.join(dirty)})")
    return text


def _model_line(cells: dict[str, dict]) -> str:
    cells = {name: c for name, c in cells.items() if "provenance" in c}  # skip never-started
    if not cells:
        return "No cell has started on this model yet."
    any_cell = next(iter(cells.values()))
    identity = any_cell.get("model_identity") or {}
    what = identity.get("upstream") or identity.get("embedded") or identity.get("pretrained") or ""
    dtypes = sorted({str((c.get("settings") or {}).get("model_args", {}).get("dtype"))
                     for c in cells.values()})
    machines = _machines(cells)
    chat = any_cell.get("eval", {}).get("apply_chat_template")
    shots = any_cell.get("eval", {}).get("num_fewshot") or 0
    engine = []  # the run-wide model_args (search keys differ per method and are in each cell)
    for key in ENGINE_ARGS:
        values = sorted({str(v) for c in cells.values()
                         if (v := (c.get("model_args") or {}).get(key)) is not None})
        if values:
            engine.append(f"{key}={'|'.join(values)}")
    return (f"{what}; dtype {', '.join(dtypes)}; {' and '.join(machines) or '?'}; "
            f"{shots}-shot, chat template {'on' if chat else 'off'}; "
            f"model_args {', '.join(engine) or '?'}; "
            f"torch {_library_versions(cells, 'torch')}, transformers "
            f"{_library_versions(cells, 'transformers')}; {_commits_text(cells)}")


def _library_versions(cells: dict[str, dict], library: str) -> str:
    """Every version of a library that wrote these cells, oldest first: a table whose cells
    ran under two transformers releases says so instead of naming one cell's."""
    seen = [v.get(library, "?") for c in sorted(cells.values(), key=lambda c: str(
        c["provenance"].get("started") or "")) for v in records.library_versions(c["provenance"])]
    return " and ".join(dict.fromkeys(seen)) or "?"


def task_section(task: str, models: dict[str, dict[str, dict]], level: str = "##",
                 image_dir: str = "") -> list[str]:
    """The markdown of one task: per model its setup line, table, agreement line and plot."""
    lines = [f"{level} {task}", ""]
    if not models:
        return lines + ["No cell planned or run for this task yet.", ""]
    for model in sorted(models):
        cells = models[model]
        lines += [f"{level}# {model}", "", _model_line(cells), "",
                  "| " + " | ".join(HEADER) + " |",
                  "|" + "|".join("---" if i == 0 else "---:" for i in range(len(HEADER))) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in table_rows(cells)]
        lines.append("")
        if "greedy" in cells and "hf-greedy" in cells:
            same, shared = answer_agreement(cells["greedy"], cells["hf-greedy"])
            lines += [f"`greedy` and `hf-greedy` give the same answer on {same}/{shared} "
                      "shared problems (any difference is a bug).", ""]
        complete = {name: c for name, c in cells.items() if c["complete"]}
        if "softreason" in complete:
            others = [n for n in sorted(complete, key=_method_order)
                      if n not in ("softreason", "greedy", "hf-greedy")]
            if others:
                lines += ["`softreason` paired against, on the same problems (right only with "
                          "`softreason` / right only with the other, exact McNemar p; accuracy "
                          "difference with its 95% paired Wald interval): "
                          + "; ".join(f"`{n}` "
                                      f"{paired_text(complete['softreason'], complete[n], True)}"
                                      for n in others) + ".", ""]
        if SR_AT_SC10 in complete and "sc@10" in complete:
            lines += [f"`{SR_AT_SC10}` (`softreason` with `sc@10`'s 10 candidates: two rounds "
                      "of 5, early stops off) against `sc@10`: "
                      f"{paired_text(complete[SR_AT_SC10], complete['sc@10'], True)}.", ""]
    lines += [f"![accuracy vs tokens, {task}]({image_dir}pareto_{task}.png)", ""]
    return lines


def render_markdown(table: dict[str, dict[str, dict[str, dict]]]) -> str:
    lines = ["# Leaderboard", "",
             "Generated by `softreason-bench report` from `results/<model>/<task>/<method>.json`"
             " and the per-sample records next to them. Do not edit by hand.", "",
             "Accuracy is the mean over the first n problems ± its standard error. Costs are "
             "means per problem. Wall seconds are timed around the model's `generate_until` "
             "(same clock for every method). \"vs greedy\" divides by the `greedy` cell (else "
             "`hf-greedy`) on the problems both ran; time only on those decoded on the same CPU "
             "class (\"(n=...)\" when fewer), and two machines of one class can still differ "
             "in speed between sessions, so time ratios are rougher than token ratios, which "
             "no machine changes. \"right/wrong vs greedy\": problems this "
             "method gets right and greedy wrong / the reverse, with the exact McNemar "
             "two-sided p of that split. `*`: lm-eval's `hf` returns plain text, "
             "so its tokens are the response re-tokenised.", ""]
    if not table:
        lines += ["No results yet.", ""]
    for task in sorted(table):
        lines += task_section(task, table[task])
    if table:
        lines += paper_section(table)
    return "\n".join(lines).rstrip() + "\n"


README_START, README_END = "<!-- leaderboard:start -->", "<!-- leaderboard:end -->"
README_TASKS = ("svamp", "gsm8k_sr", "gsm_hard", "strategyqa")  # the paper's four benchmarks


def update_readme(readme: Path, table: dict[str, dict[str, dict[str, dict]]],
                  tasks: list[str], results_rel: str = "results/") -> None:
    """Replace the block between the leaderboard markers in ``readme`` with these tasks'
    tables (generated like LEADERBOARD.md; the README never holds a hand-typed number)."""
    text = readme.read_text(encoding="utf-8")
    if README_START not in text or README_END not in text:
        raise ValueError(f"{readme} has no {README_START} ... {README_END} block to fill")
    body = []
    for task in tasks:
        body += task_section(task, table.get(task, {}), level="####", image_dir=results_rel)
    body += paper_section({task: table[task] for task in tasks if task in table}, level="####")
    head, rest = text.split(README_START, 1)
    tail = rest.split(README_END, 1)[1]
    block = "\n".join([README_START, "", *body]).rstrip() + "\n\n" + README_END
    readme.write_text(head + block + tail, encoding="utf-8")


def plot_pareto(task: str, models: dict[str, dict[str, dict]], out: Path) -> Path:
    """Accuracy vs generated tokens per problem, one point per complete method (error bars:
    standard error), one panel per model; written to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    names = sorted(models)
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.5), squeeze=False)
    for ax, model in zip(axes[0], names):
        title, labels = plot_labels(task, model, models[model])
        plotted = 0  # labels step down in turn: coinciding points (greedy, hf-greedy) stay legible
        for method in sorted(labels, key=_method_order):
            m = models[model][method]["metrics"]
            ax.errorbar(m["gen_tokens"], m["acc"], yerr=m.get("acc_stderr") or 0, fmt="o",
                        capsize=3)
            ax.annotate(labels[method], (m["gen_tokens"], m["acc"]), textcoords="offset points",
                        xytext=(6, 4 - 10 * (plotted % 3)), fontsize=8)
            plotted += 1
        if plotted:  # log x, labelled 100, 200, 500, 1,000 ...: mantissa labels overlap
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel("generated tokens per problem")
        ax.set_ylabel("accuracy")
        ax.set_title(title, fontsize=9)
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def write_report(results_dir: str | Path, readme: str | Path | None = None,
                 readme_tasks: tuple[str, ...] = README_TASKS) -> list[Path]:
    """Regenerate LEADERBOARD.md and every pareto_<task>.png (and, given ``readme``, its
    leaderboard block); returns the written paths."""
    results_dir = Path(results_dir)
    table = load_cells(results_dir)
    written = [results_dir / "LEADERBOARD.md"]
    results_dir.mkdir(parents=True, exist_ok=True)
    written[0].write_text(render_markdown(table), encoding="utf-8")
    for task, models in sorted(table.items()):
        written.append(plot_pareto(task, models, results_dir / f"pareto_{task}.png"))
    if readme is not None:
        readme = Path(readme)
        rel = os.path.relpath(results_dir, readme.parent).replace(os.sep, "/") + "/"
        update_readme(readme, table, list(readme_tasks), rel)
        written.append(readme)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="softreason-bench report", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--readme", help="also refill this file's leaderboard block "
                        f"({README_START} ... {README_END})")
    parser.add_argument("--readme-tasks", default=",".join(README_TASKS),
                        help="tasks shown in the README block (comma list)")
    args = parser.parse_args(argv)
    try:
        written = write_report(args.results_dir, args.readme,
                               tuple(args.readme_tasks.split(",")))
    except ValueError as err:
        print(f"softreason-bench report: {err}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
