"""``softreason-bench``: run methods x tasks x --limit through lm-eval, resumably.

Each cell (model, task, method) runs one chunk of problems at a time (``--chunk``, default 1)
through ``lm_eval.simple_evaluate(samples={task: [doc ids]}, log_samples=True)``; every finished
problem is appended durably to ``results/<model>/<task>/<method>.samples.jsonl`` and the cell
JSON is rewritten from the records. A rerun skips the doc ids already recorded, so a killed run
continues where it stopped. The model is loaded once per run: one lm-eval ``hf`` model for
``hf-greedy``, one ``SoftReasonLM`` for every other method (only ``lm.cfg`` changes; the
search reads it per request).

This module is the ``run`` subcommand (``run``); ``cli`` dispatches the command line.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..answers import extract_answer, format_answer
from ..config import SoftReasonConfig, relevant_settings
from ..wheels import cache_dir
from . import bench_model as bench_models
from . import methods as methods_mod
from . import provenance, records
from .common import default_data_dir, quiet_lm_eval, settings_diff, settings_hash
from .methods import Method

EMBEDDED_LABEL = "smollm2-135m"
# model_args keys that lm-eval's hf model shares with ours
_HF_KEYS = ("dtype", "device", "trust_remote_code", "max_length")


# ------------------------------------------------------------------------------- the model


def equivalent_hashes(previous: dict | None, cell_hash: str) -> set[str]:
    """The settings hashes a recorded cell's records may carry and still count as this run's
    (``cell_hash``): the cell's own and its recorded equivalents, when its recorded settings,
    less the keys their search never reads (``config.relevant_settings``: a baseline recorded
    before those keys were dropped, or under another default preset), hash to ``cell_hash``.
    Empty when the settings really differ."""
    if not previous or not previous.get("settings"):
        return set()
    old = dict(previous["settings"])
    if isinstance(old.get("model_args"), dict):
        old["model_args"] = relevant_settings(old["model_args"])
    if settings_hash(old) != cell_hash and previous.get("settings_hash") != cell_hash:
        return set()
    return {h for h in (previous.get("settings_hash"),
                        *previous.get("equivalent_settings_hashes", ())) if h}


@dataclass
class ModelSpec:
    """The one model of a run: results label, how to load it, and what it is (for the record)."""

    label: str
    load_args: dict[str, Any]  # SoftReasonLM model_args (pretrained/gguf_file/dtype...)
    identity: dict[str, Any]  # what the weights are: sha256, source; goes into settings


def model_spec(pretrained: str | None = None, bench_model: str | None = None,
               label: str | None = None, fetch: bool = True) -> ModelSpec:
    """The embedded default, a named bench model, or any ``pretrained`` path / Hub id."""
    from .. import loading

    if pretrained and bench_model:
        raise ValueError("give --pretrained or --bench-model, not both")
    if bench_model:
        model = bench_models.bench_model(bench_model)
        path = bench_models.convert(model) if fetch else model.converted_dir()
        return ModelSpec(label or model.name, {"pretrained": str(path), "dtype": model.resolved_dtype()},
                         bench_models.provenance(model))
    if pretrained:
        src = Path(pretrained).expanduser()
        name = src.stem if src.suffix == ".gguf" else (src.name if src.exists() else pretrained)
        return ModelSpec(label or name.replace("/", "__"), {"pretrained": pretrained},
                         {"pretrained": pretrained})
    return ModelSpec(label or EMBEDDED_LABEL, {},
                     {"embedded": loading.EMBEDDED_NAME, "wheel": loading.EMBEDDED_WHEEL,
                      "gguf_file": loading.EMBEDDED_FILE, "gguf_sha256": loading.EMBEDDED_SHA256})


# ------------------------------------------------------------------------------- the runner


@dataclass
class Options:
    results_dir: Path = Path("results")
    apply_chat_template: bool = True
    num_fewshot: int | None = None
    gen_kwargs: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    chunk: int = 1
    model_args: dict[str, Any] = field(default_factory=dict)  # extra keys, every method
    command: str = ""
    # lm-eval's per-request cache (--use_cache) under this directory, one file per cell and
    # settings hash: a run killed inside a chunk keeps every problem it finished. None: off
    request_cache: Path | None = None


class Runner:
    """Runs cells on one model; loads each backend once, lazily, and one backend at a time."""

    def __init__(self, spec: ModelSpec, opts: Options) -> None:
        self.spec, self.opts = spec, opts
        from .. import loading

        self.load_args = {**spec.load_args, **opts.model_args}  # the user's keys win
        cfg = SoftReasonConfig.from_model_args(**self.load_args)
        # dtype=auto made concrete, so hf-greedy gets the same and the settings say which
        device = loading.resolve_device(cfg.device)
        self.load_args["dtype"] = str(loading.resolve_dtype(cfg.dtype, device)).replace(
            "torch.", "")
        self.base_cfg = SoftReasonConfig.from_model_args(**self.load_args)
        self._lms: dict[str, Any] = {}
        self._task_manager = None
        self._doc_counts: dict[str, int] = {}
        self._hf_args: dict[str, Any] | None = None
        # the code this process loaded: HEAD may move (new commits) while a long run goes on
        self.git = provenance.git_commit()
        self._builtin = False
        self.generate_s = 0.0  # time inside the current model's generate_until

    def check_table_dtype(self) -> None:
        """Refuse to add cells to a model's table in another dtype than the cells already there:
        dtype=auto resolves per machine (bf16 on CPUs with AVX512-BF16, float32 on AVX2-only
        ones), and bf16 changes greedy paths, so such rows would not be comparable."""
        dtype = self.load_args["dtype"]
        other: dict[str, list[str]] = {}
        for _, cell in records.iter_cells(self.opts.results_dir):
            cell_dtype = (cell.get("settings") or {}).get("model_args", {}).get("dtype")
            if cell.get("model") == self.spec.label and cell_dtype and cell_dtype != dtype:
                other.setdefault(cell_dtype, []).append(f"{cell['task']}/{cell['method']}")
        if other:
            found = "; ".join(f"{d}: {', '.join(sorted(c))}" for d, c in sorted(other.items()))
            raise ValueError(
                f"{self.opts.results_dir}/{self.spec.label}/ holds cells in another dtype "
                f"({found}); this run would use dtype={dtype}. Pass --model-args dtype=<that "
                "dtype> to add to that table, or --model-label to start a separate one.")

    # --- lm-eval objects ------------------------------------------------------------------
    def task_manager(self):
        if self._task_manager is None:
            from lm_eval.tasks import TaskManager

            from .. import _hook

            _hook.install()
            metadata = {"data_dir": self.opts.data_dir} if self.opts.data_dir else {}
            self._task_manager = TaskManager(metadata=metadata, include_defaults=False,
                                             include_path=[_hook.tasks_dir()])
        return self._task_manager

    def doc_count(self, task: str) -> int:
        if task not in self._doc_counts:
            tm = self.task_manager()
            if task not in tm.all_tasks and not self._builtin:  # a builtin lm-eval task
                from lm_eval.tasks import TaskManager

                metadata = {"data_dir": self.opts.data_dir} if self.opts.data_dir else {}
                self._task_manager = tm = TaskManager(metadata=metadata)
                self._builtin = True
            loaded = tm.load([task])["tasks"]
            self._doc_counts[task] = len(loaded[task].eval_docs)
        return self._doc_counts[task]

    def lm(self, method: Method):
        """The loaded model for ``method``'s backend (loading it, and freeing the other)."""
        if method.backend not in self._lms:
            for other in list(self._lms):
                del self._lms[other]
            gc.collect()
            self._lms[method.backend] = self._timed(self._load(method.backend))
        lm = self._lms[method.backend]
        if method.backend == "softreason":
            lm.cfg = self.cell_cfg(method)
            lm.totals = {k: 0 * v for k, v in lm.totals.items()}
        return lm

    def _load(self, backend: str):
        if backend == "softreason":
            from ..lm import SoftReasonLM

            return SoftReasonLM(**self.load_args)
        from lm_eval.api.registry import get_model

        from .. import _hook

        _hook.install()
        return get_model("hf").create_from_arg_obj(self.hf_model_args())

    def hf_model_args(self) -> dict[str, Any]:
        """lm-eval ``hf`` model_args for the same weights, dtype and device as softreason."""
        if self._hf_args is None:
            self._hf_args = self._resolve_hf_model_args()
        return dict(self._hf_args)

    def _resolve_hf_model_args(self) -> dict[str, Any]:
        from .. import loading

        cfg = self.base_cfg
        source, gguf_file, _ = loading.resolve_source(cfg)
        device = loading.resolve_device(cfg.device)
        # the same batch size as softreason's concurrent searches, so wall times compare
        args: dict[str, Any] = {"pretrained": source, "dtype": cfg.dtype, "device": str(device),
                                "batch_size": self.load_args.get("batch_size", 1),
                                "trust_remote_code": cfg.trust_remote_code}
        if gguf_file:
            args["gguf_file"] = gguf_file
        if cfg.max_length is not None:
            args["max_length"] = cfg.max_length
        return args

    def _timed(self, lm):
        inner = lm.generate_until

        def generate_until(requests, *args, **kwargs):
            start = time.perf_counter()
            try:
                return inner(requests, *args, **kwargs)
            finally:
                self.generate_s += time.perf_counter() - start

        lm.generate_until = generate_until  # lm-eval calls getattr(lm, "generate_until")
        return lm

    # --- settings ---------------------------------------------------------------------------
    def cell_cfg(self, method: Method) -> SoftReasonConfig:
        # built from the keys, not replace()d: a method's preset must fill the keys it decides
        return SoftReasonConfig.from_model_args(**{**self.load_args, **method.model_args})

    def cell_model_args(self, method: Method) -> dict[str, Any]:
        if method.backend == "hf":
            return self.hf_model_args()
        return self.cell_cfg(method).to_dict()

    def settings(self, method: Method, task: str) -> dict[str, Any]:
        """Everything that changes a cell's answers; records with other settings never mix."""
        if method.backend == "hf":
            args = {k: v for k, v in self.hf_model_args().items()
                    if k not in ("pretrained", "gguf_file", "device")}
        else:
            # what can change an answer (the cache fingerprint's fields), less the model's
            # path: its identity, in model_identity, goes in
            args = {k: v for k, v in self.cell_cfg(method).output_settings().items()
                    if k not in ("pretrained", "gguf_file")}
        return {"model": self.spec.label, "model_identity": self.spec.identity, "task": task,
                "method": method.name, "backend": method.backend, "model_args": args,
                "num_fewshot": self.opts.num_fewshot, "gen_kwargs": self.opts.gen_kwargs,
                "apply_chat_template": self.opts.apply_chat_template}

    def settings_state(self, method: Method, task: str) -> str:
        """Whether a recorded cell would resume under this run's settings, in words."""
        paths = records.cell_paths(self.opts.results_dir, self.spec.label, task, method.name)
        if not paths.json.exists():
            return "new"
        previous = records.read_cell(paths.json)
        settings = self.settings(method, task)
        cell_hash = settings_hash(settings)
        if previous.get("settings_hash") == cell_hash:
            return "same settings"
        if equivalent_hashes(previous, cell_hash):
            return "equivalent settings (they differ only in keys this search never reads)"
        return f"OTHER SETTINGS, would not resume ({settings_diff(previous, settings)})"

    # --- one cell -----------------------------------------------------------------------------
    def run_cell(self, method: Method, task: str, limit: int, progress: bool = True) -> dict:
        """Run the first ``limit`` problems of (task, method), skipping recorded ones; returns
        the cell JSON (also written to disk). A cell recorded with a larger limit keeps it (and
        stays incomplete until that many are done); this run still stops at ``limit``."""
        paths = records.cell_paths(self.opts.results_dir, self.spec.label, task, method.name)
        settings = self.settings(method, task)
        cell_hash = settings_hash(settings)
        previous = records.read_cell(paths.json) if paths.json.exists() else None
        done = records.prepare_for_append(paths)
        accepted = {cell_hash, *equivalent_hashes(previous, cell_hash)}
        stale = [r for r in done if r.get("settings_hash") not in accepted]
        if stale or (previous and previous.get("settings_hash") not in accepted):
            raise RuntimeError(
                f"{paths.samples.parent / method.name}.*: recorded with other settings than "
                f"this run's ({settings_diff(previous, settings)}). Move those files away "
                "(or pick another --results-dir) to recompute the cell.")
        asked = limit
        if previous and previous.get("limit", 0) > limit:
            limit = previous["limit"]  # a cell never shrinks, but this run does only what it asked
        target = list(range(min(limit, self.doc_count(task))))
        done_ids = {r["doc_id"] for r in done}
        asked_ids = target[:asked]  # what this run does; the bar counts to it too
        todo = [i for i in asked_ids if i not in done_ids]
        cell = self._cell_json(previous, method, task, limit, target, done, settings,
                               cell_hash, None)
        if not todo:
            if not (previous and previous.get("complete")):
                records.compress_if_large(paths)
                records.write_cell(paths, cell)
            return cell
        if records.lend_only_machine(paths, previous, self.device_info):
            done = records.read_samples(paths)
        lm = self.lm(method)
        records.write_cell(paths, cell)
        from tqdm import tqdm

        bar = tqdm(total=len(asked_ids), initial=len(asked_ids) - len(todo), leave=False,
                   desc=f"{task}/{method.name}", disable=not progress)
        for start in range(0, len(todo), max(1, self.opts.chunk)):
            chunk = todo[start:start + max(1, self.opts.chunk)]
            result, generate_s = self._evaluate(lm, task, chunk,
                                                self.request_cache(task, method, cell_hash))
            for example in sorted(result["samples"][task], key=lambda e: e["doc_id"]):
                record = self._record(example, lm, generate_s / len(chunk), len(chunk),
                                      cell_hash)
                records.append_sample(paths, record)
                done.append(record)
            done.sort(key=lambda r: r["doc_id"])
            cell = self._cell_json(cell, method, task, limit, target, done, settings,
                                   cell_hash, result)
            if len(done) >= len(target):
                records.compress_if_large(paths)
            records.write_cell(paths, cell)
            bar.update(len(chunk))
        bar.close()
        return cell

    def request_cache(self, task: str, method: Method, cell_hash: str) -> str | None:
        """lm-eval's ``use_cache`` prefix for one cell, or None when the cache is off.

        The settings hash is in the name because lm-eval keys a cached answer on the prompt
        and gen_kwargs alone: a cell with other settings never reads this one's answers (the
        softreason model also keeps one table per configuration: ``cache.isolate_cache``)."""
        if self.opts.request_cache is None:
            return None
        folder = Path(self.opts.request_cache) / self.spec.label / task
        folder.mkdir(parents=True, exist_ok=True)
        return str(folder / f"{method.name}-{cell_hash}")

    def _evaluate(self, lm, task: str, doc_ids: list[int],
                  use_cache: str | None = None) -> tuple[dict, float]:
        import lm_eval

        self.generate_s = 0.0
        result = lm_eval.simple_evaluate(
            model=lm, tasks=[task], samples={task: list(doc_ids)}, log_samples=True,
            use_cache=use_cache,
            apply_chat_template=self.opts.apply_chat_template, num_fewshot=self.opts.num_fewshot,
            gen_kwargs=dict(self.opts.gen_kwargs) or None, task_manager=self.task_manager(),
            bootstrap_iters=0,
        )
        return result, self.generate_s

    @functools.cached_property
    def device_info(self) -> dict:
        """This run's machine, as cells and records name it (read once: it names every record)."""
        from .. import loading

        return provenance.device_info(loading.resolve_device(self.base_cfg.device))

    def _record(self, example: dict, lm, generate_s: float, chunk_size: int,
                settings_hash: str) -> dict:
        """One problem's record: answer, score, candidates and cost (from the logged sample)."""
        response = example["resps"][0][0]
        filtered = example["filtered_resps"][0]
        stats = getattr(response, "stats", None) or getattr(filtered, "stats", None)
        doc = example["doc"]
        answer_type = doc.get("answer_type", "auto") if isinstance(doc, dict) else "auto"
        text = str(filtered)
        record = {
            "doc_id": int(example["doc_id"]), "target": example["target"],
            "question": doc.get("question") if isinstance(doc, dict) else None,
            "answer": format_answer(extract_answer(text, answer_type)) or None,
            "response": str(response),
            "acc": example["acc"], "coverage": example.get("coverage"),
        }
        for key in ("gen_tokens", "prompt_tokens", "candidates", "rounds", "wall_s"):
            record[key] = example.get(key)
        record["gen_tokens_source"] = "engine"
        if stats is None:  # a plain-string model (lm-eval's hf): count the returned text
            record["gen_tokens"] = len(lm.tokenizer(str(response),
                                                    add_special_tokens=False)["input_ids"])
            record["gen_tokens_source"] = "retokenized"
        if text != str(response):
            record["filtered_response"] = text
        record.update({"generate_s": generate_s, "chunk_size": chunk_size, "stats": stats,
                       "doc_hash": example.get("doc_hash"),
                       "prompt_hash": example.get("prompt_hash"),
                       "settings_hash": settings_hash, "finished": provenance.now_iso(),
                       # a resumed cell mixes machines: its time ratios pair like with like
                       "device": self.device_info})
        return records.clean_floats(record)

    def _cell_json(self, previous: dict | None, method: Method, task: str, limit: int,
                   target: list[int], done: list[dict], settings: dict, settings_hash: str,
                   result: dict | None) -> dict:
        """The self-contained cell record: metrics from the records, settings, provenance."""
        from .. import loading

        previous = previous or {}
        in_target = [r for r in done if r["doc_id"] < len(target)]
        complete = len(in_target) >= len(target)
        prov = dict(previous.get("provenance") or {})
        commands = list(prov.get("commands") or [])
        if self.opts.command and self.opts.command not in commands:
            commands.append(self.opts.command)
        commits = records.git_commits(prov)  # every run that wrote this cell
        if self.git and self.git not in commits:
            commits.append(self.git)
        device = self.device_info
        machines = records.devices(prov)
        if device not in machines:
            machines.append(device)
        versions = provenance.versions()
        seen = records.library_versions(prov)
        if versions not in seen:
            seen.append(versions)
        now = provenance.now_iso()
        prov.update({
            "versions": versions, "versions_seen": seen, "git": self.git, "git_commits": commits,
            "device": device, "devices": machines,
            "started": prov.get("started") or now, "updated": now,
            "finished": now if complete else None,
            "command": self.opts.command or prov.get("command"), "commands": commands,
        })
        lm_eval_part = previous.get("lm_eval")
        if result is not None:
            lm_eval_part = _lm_eval_summary(result, task)
        model_args = self.cell_model_args(method)
        roots = provenance.path_roots(self.opts.data_dir, self.load_args.get("trace_dir"))
        return provenance.portable(records.clean_floats({
            "format": records.CELL_FORMAT, "model": self.spec.label, "task": task,
            "method": method.name, "what": method.what, "backend": method.backend,
            "complete": complete, "limit": limit, "n_target": len(target),
            "n_done": len(in_target), "metrics": records.aggregate(in_target),
            "model_identity": self.spec.identity, "model_args": model_args,
            "settings": settings, "settings_hash": settings_hash,
            # hashes of earlier settings that differ only in keys this search never reads;
            # records carrying them stay valid (equivalent_hashes)
            "equivalent_settings_hashes": sorted(equivalent_hashes(previous, settings_hash)
                                                 - {settings_hash}),
            "eval": {"apply_chat_template": self.opts.apply_chat_template,
                     "num_fewshot": self.opts.num_fewshot, "gen_kwargs": self.opts.gen_kwargs,
                     "data_dir": self.opts.data_dir, "chunk": self.opts.chunk,
                     # concurrent searches: changes speed, not answers (kept out of settings)
                     "batch_size": self.load_args.get("batch_size", 1)},
            "provenance": prov, "lm_eval": lm_eval_part,
            "samples_file": records.cell_paths(".", self.spec.label, task,
                                               method.name).samples.name,
        }), roots)


