"""``softreason-bench regression --record|--check``: a small pinned eval as a regression test.

``--record`` runs the eval (default: the embedded model, softreason defaults, the first 5
``svamp`` problems, chat template) and writes ``results/regression.json``: the eval's spec, the
settings it ran with, and per problem the extracted answer, rounds, candidates and token
counts. ``--check`` reruns the spec stored in the file and exits 1 with a diff when any answer
changed or a token count is off by more than the tolerance (2%). ``compare`` is the pure
function behind it. The same works for any model: ``--pretrained``/``--bench-model`` and
``--file`` at ``--record``; ``--check --file`` needs nothing else.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import provenance
from .common import default_data_dir, flatten, quiet_lm_eval

FORMAT = 1
DEFAULT_FILE = "results/regression.json"
TOKEN_TOLERANCE = 0.02
EXACT_FIELDS = ("answer",)  # any change fails
TOKEN_FIELDS = ("gen_tokens", "prompt_tokens")  # fail beyond the relative tolerance
INFO_FIELDS = ("rounds", "candidates")  # reported, not failed: they move with the tokens


@dataclass(frozen=True)
class Difference:
    doc_id: int | None  # None: the eval itself (spec, settings, problem set)
    field: str
    recorded: Any
    current: Any
    fatal: bool

    def __str__(self) -> str:
        where = "eval" if self.doc_id is None else f"doc {self.doc_id}"
        mark = "FAIL" if self.fatal else "note"
        return f"{mark} {where}: {self.field}: recorded {self.recorded!r}, now {self.current!r}"


def problem_record(sample: dict) -> dict:
    """What the regression keeps of one runner sample record."""
    stats = sample.get("stats") or {}
    return {"doc_id": sample["doc_id"], "target": sample.get("target"),
            "answer": sample.get("answer"), "acc": sample.get("acc"),
            "rounds": sample.get("rounds"), "candidates": sample.get("candidates"),
            "gen_tokens": sample.get("gen_tokens"), "prompt_tokens": sample.get("prompt_tokens"),
            "candidate_answers": stats.get("candidate_answers")}


def _relative_gap(recorded: float, current: float) -> float:
    return abs(current - recorded) / max(abs(recorded), 1.0)


def compare(recorded: dict, current: dict, token_tolerance: float = TOKEN_TOLERANCE
            ) -> list[Difference]:
    """Differences between two regression documents (``{"spec", "settings", "problems"}``).

    Fatal: a different spec or settings, a problem missing or extra, any changed ``answer``, a
    ``gen_tokens``/``prompt_tokens`` count off by more than ``token_tolerance`` (relative).
    Not fatal (reported): changed ``rounds``/``candidates``. Returns [] when they agree.
    """
    diffs: list[Difference] = []
    for key in ("spec", "settings"):
        old, new = flatten(recorded.get(key) or {}), flatten(current.get(key) or {})
        for name in sorted(set(old) | set(new)):
            if old.get(name) != new.get(name):
                diffs.append(Difference(None, f"{key}.{name}", old.get(name), new.get(name), True))
    old_problems = {p["doc_id"]: p for p in recorded.get("problems", [])}
    new_problems = {p["doc_id"]: p for p in current.get("problems", [])}
    for doc_id in sorted(set(old_problems) | set(new_problems)):
        old, new = old_problems.get(doc_id), new_problems.get(doc_id)
        if old is None or new is None:
            diffs.append(Difference(doc_id, "problem", "present" if old else "missing",
                                    "present" if new else "missing", True))
            continue
        for name in EXACT_FIELDS:
            if old.get(name) != new.get(name):
                diffs.append(Difference(doc_id, name, old.get(name), new.get(name), True))
        for name in TOKEN_FIELDS:
            a, b = old.get(name), new.get(name)
            if (a is None) != (b is None) or (
                    a is not None and _relative_gap(a, b) > token_tolerance):
                diffs.append(Difference(doc_id, name, a, b, True))
        for name in INFO_FIELDS:
            if old.get(name) != new.get(name):
                diffs.append(Difference(doc_id, name, old.get(name), new.get(name), False))
    return diffs


def format_report(diffs: list[Difference], token_tolerance: float = TOKEN_TOLERANCE) -> str:
    fatal = [d for d in diffs if d.fatal]
    head = (f"regression check FAILED: {len(fatal)} difference(s) (answers exact, token counts "
            f"within {token_tolerance:.0%})" if fatal else
            "regression check passed" + (f" ({len(diffs)} note(s))" if diffs else ""))
    return "\n".join([head, *(f"  {d}" for d in diffs)])


# ------------------------------------------------------------------------------- running


def default_spec(pretrained: str | None = None, bench_model: str | None = None,
                 model_args: str = "", task: str = "svamp", method: str = "softreason",
                 limit: int = 5, chat: bool = True) -> dict:
    return {"pretrained": pretrained, "bench_model": bench_model, "model_args": model_args,
            "task": task, "method": method, "limit": limit, "apply_chat_template": chat}


def with_dtype(model_args: str, dtype: str) -> str:
    """``model_args`` with ``dtype=<dtype>`` added unless it names a dtype already."""
    from lm_eval.utils import simple_parse_args_string

    if "dtype" in simple_parse_args_string(model_args) or not dtype:
        return model_args
    return ",".join(filter(None, [model_args, f"dtype={dtype}"]))


def run_eval(spec: dict, data_dir: str | None = None, progress: bool = False) -> dict:
    """Run ``spec`` through the benchmark runner (in a scratch results dir) and return the
    regression document: spec, settings, environment, problems."""
    from lm_eval.utils import simple_parse_args_string

    from . import records
    from .methods import method
    from .runner import Options, Runner, model_spec

    model = model_spec(spec["pretrained"], spec["bench_model"])
    with tempfile.TemporaryDirectory(prefix="softreason-regression-") as tmp:
        # all problems in one lm-eval call, so model_args batch_size=N can batch them
        opts = Options(results_dir=Path(tmp), apply_chat_template=spec["apply_chat_template"],
                       data_dir=data_dir or default_data_dir(), chunk=spec["limit"],
                       model_args=simple_parse_args_string(spec["model_args"]))
        runner = Runner(model, opts)
        cell = runner.run_cell(method(spec["method"]), spec["task"], spec["limit"], progress)
        samples = records.read_samples(records.cell_paths(tmp, model.label, spec["task"],
                                                          spec["method"]))
    settings = dict(cell["settings"])
    return {"format": FORMAT, "spec": spec, "settings": settings,
            "environment": {"versions": provenance.versions(), "git": provenance.git_commit(),
                            "device": cell["provenance"]["device"], "date": provenance.now_iso()},
            "problems": [problem_record(s) for s in samples]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="softreason-bench regression", description=__doc__.split(
        "\n\n")[0])
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--record", action="store_true", help="run the eval, write --file")
    mode.add_argument("--check", action="store_true", help="rerun --file's eval, compare")
    p.add_argument("--file", default=DEFAULT_FILE)
    p.add_argument("--tolerance", type=float, default=TOKEN_TOLERANCE,
                   help="relative token-count tolerance (default 0.02)")
    p.add_argument("--data-dir", default=None)
    rec = p.add_argument_group("--record only (--check reruns what the file records)")
    model = rec.add_mutually_exclusive_group()
    model.add_argument("--pretrained")
    model.add_argument("--bench-model")
    rec.add_argument("--model-args", default="")
    rec.add_argument("--task", default="svamp")
    rec.add_argument("--method", default="softreason")
    rec.add_argument("--limit", type=int, default=5)
    rec.add_argument("--no-chat-template", action="store_true")
    args = p.parse_args(argv)
    quiet_lm_eval(False)
    path = Path(args.file)
    if args.record:
        spec = default_spec(args.pretrained, args.bench_model, args.model_args, args.task,
                            args.method, args.limit, not args.no_chat_template)
        doc = run_eval(spec, args.data_dir, progress=True)
        # dtype=auto resolves per machine (bf16 where the CPU computes it natively), so the
        # file pins what this run used: a check elsewhere then reruns the same dtype
        doc["spec"]["model_args"] = with_dtype(spec["model_args"],
                                               doc["settings"]["model_args"]["dtype"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"recorded {len(doc['problems'])} problems to {path}")
        return 0
    if not path.exists():
        print(f"softreason-bench regression: {path} does not exist; run --record first",
              file=sys.stderr)
        return 2
    recorded = json.loads(path.read_text(encoding="utf-8"))
    current = run_eval(recorded["spec"], args.data_dir, progress=True)
    diffs = compare(recorded, current, args.tolerance)
    print(format_report(diffs, args.tolerance))
    # exact floats differ across CPU classes, so a pass says which two machines agreed
    print(f"  {len(current['problems'])} problems; recorded on "
          f"{provenance.describe_device(recorded.get('environment', {}).get('device'))}, checked on "
          f"{provenance.describe_device(current.get('environment', {}).get('device'))}")
    return 1 if any(d.fatal for d in diffs) else 0


if __name__ == "__main__":
    sys.exit(main())
