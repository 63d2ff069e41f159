"""The lm-eval adapter: model_args errors, greedy parity with lm-eval's hf model, stats,
fallbacks, determinism, and the stock CLI in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DEVICE
from lm_eval.api.instance import Instance

from lm_eval_softreason.lm import SoftReasonLM, request_seed
from lm_eval_softreason.stats import GenerationResult

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = [
    "Tom has 3 apples. He buys 4 more apples. How many apples does Tom have now?",
    "Was the ship named after a battle?",
    "Tom has 10 apples and gives away 3. How many apples are left?",
]


def _lm(model_dir, **kw):
    return SoftReasonLM(pretrained=str(model_dir), dtype="float32", device=DEVICE, **kw)


def _requests(gen_kwargs=None, questions=QUESTIONS):
    gk = gen_kwargs or {"until": ["Question:"], "max_gen_toks": 12, "do_sample": False}
    return [
        Instance("generate_until", {"question": q}, (f"Question: {q}\nAnswer:", dict(gk)), i,
                 ("t", i, 1))
        for i, q in enumerate(questions)
    ]


@pytest.mark.parametrize(
    "args, fragment",
    [
        ({"kk": 3}, "unknown model_args key 'kk'"),
        ({"k": "0"}, "k=0 must be >= 1"),
        ({"k": "two"}, "k='two' is not a valid integer"),
        ({"search": "beam"}, "search='beam' is not allowed; choose one of softreason"),
        ({"acquisition": "ei"}, "acquisition='ei'"),
        ({"dtype": "float8"}, "dtype='float8'"),
        ({"device": "tpu"}, "device='tpu'"),
        ({"sigma": "-1"}, "sigma=-1.0 must be > 0"),
        ({"min_rounds": 4, "max_rounds": 2}, "min_rounds=4 must be <= max_rounds=2"),
        ({"trust_remote_code": "maybe"}, "trust_remote_code='maybe' is not a valid true/false"),
        ({"cpu_linear": "mkl"}, "cpu_linear='mkl' is not allowed; choose one of auto, aten, onednn"),
        ({"threads": "0"}, "threads=0 must be an integer >= 1 or auto"),
        ({"threads": "many"}, "threads='many' is not a valid integer"),
    ],
)
def test_bad_model_args_fail_at_construction_naming_key_and_value(args, fragment):
    with pytest.raises(ValueError, match="softreason: ") as err:
        SoftReasonLM(pretrained="unused", **args)
    assert fragment in str(err.value)


def test_missing_gguf_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such GGUF file"):
        SoftReasonLM(pretrained=str(tmp_path / "nope.gguf"))


def test_greedy_matches_lm_eval_hf_model(peaked_dir):
    from lm_eval.models.huggingface import HFLM

    ours = _lm(peaked_dir, search="greedy").generate_until(_requests(), disable_tqdm=True)
    hf = HFLM(pretrained=str(peaked_dir), dtype="float32", device="cpu", batch_size=1)
    theirs = hf.generate_until(_requests(), disable_tqdm=True)
    assert [str(x) for x in ours] == theirs
    assert all(x.strip() for x in theirs), "parity on empty strings would prove nothing"


def test_softreason_returns_text_with_stats(peaked_dir):
    lm = _lm(peaked_dir, k=3, max_rounds=2, min_rounds=2, verifier_max_gen_toks=8)
    [out] = lm.generate_until(_requests(questions=QUESTIONS[:1]), disable_tqdm=True)
    assert isinstance(out, GenerationResult)
    s = out.stats
    assert s["search"] == "softreason" and s["rounds"] == 2 and s["candidates"] == 6
    assert len(s["candidate_answers"]) == 6 and len(s["rewards"]) == 6
    assert s["gen_tokens"] == s["candidate_tokens"] + s["verifier_tokens"]
    assert s["prompt_tokens"] >= len(lm._encode(_requests()[0].args[0]))
    assert s["forward_passes"] > 0 and s["wall_s"] > 0
    info = lm.get_model_info()
    assert info["softreason_totals"]["requests"] == 1
    assert info["softreason_totals"]["gen_tokens"] == s["gen_tokens"]


def test_per_request_results_do_not_depend_on_order(peaked_dir):
    lm = _lm(peaked_dir, k=2, max_rounds=2, verifier_max_gen_toks=6, search="random")
    forward = lm.generate_until(_requests(), disable_tqdm=True)
    backward = lm.generate_until(_requests()[::-1], disable_tqdm=True)[::-1]
    assert [str(x) for x in forward] == [str(x) for x in backward]
    assert [x.stats["candidate_answers"] for x in forward] == \
        [x.stats["candidate_answers"] for x in backward]


def test_request_seed_depends_on_seed_text_and_repeat_only():
    # another process with another string-hash seed gets the same seeds: nothing of the run
    # (hash randomisation, earlier requests) goes in
    code = ("from lm_eval_softreason.lm import request_seed;"
            "print(request_seed(1, 'a'), request_seed(1, 'a', 2))")
    other = _run([sys.executable, "-c", code], {"PYTHONHASHSEED": "12345"})
    assert other.stdout.split() == [str(request_seed(1, "a")), str(request_seed(1, "a", 2))]
    seeds = {request_seed(seed, text, repeat)
             for seed in (1, 2) for text in ("a", "b") for repeat in (0, 1)}
    assert len(seeds) == 8 and all(0 <= s < 2**63 for s in seeds)


def _verifier_prompt(lm, context: str) -> str:
    """The text of the verifier prompt a request with ``context`` would get."""
    request = Instance("generate_until", {"question": "q"}, (context, {"until": []}), 0)
    problem = lm._problem(context, {"until": []}, request).problem
    return lm.tokenizer.decode(problem.render("Check this."))


def test_verifier_prompt_follows_the_request_not_what_ran_before(peaked_dir):
    lm = _lm(peaked_dir)
    plain = "Question: 1+1?\nAnswer:"
    chat = lm.apply_chat_template([{"role": "system", "content": "Be brief."},
                                   {"role": "user", "content": plain}]) + "Let's think."
    # plain first, then chat, then plain again: each request decides for itself
    assert _verifier_prompt(lm, plain) == "Check this.\n"
    assert _verifier_prompt(lm, chat) == "<|im_start|>user\nCheck this.<|im_end|>\n" \
                                         "<|im_start|>assistant\n"
    assert _verifier_prompt(lm, plain) == "Check this.\n"
    assert _verifier_prompt(_lm(peaked_dir), chat) == _verifier_prompt(lm, chat)


def test_chat_opening_is_what_every_rendering_starts_with():
    from lm_eval_softreason.lm import chat_opening

    def chatml(messages):
        return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)

    def no_system(messages):
        if messages[0]["role"] == "system":
            raise ValueError("System role not supported")
        return "<s>[INST] " + messages[0]["content"] + " [/INST]"

    def no_template(messages):
        raise ValueError("Cannot use chat template functions: no chat template is set")

    assert chat_opening(chatml) == "<|im_start|>"
    assert chat_opening(no_system) == "<s>[INST] "
    assert chat_opening(no_template) == ""
    assert chat_opening(lambda messages: "  " + messages[-1]["content"]) == ""


def test_without_a_chat_template_the_verifier_prompt_is_plain(peaked_dir, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    shutil.copytree(peaked_dir, tmp_path / "m")
    (tmp_path / "m" / "chat_template.jinja").unlink(missing_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(peaked_dir)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(tmp_path / "m")
    assert _verifier_prompt(_lm(tmp_path / "m"), "<|im_start|>user\nx") == "Check this.\n"


def test_a_failing_search_falls_back_to_greedy_and_the_run_goes_on(peaked_dir, monkeypatch):
    import lm_eval_softreason.lm as lm_module

    lm = _lm(peaked_dir, k=2)
    calls = []

    def explode(cfg, engine, problem):
        calls.append(problem)
        if len(calls) == 2:
            raise RuntimeError("injected")
        return lm_module.baselines.greedy(cfg, engine, problem)

    monkeypatch.setitem(lm_module.SEARCH_FUNCTIONS, "softreason", explode)
    out = lm.generate_until(_requests(), disable_tqdm=True)
    assert len(out) == 3
    assert out[1].stats["stop_reason"] == "fallback"
    assert "RuntimeError: injected" in out[1].stats["error"]
    assert out[1] == lm_module.baselines.greedy(lm.cfg, lm.engine, calls[1]).text
    assert lm.get_model_info()["softreason_totals"]["fallbacks"] == 1


def test_over_long_prompt_is_left_truncated_and_flagged(peaked_dir):
    lm = _lm(peaked_dir, search="greedy", max_length=64)
    gk = {"until": [], "max_gen_toks": 8}
    [out] = lm.generate_until(_requests(gk, ["apples " * 200]), disable_tqdm=True)
    assert out.stats["truncated"] is True
    assert out.stats["prompt_tokens"] <= 64 - 8


def test_trace_dir_writes_one_line_per_request(peaked_dir, tmp_path):
    lm = _lm(peaked_dir, k=2, max_rounds=2, trace_dir=str(tmp_path), verifier_max_gen_toks=6)
    lm.generate_until(_requests(), disable_tqdm=True)
    lines = (tmp_path / "trace_rank0.jsonl").read_text().splitlines()
    assert len(lines) == 3
    rec = json.loads(lines[0])
    assert rec["doc_id"] == 0 and len(rec["candidates"]) == 4
    assert {"x", "text", "answer", "reward", "coherence"} <= set(rec["candidates"][0])


def _run(args, env_extra=None, timeout=600):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           **(env_extra or {})}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)


def test_hook_registers_softreason_and_keeps_builtins():
    code = ("from lm_eval.api.registry import get_model;"
            "print(get_model('hf').__name__, get_model('dummy').__name__,"
            " get_model('softreason').__name__)")
    out = _run([sys.executable, "-c", code])
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["HFLM", "DummyLM", "SoftReasonLM"]


@pytest.mark.slow
def test_hook_can_be_turned_off_and_python_m_still_works():
    code = "from lm_eval.api.registry import get_model; get_model('softreason')"
    off = _run([sys.executable, "-c", code], {"LM_EVAL_SOFTREASON_NO_HOOK": "1"})
    assert off.returncode != 0 and "softreason" in off.stderr
    fallback = _run([sys.executable, "-m", "lm_eval_softreason", "ls", "tasks"],
                    {"LM_EVAL_SOFTREASON_NO_HOOK": "1"})
    assert fallback.returncode == 0, fallback.stderr[-2000:]
    assert "softreason_smoke" in fallback.stdout


def test_hook_imports_nothing_heavy_at_start():
    code = ("import sys; heavy = [m for m in ('torch', 'lm_eval', 'transformers', 'importlib.util')"
            " if m in sys.modules]; print(heavy, 'lm_eval_softreason._hook' in sys.modules)")
    out = _run([sys.executable, "-c", code])
    assert out.stdout.strip() == "[] True"


@pytest.mark.slow
def test_tasks_are_listed_never_shadow_builtins_and_user_paths_win(tmp_path):
    (tmp_path / "svamp.yaml").write_text(
        "task: svamp\ndataset_path: json\ndataset_kwargs:\n  data_files: x.json\n"
        "output_type: generate_until\ntest_split: train\ndoc_to_text: q\ndoc_to_target: a\n"
    )
    # `ours` skips lm-eval's ~14,700 builtin YAMLs (~24 s to index): the hook adds our directory
    # whether or not the defaults are included; `user` indexes everything, as the CLI does
    code = (
        "import json, sys\nfrom lm_eval.tasks import TaskManager\n"
        "ours = TaskManager(include_defaults=False)\n"
        f"user = TaskManager(include_path={str(tmp_path)!r})\n"
        "names = ('svamp','gsm_hard','strategyqa','gsm8k_sr','softreason_smoke','softreason_paper')\n"
        "print(json.dumps({'ours': [t for t in names if t in ours.all_tasks],"
        " 'with_defaults': [t for t in names if t in user.all_tasks],"
        " 'svamp_path': str(user.task_index['svamp'].yaml_path)}))\n"
    )
    out = _run([sys.executable, "-c", code])
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["ours"] == ["svamp", "gsm_hard", "strategyqa", "gsm8k_sr", "softreason_smoke",
                           "softreason_paper"]
    assert got["with_defaults"] == got["ours"]
    assert got["svamp_path"].startswith(str(tmp_path))
    builtin = _run([sys.executable, "-c",
                    "from lm_eval.tasks import TaskManager; print('\\n'.join(TaskManager()"
                    ".all_tasks))"], {"LM_EVAL_SOFTREASON_NO_HOOK": "1"})
    assert not set(got["ours"]) & set(builtin.stdout.split())


@pytest.mark.slow
def test_stock_cli_runs_softreason_end_to_end(peaked_dir, tmp_path):
    out = _run([
        "lm_eval", "--model", "softreason", "--model_args",
        f"pretrained={peaked_dir},dtype=float32,k=2,max_rounds=2,verifier_max_gen_toks=8",
        "--tasks", "softreason_smoke", "--limit", "2", "--gen_kwargs", "max_gen_toks=10",
        "--output_path", str(tmp_path), "--log_samples",
    ])
    assert out.returncode == 0, out.stderr[-3000:]
    assert "softreason_smoke" in out.stdout and "gen_tokens" in out.stdout
    [results] = list(tmp_path.rglob("results_*.json"))
    data = json.loads(results.read_text())
    assert data["config"]["softreason_totals"]["requests"] == 2
    assert data["config"]["softreason_config"]["k"] == 2


def test_greedy_mode_honours_the_tasks_do_sample_and_temperature(peaked_dir):
    lm = _lm(peaked_dir, search="greedy")
    cold = {"until": [], "max_gen_toks": 10, "do_sample": True, "temperature": 1e-4}
    hot = {"until": [], "max_gen_toks": 10, "do_sample": True, "temperature": 50.0}
    greedy = lm.generate_until(_requests({"until": [], "max_gen_toks": 10}), disable_tqdm=True)
    assert [str(x) for x in lm.generate_until(_requests(cold), disable_tqdm=True)] == \
        [str(x) for x in greedy]
    sampled = lm.generate_until(_requests(hot), disable_tqdm=True)
    assert [str(x) for x in sampled] != [str(x) for x in greedy]
    assert sampled[0].stats["search"] == "sample"


def test_available_cpus_honours_omp_num_threads_and_the_affinity_mask(monkeypatch):
    import os

    from lm_eval_softreason.loading import available_cpus

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    free = available_cpus()
    assert 1 <= free <= len(os.sched_getaffinity(0))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert available_cpus() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "999")
    assert available_cpus() == free


def test_cpu_linear_auto_prepacks_float32_on_cpu_only():
    import torch

    from lm_eval_softreason.loading import resolve_cpu_linear

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert resolve_cpu_linear("auto", cpu, torch.float32) == "onednn"
    assert resolve_cpu_linear("auto", cpu, torch.bfloat16) == "aten"
    assert resolve_cpu_linear("auto", gpu, torch.float32) == "aten"
    assert resolve_cpu_linear("aten", cpu, torch.float32) == "aten"


@pytest.mark.slow
def test_readme_python_api_example_runs(peaked_dir, data_dir, monkeypatch):
    """The README's Python API block, on the tiny model and one problem."""
    readme = (REPO / "README.md").read_text()
    code = readme.split("## Python API", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    model = 'SoftReasonLM(pretrained="Qwen/Qwen2.5-1.5B-Instruct", batch_size=4)'
    assert model in code and "limit=10)" in code
    code = code.replace(model, f'SoftReasonLM(pretrained={str(peaked_dir)!r}, dtype="float32", '
                               'k=2, max_rounds=2, verifier_max_gen_toks=8)')
    code = code.replace("limit=10)", 'limit=1, gen_kwargs="max_gen_toks=8")')
    monkeypatch.setenv("LM_EVAL_SOFTREASON_DATA", str(data_dir))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["out"]["results"]["svamp"]["candidates,none"] == 4.0
    assert scope["out"]["config"]["softreason_totals"]["requests"] == 1
