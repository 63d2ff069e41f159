"""Engine throughput on random-init Llama-architecture models of real sizes (no Hub needed).

    python benchmarks/gpu_throughput.py --sizes small 1b 8b --out results/gpu/<device>.json \
        --profile results/gpu                                                       # on a GPU
    python benchmarks/gpu_throughput.py --render results/gpu/<device>.json  # its table again
    python benchmarks/gpu_throughput.py --sizes small                                  # CPU check
    python benchmarks/gpu_throughput.py --sizes 1b 8b --backends hf vllm   # both, vLLM venv

Prints, per size: tokens/s for k=5 candidates decoded as one batch vs one at a time; tokens/s
vs concurrent searches (1/8/32 searches of k rows each, every search with its own prompt of a
different length, merged by ``DecodingEngine.decode_many`` as cross-request batching does);
the share of a search round's
wall time that BO (GP fit + acquisition, 25 points) takes; peak GPU memory; the share of k rows
whose tokens are the same decoded as one batch and one at a time.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lm_eval_softreason.engine import DecodeCall, DecodingEngine
from lm_eval_softreason.search import bo

SIZES = {
    "small": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=8192),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256),
}


class _Tok:
    """Enough tokenizer for the engine: no EOS, no text."""

    eos_token_id = None

    def decode(self, ids, skip_special_tokens=True):
        return ""


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def build_hf(size: str, device: torch.device, dtype: torch.dtype):
    """Our HF engine on a random-init model of ``size``: (engine, config, its parameter count)."""
    torch.manual_seed(0)
    config = LlamaConfig(max_position_embeddings=4096, **SIZES[size])
    # Built on the device in its dtype: an 8B model initialised on the CPU in float32 would take
    # 32 GB of RAM and minutes of the lease's time.
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=dtype).eval()
    model.generation_config.eos_token_id = None
    return DecodingEngine(model, _Tok()), config, sum(p.numel() for p in model.parameters())


def build_vllm(size: str, device: torch.device, dtype: torch.dtype, workdir: Path):
    """The vLLM engine on a model of ``size`` with vLLM's dummy (random) weights: only a
    config.json on disk, no Hub and no checkpoint. Its input embeddings are a random matrix
    of the same shape (throughput does not depend on their values)."""
    from vllm import LLM

    from lm_eval_softreason.vllm_engine import VLLMEngine, cpu_memory_share

    config = LlamaConfig(max_position_embeddings=4096, **SIZES[size])
    config.eos_token_id = None
    model_dir = workdir / f"llama-{size}"
    config.save_pretrained(model_dir)
    llm = LLM(model=str(model_dir), load_format="dummy", skip_tokenizer_init=True,
              enable_prompt_embeds=True, enable_prefix_caching=True,
              dtype=str(dtype).removeprefix("torch."), seed=0, max_model_len=4096,
              enforce_eager=device.type != "cuda",
              **({"gpu_memory_utilization": cpu_memory_share()} if cpu_memory_share() else {}))
    with torch.device("meta"):
        skeleton = LlamaForCausalLM(config)
    skeleton.generation_config.eos_token_id = None
    embedding = torch.randn(config.vocab_size, config.hidden_size, dtype=dtype) * 0.02
    params = sum(p.numel() for p in skeleton.parameters())
    return VLLMEngine(llm, _Tok(), skeleton, embedding), config, params


def measure(size: str, backend: str, device: torch.device, dtype: torch.dtype, new_tokens: int,
            prompt_len: int, k: int, workdir: Path, profile_dir: Path | None = None) -> dict:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if backend == "vllm":
        engine, config, params = build_vllm(size, device, dtype, workdir)
    else:
        engine, config, params = build_hf(size, device, dtype)
    device = engine.device  # where soft vectors are built (the CPU for vLLM)
    ids = torch.randint(0, config.vocab_size, (prompt_len,)).tolist()
    prefix = engine.prefill(ids)
    base = engine.embed([prefix.greedy_token])

    def rate(rows: int, one_at_a_time: bool = False) -> float:
        soft = base.repeat(rows, 1) + 0.02 * torch.randn(rows, config.hidden_size, device=device, dtype=dtype)
        _sync(device)
        start = time.perf_counter()
        if one_at_a_time:
            out = [c for i in range(rows) for c in engine.decode(prefix, soft[i : i + 1], max_new_tokens=new_tokens)]
        else:
            out = engine.decode(prefix, soft, max_new_tokens=new_tokens)
        _sync(device)
        return sum(len(c.token_ids) for c in out) / (time.perf_counter() - start)

    def concurrent_rate(searches: int) -> float:
        gen = torch.Generator().manual_seed(searches)
        prefixes = [engine.prefill(torch.randint(0, config.vocab_size, (n,), generator=gen).tolist())
                    for n in torch.randint(prompt_len * 8 // 10, prompt_len * 12 // 10 + 1, (searches,),
                                           generator=gen).tolist()]
        calls = [DecodeCall(p, engine.embed([p.greedy_token]).repeat(k, 1)
                            + 0.02 * torch.randn(k, config.hidden_size, device=device, dtype=dtype),
                            max_new_tokens=new_tokens) for p in prefixes]
        _sync(device)
        start = time.perf_counter()
        out = engine.decode_many(calls)
        _sync(device)
        return sum(len(c.token_ids) for group in out for c in group) / (time.perf_counter() - start)

    rate(k)  # warm-up
    row: dict = {"size": size, "backend": backend, "params_b": params / 1e9}
    # Batch invariance: the same k soft vectors decoded as one batch and one row at a time.
    # Random weights give flat logits (many near-ties), so this bounds from above what a
    # trained model of the same shape would show.
    soft = base.repeat(k, 1) + 0.02 * torch.randn(k, config.hidden_size, device=device, dtype=dtype)
    together = engine.decode(prefix, soft, max_new_tokens=new_tokens)
    alone = [c for i in range(k) for c in engine.decode(prefix, soft[i : i + 1], max_new_tokens=new_tokens)]
    row["batch_invariant_rows"] = sum(a.token_ids == b.token_ids for a, b in zip(together, alone)) / k
    row["k5_batched_tok_s"] = rate(k)
    row["k5_one_at_a_time_tok_s"] = rate(k, one_at_a_time=True)
    for searches in (1, 8, 32):
        # first on these prompt lengths, then again on the same ones: on a GPU the first pass
        # over new cache lengths pays one-off kernel selection that a long eval amortises
        row[f"searches{searches}_first_tok_s"] = concurrent_rate(searches)
        row[f"searches{searches}_tok_s"] = concurrent_rate(searches)
    if profile_dir is not None:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            concurrent_rate(8)
        sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
        (profile_dir / f"profile_{size}_{backend}.txt").write_text(
            prof.key_averages().table(sort_by="cpu_time_total", row_limit=25) + "\n"
            + prof.key_averages().table(sort_by=sort, row_limit=15))
    start = time.perf_counter()
    engine.decode(prefix, base.repeat(k, 1), max_new_tokens=new_tokens)
    _sync(device)
    round_s = time.perf_counter() - start
    x = torch.randn(25, 50, dtype=torch.float64)
    y = torch.rand(25, dtype=torch.float64) * 2
    start = time.perf_counter()
    bo.propose(x, y, k, seed=0)
    bo_s = time.perf_counter() - start
    row.update(round_s=round_s, bo_s=bo_s, bo_share=bo_s / (bo_s + round_s))
    if torch.cuda.is_available() and backend == "hf":  # vLLM's memory is its own process's
        row["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    del engine, prefix
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return row


COLUMNS = [("k5_batched_tok_s", "k=5, one batch"), ("k5_one_at_a_time_tok_s", "k=5, one at a time"),
           ("searches1_tok_s", "1 search"), ("searches8_tok_s", "8 searches"),
           ("searches32_tok_s", "32 searches")]


def render(report: dict) -> str:
    """The report as markdown: decode tokens/s per size, then the other figures."""
    head = (f"{report['device']}, {report['dtype']}, torch {report['torch']}; prompt "
            f"{report['prompt_len']} tokens, {report['new_tokens']} new tokens per row; "
            "random-init Llama-architecture models (no Hub).\n\n")
    lines = ["| size | params | " + " | ".join(c for _, c in COLUMNS) + " |",
             "|---|---:|" + "---:|" * len(COLUMNS)]
    for r in report["rows"]:
        lines.append(f"| {r['size']} ({r['backend']}) | {r['params_b']:.2f} B | "
                     + " | ".join(f"{r[k]:,.0f}" for k, _ in COLUMNS) + " |")
    lines += ["", "| size | first pass: 1 / 8 / 32 searches (tok/s) | BO share of a round | "
              "peak GPU GiB | rows batch-invariant |", "|---|---:|---:|---:|---:|"]
    for r in report["rows"]:
        first = " / ".join(f"{r.get(f'searches{n}_first_tok_s', float('nan')):,.0f}" for n in (1, 8, 32))
        lines.append(f"| {r['size']} ({r['backend']}) | {first} | {r['bo_share']:.2f} | "
                     f"{r.get('peak_gpu_gib', float('nan')):.1f} | {r['batch_invariant_rows']:.1f} |")
    return head + "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["small"], choices=list(SIZES))
    ap.add_argument("--backends", nargs="+", default=["hf"], choices=["hf", "vllm"],
                    help="vllm needs the vLLM venv (README, 'vLLM backend')")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=200)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--out", default=None)
    ap.add_argument("--profile", default=None, metavar="DIR",
                    help="also write a torch.profiler table of one 8-search pass per size here")
    ap.add_argument("--render", default=None, metavar="JSON",
                    help="only write JSON's markdown table beside it (.md) and print it")
    args = ap.parse_args()
    if args.render:
        text = render(json.loads(Path(args.render).read_text()))
        Path(args.render).with_suffix(".md").write_text(text)
        print(text)
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16
    report = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "dtype": str(dtype), "torch": torch.__version__, "new_tokens": args.new_tokens,
              "prompt_len": args.prompt_len, "rows": []}
    with tempfile.TemporaryDirectory() as workdir:
        for size in args.sizes:
            for backend in args.backends:
                row = measure(size, backend, device, dtype, args.new_tokens, args.prompt_len,
                              args.k, Path(workdir), Path(args.profile) if args.profile else None)
                report["rows"].append(row)
                print(json.dumps(row), flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        Path(args.out).with_suffix(".md").write_text(render(report))


if __name__ == "__main__":
    main()
