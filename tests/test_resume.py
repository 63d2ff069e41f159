"""Kill and resume: a stock ``lm_eval --use_cache`` run SIGKILLed half-way, started again with
the same settings, recomputes nothing it finished and ends with the uninterrupted results."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from lm_eval_softreason.cache import cache_table_name

REPO = Path(__file__).resolve().parents[1]
MODEL_ARGS = "dtype=float32,device=cpu,k=2,max_rounds=2,verifier_max_gen_toks=16"
N = 8  # softreason_smoke has 8 problems
KILL_AFTER = 3
# `lm_eval ...` that stops for good once KILL_AFTER requests are finished (cached and traced)
# and says so on stdout: the kill lands at that point, not after a guessed sleep
PARKING_CLI = f"""
import sys, threading
from lm_eval_softreason.lm import SoftReasonLM
trace, finished = SoftReasonLM._trace, []

def trace_then_park(self, *args, **kwargs):
    trace(self, *args, **kwargs)  # after the answer went into the cache
    finished.append(1)
    if len(finished) == {KILL_AFTER}:
        print("PARKED", flush=True)
        threading.Event().wait()  # until SIGKILL

SoftReasonLM._trace = trace_then_park
sys.argv[0] = "lm_eval"
from lm_eval.__main__ import cli_evaluate
cli_evaluate()
"""


def _args(model_dir: Path, out: Path, cache: Path, trace: Path) -> list[str]:
    return ["--model", "softreason", "--model_args",
            f"pretrained={model_dir},{MODEL_ARGS},trace_dir={trace}",
            "--tasks", "softreason_smoke", "--gen_kwargs", "max_gen_toks=32",
            "--use_cache", str(cache), "--output_path", str(out), "--log_samples"]


def _cmd(model_dir: Path, out: Path, cache: Path, trace: Path) -> list[str]:
    return [sys.executable, "-m", "lm_eval", *_args(model_dir, out, cache, trace)]


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _lines(trace: Path) -> int:
    path = trace / "trace_rank0.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _cached(cache: Path) -> int:
    with sqlite3.connect(f"{cache}_rank0.db") as db:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
                  if t.startswith("softreason_")]
        assert len(tables) == 1, tables
        return db.execute(f'SELECT COUNT(*) FROM "{tables[0]}"').fetchone()[0]


def _results(out: Path) -> tuple[dict, list]:
    [results] = list(out.rglob("results_*.json"))
    [samples] = list(out.rglob("samples_softreason_smoke_*.jsonl"))
    rows = sorted((json.loads(x) for x in samples.read_text().splitlines()),
                  key=lambda r: r["doc_id"])
    return json.loads(results.read_text())["results"]["softreason_smoke"], rows


@pytest.mark.slow
def test_sigkilled_run_resumes_without_recomputing(peaked_dir, tmp_path):
    # the reference: one uninterrupted run
    ref = subprocess.run(_cmd(peaked_dir, tmp_path / "ref", tmp_path / "ref_cache" / "c",
                              tmp_path / "ref_trace"),
                         capture_output=True, text=True, env=_env(), timeout=900, cwd=REPO)
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert _lines(tmp_path / "ref_trace") == N

    cache, trace1, trace2 = tmp_path / "cache" / "c", tmp_path / "trace1", tmp_path / "trace2"
    proc = subprocess.Popen([sys.executable, "-c", PARKING_CLI,
                             *_args(peaked_dir, tmp_path / "out1", cache, trace1)],
                            env=_env(), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    parked = any(line.strip() == "PARKED" for line in proc.stdout)  # stops reading there
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL and parked, "the run ended before it could be killed"
    assert _lines(trace1) == KILL_AFTER
    finished = _cached(cache)
    assert finished == KILL_AFTER  # answers written as each request finished, not at the end

    again = subprocess.run(_cmd(peaked_dir, tmp_path / "out2", cache, trace2),
                           capture_output=True, text=True, env=_env(), timeout=900, cwd=REPO)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _lines(trace2) == N - finished  # only the unfinished requests ran again
    assert _cached(cache) == N

    (ref_metrics, ref_rows), (metrics, rows) = _results(tmp_path / "ref"), _results(tmp_path / "out2")
    timing = ("wall_s",)
    assert {k: v for k, v in metrics.items() if not k.startswith(timing)} == \
           {k: v for k, v in ref_metrics.items() if not k.startswith(timing)}
    assert [r["resps"] for r in rows] == [r["resps"] for r in ref_rows]
