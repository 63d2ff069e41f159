"""The results layout, crash-safe per-sample records, and the aggregate metrics of a cell.

One cell = (model, task, method). Its files, under ``results/<model>/<task>/``:

- ``<method>.samples.jsonl``: one JSON line per finished problem, appended with flush + fsync
  (a killed run loses at most the problem in flight; a torn last line is dropped on resume).
  Gzipped to ``<method>.samples.jsonl.gz`` once the cell is complete, if large.
- ``<method>.json``: the self-contained cell record (metrics computed from the samples, n,
  settings, provenance), rewritten atomically after every problem, ``complete`` once all are in.

Everything here is plain Python (no torch, no lm-eval): the report reads these files only.
"""

from __future__ import annotations

import gzip
import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CELL_FORMAT = 1
GZIP_ABOVE_BYTES = 1_000_000
# per-problem cost means in the cell metrics; generate_s is timed by the runner around the
# model's generate_until (the same clock for every backend), wall_s is softreason's own
COST_KEYS = ("gen_tokens", "prompt_tokens", "candidates", "rounds", "wall_s", "generate_s")


@dataclass(frozen=True)
class CellPaths:
    json: Path
    samples: Path
    samples_gz: Path

    def existing_samples(self) -> Path | None:
        """The samples file on disk (plain while running, gz once compressed), or None."""
        for path in (self.samples, self.samples_gz):
            if path.exists():
                return path
        return None


def cell_paths(results_dir: str | os.PathLike, model: str, task: str, method: str) -> CellPaths:
    base = Path(results_dir) / model / task
    return CellPaths(base / f"{method}.json", base / f"{method}.samples.jsonl",
                     base / f"{method}.samples.jsonl.gz")


# --------------------------------------------------------------------------------- samples


def _parse_lines(lines: Iterable[str], source: Path) -> tuple[list[dict], bool]:
    """(records, torn): records of every complete line; ``torn`` when the last line is cut off
    (a run killed mid-write). A bad line anywhere else is corruption and raises."""
    lines = list(lines)
    records, torn = [], False
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                torn = True
            else:
                raise ValueError(f"{source}: line {i + 1} is not JSON; the file is corrupt "
                                 "(move it away to recompute the cell)") from None
    return records, torn


def read_samples(paths: CellPaths) -> list[dict]:
    """The cell's per-sample records, first record per doc_id, ordered by doc_id ([] if none)."""
    source = paths.existing_samples()
    if source is None:
        return []
    opener = gzip.open if source.suffix == ".gz" else open
    with opener(source, "rt", encoding="utf-8") as fh:
        records, _ = _parse_lines(fh.read().split("\n"), source)
    by_doc: dict[int, dict] = {}
    for record in records:
        by_doc.setdefault(int(record["doc_id"]), record)
    return [by_doc[k] for k in sorted(by_doc)]


def prepare_for_append(paths: CellPaths) -> list[dict]:
    """Make the plain samples file appendable and return its records: a gzipped file is
    unpacked (the cell is being extended), a torn last line is dropped."""
    if not paths.samples.exists() and paths.samples_gz.exists():
        with gzip.open(paths.samples_gz, "rt", encoding="utf-8") as fh:
            _write_atomic(paths.samples, fh.read())
        paths.samples_gz.unlink()
    if paths.samples.exists():
        text = paths.samples.read_text(encoding="utf-8")
        records, torn = _parse_lines(text.split("\n"), paths.samples)
        if torn or (text and not text.endswith("\n")):
            _rewrite_samples(paths, records)
    return read_samples(paths)


def _rewrite_samples(paths: CellPaths, rows: list[dict]) -> None:
    """Replace the plain samples file with ``rows``, atomically (a kill keeps the old file)."""
    _write_atomic(paths.samples, "".join(_dumps(r) + "\n" for r in rows))


def append_sample(paths: CellPaths, record: dict) -> None:
    """Append one record durably (flush + fsync): after this returns, a kill loses nothing."""
    paths.samples.parent.mkdir(parents=True, exist_ok=True)
    with open(paths.samples, "a", encoding="utf-8") as fh:
        fh.write(_dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def compress_if_large(paths: CellPaths, threshold: int = GZIP_ABOVE_BYTES) -> None:
    """Gzip a finished cell's samples when they exceed ``threshold`` bytes."""
    if paths.samples.exists() and paths.samples.stat().st_size > threshold:
        tmp = paths.samples_gz.with_name(paths.samples_gz.name + ".tmp")
        with open(paths.samples, "rb") as src, gzip.open(tmp, "wb") as dst:
            dst.write(src.read())
        os.replace(tmp, paths.samples_gz)
        paths.samples.unlink()


# --------------------------------------------------------------------------------- metrics


def _finite(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def mean_and_stderr(values: list[float]) -> tuple[float | None, float | None]:
    """(mean, standard error of the mean) as lm-eval computes them (sample std / sqrt(n));
    stderr is None below two values, both None for no values."""
    if not values:
        return None, None
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)


def aggregate(records: list[dict]) -> dict[str, Any]:
    """Cell metrics from per-sample records: ``n``, ``acc`` and ``acc_stderr``, ``coverage``
    (over the records that have one), and the mean of each COST_KEYS entry per problem
    (None where no record has it). Wall sums are kept too, for ratios."""
    acc, acc_stderr = mean_and_stderr([float(r["acc"]) for r in records])
    metrics: dict[str, Any] = {"n": len(records), "acc": acc, "acc_stderr": acc_stderr}
    covered = [v for r in records if (v := _finite(r.get("coverage"))) is not None]
    metrics["coverage"], metrics["coverage_stderr"] = mean_and_stderr(covered)
    metrics["coverage_n"] = len(covered)
    for key in COST_KEYS:
        values = [v for r in records if (v := _finite(r.get(key))) is not None]
        metrics[key] = sum(values) / len(values) if values else None
    metrics["generate_s_total"] = sum(_finite(r.get("generate_s")) or 0.0 for r in records)
    sources = sorted({r.get("gen_tokens_source") for r in records if r.get("gen_tokens_source")})
    metrics["gen_tokens_source"] = "+".join(sources) or None
    return metrics


# --------------------------------------------------------------------------------- cells


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, default=str, allow_nan=False)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_cell(paths: CellPaths, cell: dict) -> None:
    """Write the cell JSON atomically (a kill leaves the previous version intact)."""
    _write_atomic(paths.json, json.dumps(cell, indent=2, ensure_ascii=False, default=str,
                                         allow_nan=False) + "\n")


