"""Shared test fixtures: repository paths, tiny random-init models, an offline Hub cache.

``tiny_model_dir(arch)`` builds (once per session and architecture) a randomly initialised
causal LM of a few thousand parameters with a byte-level BPE tokenizer trained here on a few
strings: it encodes any text, has a ChatML chat template, ``<|im_end|>`` as eos and
``<|endoftext|>`` as bos/pad. It loads with ``AutoTokenizer``/``AutoModelForCausalLM`` and with
lm-eval's ``--model hf``, offline. Its output is noise; it exercises plumbing, not quality.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# ../shared/data next to the repository, or wherever LM_EVAL_SOFTREASON_DATA points
DATA_DIR = Path(os.environ.get("LM_EVAL_SOFTREASON_DATA") or REPO_ROOT.parent / "shared" / "data")
TASKS_DIR = REPO_ROOT / "tasks"
# where the model-running tests put their models: "cpu" (CI), or e.g. "cuda" to check a GPU
# install (LM_EVAL_SOFTREASON_TEST_DEVICE=cuda python -m pytest tests/test_engine.py ...)
DEVICE = os.environ.get("LM_EVAL_SOFTREASON_TEST_DEVICE", "cpu")

TINY_ARCHS = ("llama", "qwen2", "gpt2")
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_TOKENIZER_CORPUS = (
    "Question: Tom has 3 apples. He buys 4 more apples. How many apples does Tom have now?",
    "Let's think step by step. 3 + 4 = 7 apples.\nAnswer: 7",
    "Was the ship named after a battle? Answer: true. Answer: false.",
    "0 1 2 3 4 5 6 7 8 9 10 100 1,000 $ % = + - * /",
)


def build_tiny_tokenizer(vocab_size: int = 384):
    """A ``PreTrainedTokenizerFast`` (byte-level BPE, ChatML template), built without the Hub."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_TOKENIZER_CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=4096,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def _tiny_config(arch: str, tokenizer):
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    ids = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if arch == "gpt2":
        return GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=4096, **ids)
    decoder = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        **ids,
    )
    if arch == "llama":
        return LlamaConfig(**decoder)
    if arch == "qwen2":
        return Qwen2Config(**decoder)
    raise ValueError(f"arch must be one of {', '.join(TINY_ARCHS)}, got {arch!r}")


def build_tiny_model(arch: str, out_dir: Path, seed: int = 0) -> Path:
    """Save a random-init ``arch`` causal LM and its tokenizer to ``out_dir``; returns it."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = build_tiny_tokenizer()
    config = _tiny_config(arch, tokenizer)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """``tiny_model_dir(arch="llama") -> Path``: a saved tiny model ("llama", "qwen2", "gpt2"),
    built on first use and shared by the whole session (treat it as read-only)."""
    built: dict[str, Path] = {}

    def get(arch: str = "llama") -> Path:
        if arch not in TINY_ARCHS:
            raise ValueError(f"arch must be one of {', '.join(TINY_ARCHS)}, got {arch!r}")
        if arch not in built:
            built[arch] = build_tiny_model(arch, tmp_path_factory.mktemp(f"tiny-{arch}"))
        return built[arch]

    return get


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared benchmark data (``../shared/data`` from the repository root)."""
    if not DATA_DIR.is_dir():  # a missing data dir is a broken set-up, not a reason to skip
        pytest.fail(f"benchmark data not found at {DATA_DIR}: clone the repo next to shared/ "
                    "or set LM_EVAL_SOFTREASON_DATA")
    return DATA_DIR


@pytest.fixture(scope="session")
def offline_hf_env(tmp_path_factory, data_dir) -> dict[str, str]:
    """Environment for a subprocess that loads ``openai/gsm8k`` (config main) offline: a fresh
    HF_HOME seeded from ``../shared/data/gsm8k`` plus HF_HUB_OFFLINE/HF_DATASETS_OFFLINE=1."""
    from hf_offline import offline_env, seed_gsm8k

    hf_home = tmp_path_factory.mktemp("hf_home")
    seed_gsm8k(hf_home, data_dir / "gsm8k")
    return {**os.environ, **offline_env(hf_home)}


@pytest.fixture(scope="session")
def peaked_dir(tiny_model_dir, tmp_path_factory):
    """A tiny llama whose greedy choices are not near-ties (so parity checks mean something)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = tiny_model_dir("llama")
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    out = tmp_path_factory.mktemp("peaked")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out


MAX_WORKERS = 4  # each worker may load the embedded model (~0.5 GB) and lm-eval's task index


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: one worker per CPU this process may use (cgroup/affinity aware), capped."""
    from lm_eval_softreason.loading import available_cpus

    return max(1, min(MAX_WORKERS, available_cpus()))


def pytest_configure(config) -> None:
    # In an xdist worker, split the CPUs between the workers: oversubscribed intra-op threads
    # spin against each other (10x slower decoding, see loading.available_cpus). Every lm_eval
    # subprocess a test starts inherits the variables.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        from lm_eval_softreason.loading import available_cpus

        threads = str(max(1, available_cpus() // workers))
        os.environ["OMP_NUM_THREADS"] = threads
        os.environ["MKL_NUM_THREADS"] = threads
        import torch  # already loaded by loading.py, so it no longer reads the variables

        torch.set_num_threads(int(threads))


def pytest_collection_modifyitems(items) -> None:
    # longest first: xdist hands tests out in collection order, so a slow test collected last
    # would run alone on one worker while the others sit idle. Among the slow ones, a larger
    # declared timeout (pytest.mark.timeout) means a longer test.
    def cost(item: pytest.Item) -> tuple[bool, float]:
        timeout = item.get_closest_marker("timeout")
        return item.get_closest_marker("slow") is None, -(timeout.args[0] if timeout else 0)

    items.sort(key=cost)


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter):
    """Seconds per test file (setup + call + teardown, slowest first), after pytest's own
    ``--durations`` list: what each file costs CI."""
    seconds: dict[str, float] = defaultdict(float)
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) in ("setup", "call", "teardown"):
                seconds[report.nodeid.split("::")[0]] += report.duration
    if not seconds:
        return
    terminalreporter.write_sep("=", "seconds per test file")
    for path, total in sorted(seconds.items(), key=lambda item: -item[1]):
        terminalreporter.write_line(f"{total:8.1f}s  {path}")
    terminalreporter.write_line(f"{sum(seconds.values()):8.1f}s  total")
