"""The vLLM engine's own logic, without vLLM: requests it builds, candidates and costs it makes
of vLLM's outputs. A scripted ``_generate`` stands in for ``vllm.LLM.generate``; the real
backend is compared with the HF one in ``tests_vllm/`` (a separate venv, README)."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lm_eval_softreason.config import SoftReasonConfig
from lm_eval_softreason.engine import DecodeCall, EngineStats, Prefix
from lm_eval_softreason.vllm_engine import VLLMEngine, VLLMPrefix, input_embedding_weight


def _completion(ids, finish="length", stop_reason=None):
    return SimpleNamespace(token_ids=list(ids), finish_reason=finish, stop_reason=stop_reason,
                           logprobs=[{t: SimpleNamespace(logprob=-0.5)} for t in ids])


class ScriptedEngine(VLLMEngine):
    """Answers each request from ``script`` (a list of (completions, cached) per request, in
    submission order) and records what it was sent."""

    def __init__(self, model_dir, script):
        tok = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        super().__init__(llm=None, tokenizer=tok, model=model,
                         embedding=model.get_input_embeddings().weight.detach())
        self.script, self.sent = list(script), []

    def _generate(self, prompts, params):
        self.sent.append(list(zip(prompts, params)))
        return [SimpleNamespace(outputs=c, num_cached_tokens=cached)
                for c, cached in (self.script.pop(0) for _ in prompts)]


@pytest.fixture
def model_dir(tiny_model_dir):
    return tiny_model_dir("llama")


def _text_ids(engine, text):
    return engine.tokenizer.encode(text, add_special_tokens=False)


def test_soft_rows_are_the_prompt_embeddings_plus_one_vector_each(model_dir):
    engine = ScriptedEngine(model_dir, [([_completion([5, 6])], 0), ([_completion([7])], 3)])
    prompt = [11, 12, 13, 14]
    prefix = Prefix(prompt, None, torch.empty(0))
    soft = torch.randn(2, engine.hidden_size, dtype=torch.float64)
    engine.decode(prefix, soft, max_new_tokens=8)
    (batch,) = engine.sent
    assert len(batch) == 2
    for (prompt_dict, params), row in zip(batch, soft):
        embeds = prompt_dict["prompt_embeds"]
        assert embeds.shape == (5, engine.hidden_size)
        assert torch.equal(embeds[:4], engine.embed(prompt))
        assert torch.allclose(embeds[4].double(), row, atol=1e-6)
        assert params["n"] == 1 and params["temperature"] == 0.0 and params["max_tokens"] == 8
        assert params["logprobs"] == 0 and params["stop_token_ids"] == sorted(engine.eos_ids)
        assert params["ignore_eos"]  # the engine's eos_ids are the only EOS check


def test_plain_rows_are_one_request_with_n_and_the_callers_seed(model_dir):
    engine = ScriptedEngine(model_dir, [([_completion([5]), _completion([6])], 0)])
    prefix = Prefix([11, 12], None, torch.empty(0))
    out = engine.decode(prefix, None, n=2, sample=True, temperature=0.6, top_p=0.9, seed=77)
    ((prompt, params),) = engine.sent[0]
    assert params["n"] == 2 and params["seed"] == 77
    assert params["temperature"] == 0.6 and params["top_p"] == 0.9
    assert [c.token_ids for c in out] == [[5], [6]]


def test_candidates_drop_eos_cut_stop_strings_and_name_the_reason(model_dir):
    engine = ScriptedEngine(model_dir, [])
    eos = min(engine.eos_ids)
    answer = _text_ids(engine, "3 + 4 = 7 apples.\nAnswer: 7")
    engine.script = [([_completion(answer + [eos], "stop", None),
                       _completion(answer, "stop", "Answer:"),
                       _completion(answer, "length")], 0)]
    eos_row, until_row, long_row = engine.decode(
        Prefix([11], None, torch.empty(0)), None, n=3, until=["Answer:"])
    assert eos_row.stop_reason == "eos" and eos_row.token_ids == answer
    assert len(eos_row.logprobs) == len(answer)
    assert until_row.stop_reason == "until" and until_row.text == "3 + 4 = 7 apples.\n"
    assert long_row.stop_reason == "max_tokens"


def test_each_call_is_charged_its_own_rows_and_the_engine_the_batch_once(model_dir):
    engine = ScriptedEngine(model_dir, [])
    eos = min(engine.eos_ids)
    engine.script = [([_completion([5, 6, eos], "stop")], 2),  # call A, soft row 1
                     ([_completion([5], "length")], 4),  # call A, soft row 2
                     ([_completion([8, 9, 10]), _completion([8])], 0)]  # call B, n=2
    a, b = EngineStats(), EngineStats()
    soft = torch.zeros(2, engine.hidden_size)
    calls = [DecodeCall(Prefix([1, 2, 3, 4], None, torch.empty(0)), soft, stats=a),
             DecodeCall(Prefix([1, 2, 3], None, torch.empty(0)), None, n=2, stats=b)]
    engine.decode_many(calls)
    assert len(engine.sent) == 1 and len(engine.sent[0]) == 3  # one generate, three requests
    # prompt positions vLLM computed: 4 per soft row less its cached ones (the soft position
    # counts apart, as in the HF engine); 3 for B
    assert (a.prefill_tokens, a.soft_positions, a.generated_tokens) == (4 - 2 + 4 - 4, 2, 3)
    assert (b.prefill_tokens, b.soft_positions, b.generated_tokens) == (3, 0, 4)
    assert engine.stats.generated_tokens == 7 and engine.stats.prefill_tokens == 5
    assert a.decode_s == b.decode_s == pytest.approx(engine.stats.decode_s)


def test_prefill_gives_the_greedy_token_and_reuses_its_embeddings(model_dir):
    engine = ScriptedEngine(model_dir, [([_completion([42])], 0), ([_completion([1])], 4)])
    prefix = engine.prefill([11, 12, 13, 14])
    assert isinstance(prefix, VLLMPrefix) and prefix.greedy_token == 42
    assert engine.stats.prefill_tokens == 4
    engine.decode(prefix, torch.zeros(1, engine.hidden_size))
    sent = engine.sent[1][0][0]["prompt_embeds"]
    assert torch.equal(sent[:4], prefix.embeds)
    assert engine.stats.prefill_tokens == 4 + 4 - 4  # the cached blocks are not charged


def test_zero_new_tokens_is_refused_with_a_reason(model_dir):
    engine = ScriptedEngine(model_dir, [])
    with pytest.raises(ValueError, match="zero tokens"):
        engine.decode(Prefix([1], None, torch.empty(0)), None, max_new_tokens=0)


def test_embedding_weight_is_read_from_the_checkpoint_alone(model_dir):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(model.config)
    weight = input_embedding_weight(skeleton, model_dir)
    assert torch.equal(weight, model.get_input_embeddings().weight.detach())


def test_embedding_weight_missing_names_the_directory(model_dir, tmp_path):
    from transformers import AutoConfig

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        input_embedding_weight(skeleton, tmp_path)


def test_backend_keys_are_checked_and_fingerprinted():
    with pytest.raises(ValueError, match="backend='tgi'.*hf, vllm"):
        SoftReasonConfig.from_model_args(backend="tgi")
    with pytest.raises(ValueError, match="tensor_parallel_size=2.*needs backend=vllm"):
        SoftReasonConfig.from_model_args(tensor_parallel_size="2")
    hf = SoftReasonConfig.from_model_args()
    vllm = SoftReasonConfig.from_model_args(backend="vllm")
    assert hf.fingerprint() != vllm.fingerprint()
    eager = SoftReasonConfig.from_model_args(backend="vllm", enforce_eager="false")
    assert eager.fingerprint() == vllm.fingerprint()


def test_without_vllm_installed_the_error_says_how_to_get_it(monkeypatch, model_dir):
    from lm_eval_softreason.lm import SoftReasonLM

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(ImportError, match=r"lm-eval-softreason\[vllm\]"):
        SoftReasonLM(pretrained=str(model_dir), backend="vllm")


def test_loglikelihood_tasks_are_refused_on_vllm_naming_the_hf_backend(monkeypatch, model_dir):
    import lm_eval_softreason.lm as lm_module

    engine = ScriptedEngine(model_dir, [])
    monkeypatch.setattr(lm_module, "load_vllm",
                        lambda cfg: (engine.model, engine.tokenizer, "tiny", engine))
    lm = lm_module.SoftReasonLM(pretrained=str(model_dir), backend="vllm")
    assert lm.engine is engine
    for method in (lm.loglikelihood, lm.loglikelihood_rolling):
        with pytest.raises(NotImplementedError, match="backend=hf"):
            method([])


def test_a_multi_process_launch_is_refused_on_vllm(monkeypatch, model_dir):
    from lm_eval_softreason.lm import SoftReasonLM

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        SoftReasonLM(pretrained=str(model_dir), backend="vllm")


def test_dequantized_directory_ignores_leftovers_and_yields_to_a_concurrent_writer(
        model_dir, tmp_path, monkeypatch):
    """The float32 directory made from a GGUF for vLLM: a killed run's half-written directory
    is never written into, and a conversion that lost a race returns the winner's directory."""
    import os
    from pathlib import Path

    from lm_eval_softreason import loading

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"stand-in")
    monkeypatch.setenv("LM_EVAL_SOFTREASON_CACHE", str(tmp_path / "cache"))
    # transformers reads the stand-in GGUF as the tiny model (a real GGUF load is slow)
    tiny_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tiny_tokenizer = AutoTokenizer.from_pretrained(model_dir)
    monkeypatch.setattr(loading.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: tiny_model)
    monkeypatch.setattr(loading.AutoTokenizer, "from_pretrained", lambda *a, **k: tiny_tokenizer)
    stat = gguf.stat()
    target = tmp_path / "cache" / "dequantized" / f"m-{stat.st_size}-{int(stat.st_mtime)}"
    leftover = target.with_name(f"{target.name}.partial-{os.getpid()}")
    leftover.mkdir(parents=True)
    (leftover / "junk.bin").write_bytes(b"half written")
    made = loading.dequantized_directory(str(tmp_path), "m.gguf")
    assert made == target and (made / "config.json").is_file()
    assert not (made / "junk.bin").exists() and not leftover.exists()

    import shutil

    shutil.rmtree(target)
    real_rename = Path.rename

    def lose_the_race(self, dest):
        shutil.copytree(self, dest)  # the other process renamed its copy first
        return real_rename(self, dest)  # -> OSError: the target exists and is not empty

    monkeypatch.setattr(Path, "rename", lose_the_race)
    assert loading.dequantized_directory(str(tmp_path), "m.gguf") == target
    assert (target / "config.json").is_file()
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]  # partial removed