def _lm_eval_summary(result: dict, task: str) -> dict:
    """lm-eval's own results JSON of the last chunk, without its samples and its (one-chunk)
    metrics: task config, versions, n-shot, model config, environment."""
    keep = {k: v for k, v in result.items() if k not in ("samples", "results", "groups")}
    keep["configs"] = {task: result.get("configs", {}).get(task)}
    config = dict(keep.get("config") or {})
    config.pop("softreason_totals", None)  # per chunk; the cell metrics have the totals
    keep["config"] = config
    return json.loads(json.dumps(records.clean_floats(keep), default=str))


# ------------------------------------------------------------------------------- the CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="softreason-bench",
        description="Run methods x tasks x --limit through lm-eval on one model, resumably. "
                    "Other subcommands: report, regression, fetch-model.")
    p.add_argument("--methods", help=f"comma list of: {', '.join(methods_mod.METHODS)}, "
                   f"{', '.join(methods_mod.PATTERNS)}")
    p.add_argument("--tasks", help="comma list of task names (svamp, gsm8k_sr, ...)")
    p.add_argument("--limit", type=int, help="first N problems of each task")
    p.add_argument("--plan", choices=sorted(methods_mod.PLANS),
                   help="a named matrix (instead of --methods/--tasks/--limit): "
                        + "; ".join(f"{k}: " + ", ".join(f"{'+'.join(m)} on {'+'.join(t)} x{n}"
                                                         for m, t, n in v)
                        + ("" if k not in methods_mod.EQUAL_TOKEN else
                           ", then equal-token sc@N+sr@10 on " + ", ".join(
                               f"{t} x{n}" for t, n in methods_mod.EQUAL_TOKEN[k]))
                                    for k, v in methods_mod.PLANS.items()))
    model = p.add_mutually_exclusive_group()
    model.add_argument("--pretrained", help="any path / Hub id / .gguf (default: embedded model)")
    model.add_argument("--bench-model", choices=sorted(bench_models.BENCH_MODELS),
                       help="a named bench model (fetched, verified and converted once)")
    p.add_argument("--model-label", help="results/<label>/... (default: from the model)")
    p.add_argument("--model-args", default="", help="extra softreason model_args for every "
                   "method (k=v,...); dtype/device/max_length/batch_size also reach hf-greedy")
    p.add_argument("--gen-kwargs", default="", help="lm-eval gen_kwargs override (k=v,...)")
    p.add_argument("--num-fewshot", type=int, default=None)
    p.add_argument("--no-chat-template", action="store_true",
                   help="do not apply the chat template (default: applied)")
    p.add_argument("--data-dir", default=None, help="benchmark data directory (default: "
                   "$LM_EVAL_SOFTREASON_DATA, else ../shared/data next to the checkout, else Hub)")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--chunk", type=int, default=1,
                   help="problems per lm-eval call (resume granularity; >1 lets the model batch)")
    p.add_argument("--request-cache", default=None, metavar="DIR",
                   help="lm-eval's per-request cache for the cells (default: "
                        "$LM_EVAL_SOFTREASON_CACHE/requests): a run killed inside a chunk "
                        "reruns only the problems it had not finished")
    p.add_argument("--no-request-cache", action="store_true",
                   help="no per-request cache: a killed chunk is rerun whole")
    p.add_argument("--list", action="store_true",
                   help="print the cells and their state; run nothing")
    p.add_argument("--verbose", action="store_true", help="keep lm-eval's info logging")
    return p


