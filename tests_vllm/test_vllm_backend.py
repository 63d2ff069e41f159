"""``backend=vllm`` against ``backend=hf`` on the embedded model (SmolLM2-135M, float32).

Runs in the vLLM venv only (vLLM 0.32 pins transformers<5.20): ``.ci/run-vllm``, README "vLLM
backend". The main suite tests the vLLM engine's own logic without vLLM
(tests/test_vllm_engine.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LM_EVAL_SOFTREASON_DATA") or REPO.parent / "shared" / "data")
# vLLM on CPU reserves this share of RAM for its KV cache; the tests run two at a time at most
MEMORY = "gpu_memory_utilization=0.1"

pytestmark = pytest.mark.timeout(1800)


def _cli(out_dir: Path, model_args: str, task: str, limit: int, *extra: str) -> tuple[str, list]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "LM_EVAL_SOFTREASON_DATA": str(DATA)}
    run = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "softreason", "--model_args", model_args,
         "--tasks", task, "--limit", str(limit), "--apply_chat_template", "--log_samples",
         "--output_path", str(out_dir), *extra],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=1500)
    assert run.returncode == 0, run.stderr[-4000:]
    [samples_file] = out_dir.rglob(f"samples_{task}_*.jsonl")
    samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
    return run.stdout, sorted(samples, key=lambda s: s["doc_id"])


def test_greedy_answers_equal_the_hf_backend_on_the_smoke_problems(tmp_path):
    args = "search=greedy,dtype=float32"
    _, hf = _cli(tmp_path / "hf", args, "softreason_smoke", 8)
    _, vllm = _cli(tmp_path / "vllm", f"backend=vllm,{MEMORY},{args}", "softreason_smoke", 8)
    assert [s["doc_id"] for s in hf] == [s["doc_id"] for s in vllm] == list(range(8))
    hf_answers = [s["filtered_resps"] for s in hf]
    vllm_answers = [s["filtered_resps"] for s in vllm]
    same_text = sum(h["resps"] == v["resps"] for h, v in zip(hf, vllm))
    print(f"answers equal on {sum(a == b for a, b in zip(hf_answers, vllm_answers))}/8, "
          f"whole responses equal on {same_text}/8")
    assert vllm_answers == hf_answers


@pytest.fixture(scope="module")
def vllm_lm():
    from lm_eval_softreason.lm import SoftReasonLM

    return SoftReasonLM(backend="vllm", search="greedy", dtype="float32",
                        gpu_memory_utilization=0.1)


def test_a_soft_vector_without_perturbation_reproduces_greedy(vllm_lm):
    """The soft position fed the greedy token's own embedding continues exactly as greedy
    does after that token, on vLLM, and vLLM's greedy tokens equal the HF engine's."""
    from lm_eval_softreason.engine import DecodingEngine
    from lm_eval_softreason.loading import load_model_and_tokenizer

    engine = vllm_lm.engine
    model, tokenizer, _ = load_model_and_tokenizer(vllm_lm.cfg)
    hf = DecodingEngine(model, tokenizer)
    questions = [json.loads(line)["question"] for line in
                 (REPO / "tasks" / "softreason_smoke.jsonl").read_text().splitlines()[:3]]
    for question in questions:
        ids = vllm_lm._encode(vllm_lm.apply_chat_template([{"role": "user", "content": question}]))
        prefix = engine.prefill(ids)
        [greedy] = engine.decode(prefix, None, max_new_tokens=40)
        soft = engine.embed([prefix.greedy_token]).repeat(2, 1)
        rows = engine.decode(prefix, soft, max_new_tokens=39)
        assert greedy.token_ids[0] == prefix.greedy_token
        for row in rows:
            assert row.token_ids == greedy.token_ids[1:]
        [hf_greedy] = hf.decode(hf.prefill(ids), None, max_new_tokens=40)
        assert hf_greedy.token_ids == greedy.token_ids
        assert torch.allclose(torch.tensor(hf_greedy.logprobs), torch.tensor(greedy.logprobs),
                              atol=1e-3)


def test_softreason_runs_end_to_end_through_the_stock_cli(tmp_path):
    stdout, samples = _cli(
        # w_verifier=1: the verifier (off in the default preset v3) and its forced answers too
        tmp_path, f"backend=vllm,{MEMORY},max_rounds=2,w_verifier=1,verifier_max_gen_toks=64",
        "svamp", 2,
        "--gen_kwargs", "max_gen_toks=64")
    assert "coverage" in stdout and "gen_tokens" in stdout
    assert len(samples) == 2
    for sample in samples:
        assert sample["resps"][0][0].strip()


def test_rows_of_a_long_prompt_reuse_its_cached_blocks(vllm_lm):
    """Prefill caches the prompt's full KV blocks; the request's soft rows send the same
    embeddings plus one row, so only the last partial block and the soft row are computed."""
    engine = vllm_lm.engine
    question = " ".join(["Tom has 3 apples and buys 4 more."] * 40)
    ids = vllm_lm._encode(vllm_lm.apply_chat_template([{"role": "user", "content": question}]))
    assert len(ids) > 256
    before = engine.stats.prefill_tokens
    prefix = engine.prefill(ids)
    assert engine.stats.prefill_tokens - before == len(ids)  # nothing cached yet
    before = engine.stats.prefill_tokens
    engine.decode(prefix, engine.embed([prefix.greedy_token]).repeat(2, 1), max_new_tokens=4)
    computed = engine.stats.prefill_tokens - before
    print(f"prompt {len(ids)} positions; 2 soft rows computed {computed} prompt positions")
    assert computed <= 2 * (len(ids) - 128)  # at least one full block served to each row