def git_commits(prov: dict) -> list[dict]:
    """Every commit whose run wrote a cell (cells from before ``git_commits`` recorded one ``git``)."""
    return [g for g in (prov.get("git_commits") or [prov.get("git")]) if g]


def devices(prov: dict) -> list[dict]:
    """Every machine whose run wrote a cell: a resumed cell can mix CPU classes, whose floats
    differ (cells from before ``devices`` recorded only the last run's ``device``)."""
    return [d for d in (prov.get("devices") or [prov.get("device")]) if d]


def library_versions(prov: dict) -> list[dict]:
    """Every set of library versions a run that wrote a cell used: a fresh environment can pick
    up a newer transformers between chunks (cells from before ``versions_seen`` recorded only
    the last run's ``versions``, so an earlier chunk's are unknown)."""
    return [v for v in (prov.get("versions_seen") or [prov.get("versions")]) if v]


def record_device(record: dict, cell: dict) -> dict | None:
    """The machine that decoded one problem: the record's own ``device``, else the cell's only
    machine; None when the cell ran on several and the record predates per-record devices."""
    if record.get("device"):
        return record["device"]
    machines = devices(cell.get("provenance") or {})
    return machines[0] if len(machines) == 1 else None


def lend_only_machine(paths: CellPaths, cell: dict | None, device: dict) -> int:
    """Before a cell gains a second machine, stamp its records that name none with the cell's
    only machine: once two are listed, ``record_device`` can no longer tell which one decoded
    them. Call on a plain (appendable) samples file; returns how many records were stamped."""
    machines = devices((cell or {}).get("provenance") or {})
    if len(machines) != 1 or machines[0] == device or not paths.samples.exists():
        return 0
    rows, _ = _parse_lines(paths.samples.read_text(encoding="utf-8").split("\n"), paths.samples)
    lent = [r for r in rows if not r.get("device")]
    for record in lent:
        record["device"] = machines[0]
    if lent:
        _rewrite_samples(paths, rows)
    return len(lent)


PLANNED_FILE = "planned.json"


def add_planned(results_dir: str | os.PathLike, model: str,
                cells: Iterable[tuple[str, str, int]]) -> None:
    """Remember the (method, task, limit) cells asked of ``model``, so the report can list a
    cell that never started instead of dropping its row."""
    path = Path(results_dir) / model / PLANNED_FILE
    known = {tuple(c) for c in read_planned(results_dir).get(model, [])}
    known |= {(m, t, int(n)) for m, t, n in cells}
    _write_atomic(path, json.dumps({"cells": sorted(list(c) for c in known)}, indent=1) + "\n")


def read_planned(results_dir: str | os.PathLike) -> dict[str, list[tuple[str, str, int]]]:
    """{model: [(method, task, limit), ...]} from every ``<model>/planned.json``."""
    planned = {}
    for path in sorted(Path(results_dir).glob(f"*/{PLANNED_FILE}")):
        try:
            cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        planned[path.parent.name] = [(m, t, int(n)) for m, t, n in cells]
    return planned


def read_cell(path: Path) -> dict:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def iter_cells(results_dir: str | os.PathLike) -> Iterator[tuple[Path, dict]]:
    """(path, cell) for every ``<model>/<task>/<method>.json`` cell under ``results_dir``."""
    root = Path(results_dir)
    for path in sorted(root.glob("*/*/*.json")):
        try:
            cell = read_cell(path)
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(cell, dict) and cell.get("format") == CELL_FORMAT and "method" in cell:
            yield path, cell


def samples_paths_for(cell_json: Path) -> CellPaths:
    """The CellPaths of the cell whose JSON is ``cell_json``."""
    method = cell_json.name[: -len(".json")]
    return CellPaths(cell_json, cell_json.with_name(f"{method}.samples.jsonl"),
                     cell_json.with_name(f"{method}.samples.jsonl.gz"))


def clean_floats(obj: Any) -> Any:
    """``obj`` with NaN/inf floats replaced by None (strict JSON), recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: clean_floats(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_floats(v) for v in obj]
    return obj
