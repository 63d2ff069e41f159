"""Our model with tasks: the stock CLI on our tasks and on lm-eval's builtin gsm8k (offline),
and lm-eval's request cache never returning another configuration's answers."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from lm_eval.api.instance import Instance
from lm_eval.api.model import CachingLM

from lm_eval_softreason.lm import SoftReasonLM

REPO = Path(__file__).resolve().parents[1]
METRICS = ("acc", "coverage", "gen_tokens", "prompt_tokens", "candidates", "rounds", "wall_s")


def _cli(args, env, timeout=900):
    out = subprocess.run(["lm_eval", *args], capture_output=True, text=True, env=env, cwd=REPO,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.mark.slow
def test_stock_cli_softreason_on_paper_tasks_reports_accuracy_coverage_and_cost(
        tiny_model_dir, data_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "LM_EVAL_SOFTREASON_DATA": str(data_dir)}
    out = _cli(["--model", "softreason", "--model_args",
                f"pretrained={tiny_model_dir('llama')},dtype=float32,k=2,max_rounds=2,"
                "verifier_max_gen_toks=8",
                "--tasks", "svamp,strategyqa", "--limit", "3", "--gen_kwargs", "max_gen_toks=12",
                "--output_path", str(tmp_path), "--log_samples"], env)
    table = out.stdout
    for metric in METRICS:
        assert f"|{metric}" in table.replace(" ", ""), f"{metric} missing from the table"
    [results] = list(tmp_path.rglob("results_*.json"))
    data = json.loads(results.read_text())
    for task in ("svamp", "strategyqa"):
        row = data["results"][task]
        assert row["candidates,none"] == 4.0 and row["rounds,none"] == 2.0
        assert 0.0 <= row["coverage,none"] <= 1.0
        samples = [json.loads(line) for p in tmp_path.rglob(f"samples_{task}_*.jsonl")
                   for line in p.read_text().splitlines()]
        assert len(samples) == 3 and all(set(METRICS) <= set(s) for s in samples)


@pytest.mark.slow
def test_builtin_gsm8k_runs_with_softreason_offline_and_reports_run_totals(
        tiny_model_dir, offline_hf_env, tmp_path):
    _cli(["--model", "softreason", "--model_args",
          f"pretrained={tiny_model_dir('llama')},dtype=float32,search=greedy",
          "--tasks", "gsm8k", "--limit", "2", "--gen_kwargs", "max_gen_toks=8",
          "--output_path", str(tmp_path)], offline_hf_env)
    [results] = list(tmp_path.rglob("results_*.json"))
    data = json.loads(results.read_text())
    assert "exact_match,strict-match" in data["results"]["gsm8k"]
    totals = data["config"]["softreason_totals"]
    assert totals["requests"] == 2 and 0 < totals["gen_tokens"] <= 16


def test_request_cache_is_per_configuration(tiny_model_dir, tmp_path):
    db = str(tmp_path / "cache.db")
    reqs = [Instance("generate_until", {"question": "1+1?", "input": "2+2?"},
                     ("Question: 1+1?\nAnswer:", {"until": []}), 0, ("t", 0, 1))]

    def run(**changes):
        args = {"k": 2, "max_rounds": 2, "verifier_max_gen_toks": 4, "max_gen_toks": 4} | changes
        lm = SoftReasonLM(pretrained=str(tiny_model_dir("llama")), dtype="float32", **args)
        [out] = CachingLM(lm, db).generate_until(reqs)
        return lm.totals["requests"], out.stats["candidates"], out.stats["candidate_tokens"]

    assert run() == (1, 4, 16)  # computed
    assert run() == (0, 4, 16)  # same configuration: served from the cache
    assert run(k=3) == (1, 6, 24)  # k changed: fresh results, not k=2's answers
    # keys the fingerprint once left out: the task gives no max_gen_toks, so ours applies
    assert run(max_gen_toks=6) == (1, 4, 24)
    assert run(question_field="input")[0] == 1  # another verifier question: recomputed
    assert run(max_length=128)[0] == 1
    assert run(batch_size=2) == (0, 4, 16)  # concurrency changes no answer: reused