def plan_cells(args: argparse.Namespace) -> list[tuple[Method, str, int]]:
    """(method, task, limit) cells in run order: hf-greedy first, so each backend loads once."""
    if args.plan:
        if args.methods or args.tasks or args.limit:
            raise ValueError("--plan replaces --methods/--tasks/--limit; give one or the other")
        groups = methods_mod.PLANS[args.plan]
    else:
        if not (args.methods and args.tasks and args.limit):
            raise ValueError("give --methods, --tasks and --limit (or --plan)")
        groups = [(tuple(args.methods.split(",")), tuple(args.tasks.split(",")), args.limit)]
    cells = [(methods_mod.method(m.strip()), t.strip(), n)
             for ms, ts, n in groups for m in ms for t in ts]
    return sorted(cells, key=lambda c: c[0].backend != "hf")  # stable within a backend


def equal_token_cells(results_dir: Path, label: str, plan: str | None,
                      ) -> tuple[list[tuple[Method, str, int]], list[str]]:
    """The plan's equal-token cells (``methods.EQUAL_TOKEN``) whose token means are known, and
    a line for each task still waiting for its complete ``softreason`` and ``sc@10`` cells."""
    cells, waiting = [], []
    for task, limit in methods_mod.EQUAL_TOKEN.get(plan or "", []):
        means = {}
        for name in ("softreason", "sc@10"):
            path = records.cell_paths(results_dir, label, task, name).json
            cell = records.read_cell(path) if path.exists() else {}
            if cell.get("complete") and cell.get("n_target") == limit:
                means[name] = cell["metrics"]["gen_tokens"]
        if len(means) < 2:
            waiting.append(f"{label}/{task}: the equal-token cells (sc@N, sr@10) wait "
                           f"for complete softreason and sc@10 cells of {limit} problems")
            continue
        names = methods_mod.equal_token_methods(means["softreason"], means["sc@10"])
        cells += [(methods_mod.method(n), task, limit) for n in names if n != "sc@10"]
    return cells, waiting


