"""CPU kernels for the bench model's linear layers, on real weights and activations (issue 19).

    python benchmarks/linear_kernels.py --bench-model qwen2.5-coder-1.5b [--layer 0] \
        [--out results/linear_kernels]

Linear layers are most of float32 decode on CPU, so a faster kernel is the lever left for
the issue's 0.4x wall-time target once ``cpu_linear=onednn`` is in. For every linear of one
decoder layer (q, k, v, o, gate, up, down), with that layer's real weights and the hidden
states a real prompt gives it, this times:

* ``aten``: ``F.linear`` (MKL sgemm; ``cpu_linear=aten``);
* ``onednn``: torch's ``MkldnnLinear``, weights prepacked once (``cpu_linear=onednn``, the
  float32 CPU default);
* ``int8-dynamic``: ``torch.ao.quantization.quantize_dynamic`` (x86 engine: int8 weights per
  tensor, activations quantised per *tensor* at run time);
* ``int8-weight-only``: ATen's ``_weight_int8pack_mm`` (int8 weights per output channel,
  float32 activations).

and, against the float32 result, each kernel's relative error and whether a row's output is
the same alone as inside a batch (the package promises results independent of batching).
Writes ``<out>.json`` and ``<out>.md``. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
import torch.nn.functional as F

from cpu_engine import PROMPT, report_head, write_report

BATCHES = (1, 5, 10)
NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _kernels(linear: torch.nn.Linear) -> dict:
    """name -> callable(x) computing ``linear(x)`` with that kernel."""
    from torch.utils.mkldnn import MkldnnLinear

    weight, bias = linear.weight, linear.bias
    packed = MkldnnLinear(linear, torch.float32)
    torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated: that is a finding too
        warnings.simplefilter("ignore")
        dynamic = torch.ao.quantization.quantize_dynamic(
            torch.nn.Sequential(linear), {torch.nn.Linear}, dtype=torch.qint8)
    scales = weight.abs().amax(1) / 127
    int8 = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8).contiguous()

    def weight_only(x: torch.Tensor) -> torch.Tensor:
        out = torch.ops.aten._weight_int8pack_mm(x, int8, scales)
        return out if bias is None else out + bias

    return {"aten": lambda x: F.linear(x, weight, bias), "onednn": packed,
            "int8-dynamic": dynamic, "int8-weight-only": weight_only}


def _time(fn, x: torch.Tensor, reps: int) -> float:
    for _ in range(2):
        fn(x)
    start = time.perf_counter()
    for _ in range(reps):
        fn(x)
    return (time.perf_counter() - start) / reps


def _layer_inputs(model, tok, linears: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """The hidden states each of ``linears`` receives on the prompt (one row per token)."""
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(module, args, output) -> None:  # returning a value would replace the output
            seen.setdefault(name, args[0][0].detach().clone())
        return hook

    hooks = [module.register_forward_hook(keep(name)) for name, module in linears.items()]
    text = tok.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False,
                                   add_generation_prompt=True)
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    try:
        model(ids)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def run(pretrained: str, layer: int, reps: int) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lm_eval_softreason.loading import available_cpus

    torch.set_num_threads(available_cpus())  # as threads=auto, the CPU default
    tok = AutoTokenizer.from_pretrained(pretrained)
    model = AutoModelForCausalLM.from_pretrained(pretrained, dtype=torch.float32).eval()
    linears = {name.rsplit(".", 1)[-1]: m for name, m in
               model.model.layers[layer].named_modules() if name.rsplit(".", 1)[-1] in NAMES}
    out: dict = {"batches": {}}
    with torch.no_grad():
        inputs = _layer_inputs(model, tok, linears)
        kernels = {name: _kernels(linears[name]) for name in NAMES}
        for batch in BATCHES:
            row: dict = {}
            for kernel in kernels[NAMES[0]]:
                seconds, rel_err, batch_diff = 0.0, 0.0, 0.0
                for name in NAMES:
                    x = inputs[name][-batch:].contiguous()  # the prompt's last tokens
                    fn = kernels[name][kernel]
                    seconds += _time(fn, x, reps)
                    ref = F.linear(x.double(), linears[name].weight.double(),
                                   linears[name].bias.double()
                                   if linears[name].bias is not None else None)
                    got = fn(x).double()
                    rel_err = max(rel_err, ((got - ref).norm(dim=1) / ref.norm(dim=1)).max().item())
                    # the last row alone against the same row inside the batch
                    alone = fn(x[-1:].contiguous()).double()
                    batch_diff = max(batch_diff, (got[-1:] - alone).abs().max().item())
                row[kernel] = {"ms": seconds * 1e3, "max_rel_err": rel_err,
                               "row_alone_vs_in_batch": batch_diff}
            out["batches"][str(batch)] = row
    return out


def render(report: dict) -> str:
    dev = report["device"]
    lines = [f"# Linear kernels on CPU: {report['model']}, {report['dtype']}, {dev['cpu']} "
             f"({dev['cpu_class']}, {dev['cpu_count']} cores)", "",
             f"commit {report['git'].get('commit', '?')[:10]}; torch "
             f"{report['versions']['torch']}; {dev['torch_threads']} threads; decoder layer "
             f"{report['layer']}'s seven linears (q, k, v, o, gate, up, down) with its real "
             "weights, fed the hidden states of the prompt's last tokens; ms is the sum over "
             "the seven; relative error is per row, against float64", "",
             "| batch | kernel | ms | vs onednn | max relative error | row alone vs in batch |",
             "|---:|---|---:|---:|---:|---:|"]
    for batch, row in report["batches"].items():
        for kernel, r in row.items():
            lines.append(f"| {batch} | {kernel} | {r['ms']:.2f} | "
                         f"{row['onednn']['ms'] / r['ms']:.2f}x | {r['max_rel_err']:.1e} | "
                         f"{r['row_alone_vs_in_batch']:.1e} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    model = ap.add_mutually_exclusive_group()
    model.add_argument("--bench-model", default="qwen2.5-coder-1.5b")
    model.add_argument("--pretrained")
    ap.add_argument("--layer", type=int, default=0)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", default="results/linear_kernels")
    args = ap.parse_args()
    if args.pretrained:
        args.bench_model = None
    load_args, head = report_head(argparse.Namespace(**vars(args), dtype="float32", tokens=None))
    del head["tokens"]
    report = run(load_args["pretrained"], args.layer, args.reps)
    report.update(head, layer=args.layer, reps=args.reps)
    write_report(report, args.out, render)


if __name__ == "__main__":
    main()
