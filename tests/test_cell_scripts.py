"""The cell scripts in benchmarks/: compare_cells (check tables name each cell's machine and
engine, and count identical text as well as answers) and stamp_devices (records get the machine
their cell's git history settles)."""

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
INTEL = {"device": "cpu", "cpu": "Intel Xeon", "cpu_class": "AVX512", "cpu_count": 2}
AMD = {"device": "cpu", "cpu": "AMD EPYC", "cpu_class": "AVX512-BF16", "cpu_count": 2}


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def compare_cells():
    return _script("compare_cells")


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


def _commit(repo: Path, cell: Path, devices: list[dict], records: list[dict]) -> None:
    cell.write_text(json.dumps({"provenance": {"devices": devices}}))
    cell.with_name("sc@10.samples.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in records))
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
                   cwd=repo, check=True)


def test_stamp_devices_follows_the_cells_history(tmp_path, monkeypatch):
    stamp_devices = _script("stamp_devices")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    cell = tmp_path / "results" / "m" / "svamp" / "sc@10.json"
    cell.parent.mkdir(parents=True)
    # a superseded cell once kept at this path, on another machine, then moved away
    _commit(tmp_path, cell, [AMD], [{"doc_id": 0, "finished": "old"}])
    subprocess.run(["git", "rm", "-rq", "results"], cwd=tmp_path, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "rm"],
                   cwd=tmp_path, check=True)
    cell.parent.mkdir(parents=True)
    rows = [{"doc_id": i} for i in range(6)]
    _commit(tmp_path, cell, [INTEL], rows[:2])           # first run: one machine
    _commit(tmp_path, cell, [INTEL], rows[:3])           # resumed there: still settled
    _commit(tmp_path, cell, [INTEL, AMD], rows[:5])      # resumed on another: the one added
    rows[4] = {"doc_id": 4, "device": INTEL}             # a record's own device is kept
    _commit(tmp_path, cell, [INTEL, AMD], rows[:5])
    cell.with_name("sc@10.samples.jsonl").write_text(   # uncommitted: nothing settles it
        "".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.chdir(tmp_path)
    assert stamp_devices.stamp(cell) == (4, 1)
    stamped = [json.loads(line) for line in
               cell.with_name("sc@10.samples.jsonl").read_text().splitlines()]
    assert [r.get("device") for r in stamped] == [INTEL, INTEL, INTEL, AMD, INTEL, None]
    assert stamp_devices.stamp(cell) == (0, 1)  # idempotent
    # a device the history contradicts is left alone, unless asked to replace it: then the
    # history wins (record 4 was added by the commit that added AMD)
    rows[0]["device"] = AMD
    cell.with_name("sc@10.samples.jsonl").write_text(
        "".join(json.dumps({**r, "device": r.get("device") or s.get("device")}) + "\n"
                for r, s in zip(rows, stamped)))
    assert stamp_devices.stamp(cell) == (0, 1)
    assert stamp_devices.stamp(cell, replace=True) == (2, 1)
    fixed = [json.loads(line) for line in
             cell.with_name("sc@10.samples.jsonl").read_text().splitlines()]
    assert [r.get("device") for r in fixed] == [INTEL, INTEL, INTEL, AMD, AMD, None]