def run(argv: list[str], command: str | None = None) -> int:
    """The ``run`` subcommand; ``command`` is recorded as the exact command (default: argv)."""
    from lm_eval.utils import simple_parse_args_string as parse_args_string  # lm-eval's syntax

    args = build_parser().parse_args(argv)
    quiet_lm_eval(args.verbose)
    cells = plan_cells(args)
    spec = model_spec(args.pretrained, args.bench_model, args.model_label, fetch=not args.list)
    opts = Options(
        results_dir=Path(args.results_dir), apply_chat_template=not args.no_chat_template,
        num_fewshot=args.num_fewshot, gen_kwargs=parse_args_string(args.gen_kwargs),
        data_dir=args.data_dir or default_data_dir(), chunk=args.chunk,
        model_args=parse_args_string(args.model_args),
        command=command or provenance.command_line(["softreason-bench", *argv]),
        request_cache=None if args.no_request_cache else Path(
            args.request_cache or cache_dir() / "requests"),
    )
    runner = Runner(spec, opts)

    def new_equal_token_cells(known: list) -> tuple[list, list[str]]:
        equal, waiting = equal_token_cells(opts.results_dir, spec.label, args.plan)
        seen = {(m.name, t) for m, t, _ in known}
        return [c for c in equal if (c[0].name, c[1]) not in seen], waiting

    equal, waiting = new_equal_token_cells(cells)
    cells += equal
    if args.list:
        for m, task, limit in cells:
            paths = records.cell_paths(opts.results_dir, spec.label, task, m.name)
            done = len(records.read_samples(paths))
            print(f"{spec.label}/{task}/{m.name}: {done}/{limit} recorded; "
                  f"{runner.settings_state(m, task)}")
        for line in waiting:
            print(line)
        return 0
    runner.check_table_dtype()
    records.add_planned(opts.results_dir, spec.label, [(m.name, t, n) for m, t, n in cells])
    from tqdm import tqdm

    failed, todo, done = [], cells, []
    while todo:  # the plan's cells, then equal-token cells their token means made known
        for m, task, limit in tqdm(todo, desc=f"cells ({spec.label})", unit="cell"):
            try:
                cell = runner.run_cell(m, task, limit)
            except RuntimeError as err:  # settings clash: say so, run the other cells
                failed.append(f"{task}/{m.name}: {err}")
                tqdm.write(f"softreason-bench: skipped {task}/{m.name}: {err}")
                continue
            acc, n = cell["metrics"]["acc"], cell["n_done"]
            tqdm.write(f"{spec.label}/{task}/{m.name}: acc {acc:.3f} (n={n})" if acc is not None
                       else f"{spec.label}/{task}/{m.name}: nothing recorded")
        done += todo
        todo, waiting = new_equal_token_cells(done)
        records.add_planned(opts.results_dir, spec.label, [(m.name, t, n) for m, t, n in todo])
    for line in waiting:
        tqdm.write(line)
    return 1 if failed else 0


if __name__ == "__main__":  # this module is the run subcommand, not the command
    raise SystemExit("lm_eval_softreason.bench.runner is not the command any more: run "
                     "`softreason-bench ...` or `python -m lm_eval_softreason.bench ...`")
