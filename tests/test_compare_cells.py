"""benchmarks/compare_cells.py: the check tables name each cell's machine and engine, and
count identical returned text as well as identical answers."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "compare_cells.py"


@pytest.fixture(scope="module")
def compare_cells():
    spec = importlib.util.spec_from_file_location("compare_cells", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cell(folder: Path, cpu: str, cpu_class: str, cpu_linear: str, responses: list[str]) -> None:
    folder.mkdir(parents=True)
    device = {"device": "cpu", "cpu": cpu, "cpu_class": cpu_class, "cpu_count": 2}
    (folder / "softreason.json").write_text(json.dumps({
        "model_args": {"preset": "v3", "backend": "hf", "cpu_linear": cpu_linear, "batch_size": 10},
        "provenance": {"devices": [device]}}))
    lines = [{"doc_id": i, "acc": float(text.endswith("4")), "coverage": 1.0, "gen_tokens": 10,
              "prompt_tokens": 5, "stats": {"rounds": 1}, "response": text,
              "answer": text[-1]} for i, text in enumerate(responses)]
    (folder / "softreason.samples.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in lines))


def test_compare_names_machines_and_counts_identical_text(compare_cells, tmp_path):
    first = tmp_path / "results" / "m" / "svamp"
    other = tmp_path / "check" / "m" / "svamp"
    _cell(first, "Intel Xeon", "AVX512", "auto", ["so 4", "so 5", "thus 4"])
    # same answers everywhere, one text differs: the two counts must differ
    _cell(other, "AMD EPYC", "AVX512-BF16", "aten", ["so 4", "so 5", "hence 4"])
    table = compare_cells.compare(first, ["softreason", f"softreason:{other}"])
    assert "- `softreason`: cpu (Intel Xeon, AVX512, 2 cores); preset=v3, backend=hf, " \
           "cpu_linear=auto, batch_size=10" in table
    assert f"- `softreason [{tmp_path / 'check'}]`: cpu (AMD EPYC, AVX512-BF16, 2 cores); " \
           "preset=v3, backend=hf, cpu_linear=aten" in table
    assert "Same final answer on the shared problems: " \
           f"`softreason` = `softreason [{tmp_path / 'check'}]`: 3." in table
    assert "Same returned text, character for character: " \
           f"`softreason` = `softreason [{tmp_path / 'check'}]`: 2." in table
