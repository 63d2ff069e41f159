"""Several processes: torchrun / accelerate launch with 2 CPU processes (gloo) give the metrics
of a single-process run; lm-eval's rank padding is neither run nor counted; task repeats get
their own seeds."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from lm_eval.api.instance import Instance

from lm_eval_softreason import distributed
from lm_eval_softreason.lm import SoftReasonLM, _unique_requests, request_seed

REPO = Path(__file__).resolve().parents[1]
MODEL_ARGS = "dtype=float32,device=cpu,k=2,max_rounds=2,verifier_max_gen_toks=8"


def _instance(i: int, repeats: int = 1) -> Instance:
    return Instance("generate_until", {"question": f"q{i}"},
                    (f"Question: {i} + 1 = ?\nAnswer:", {"until": ["Question:"], "max_gen_toks": 8}),
                    i, ("t", i, repeats))


def test_padding_copies_are_answered_from_their_original():
    a, b = _instance(0), _instance(1)
    unique, source = _unique_requests([a, b, b, b])  # lm-eval pads a short rank with its last
    assert unique == [(a, 0), (b, 0)]
    assert source == [0, 1, 1, 1]


def test_repeats_are_distinct_runs_and_padding_reuses_them():
    r = _instance(0, repeats=3)
    unique, source = _unique_requests([r, r, r, r, r, r])  # 3 repeats + 3 padding copies
    assert unique == [(r, 0), (r, 1), (r, 2)]
    assert source == [0, 1, 2, 0, 1, 2]
    seeds = {request_seed(1234, r.args[0], k) for k in range(3)}
    assert len(seeds) == 3
    assert request_seed(1234, r.args[0], 0) == request_seed(1234, r.args[0])


def test_padded_request_list_is_not_run_or_counted_twice(peaked_dir):
    lm = SoftReasonLM(pretrained=str(peaked_dir), dtype="float32", device="cpu", search="greedy")
    a, b = _instance(0), _instance(1)
    out = lm.generate_until([a, b, b, b], disable_tqdm=True)
    assert len(out) == 4 and out[1] is out[2] is out[3]
    assert lm.totals["requests"] == 2
    assert lm.totals["gen_tokens"] == out[0].stats["gen_tokens"] + out[1].stats["gen_tokens"]


def test_sum_totals_and_rank_device():
    assert distributed.sum_totals([{"requests": 3, "wall_s": 1.5}, {"requests": 2, "wall_s": 1.0}]) \
        == {"requests": 5, "wall_s": 2.5}
    assert distributed.rank_device("cpu", object()) == "cpu"
    assert distributed.rank_device("auto", None) == "auto"


def _lm_eval_args(model_dir: Path, out: Path) -> list[str]:
    # 5 problems over 2 ranks: 3 and 2, so rank 1 gets one padding request
    return ["-m", "lm_eval", "--model", "softreason", "--model_args",
            f"pretrained={model_dir},{MODEL_ARGS}", "--tasks", "softreason_smoke",
            "--limit", "5", "--gen_kwargs", "max_gen_toks=12", "--output_path", str(out),
            "--log_samples"]


def _free_port() -> str:
    """A TCP port the OS has just handed out as free, for the launcher's rendezvous (a fixed
    port collides with another run or a port still in TIME_WAIT)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, cwd=REPO)


def _results(out: Path) -> tuple[dict, list[dict]]:
    [results] = list(out.rglob("results_*.json"))
    [samples] = list(out.rglob("samples_softreason_smoke_*.jsonl"))
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    return json.loads(results.read_text()), sorted(rows, key=lambda r: r["doc_id"])


@pytest.fixture(scope="module")
def single_process(peaked_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    proc = _run([sys.executable, *_lm_eval_args(peaked_dir, out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _results(out)


def _assert_same_as_single(single, multi) -> None:
    (one, one_rows), (two, two_rows) = single, multi
    metrics = {k: v for k, v in one["results"]["softreason_smoke"].items() if "wall_s" not in k}
    # lm-eval gathers the ranks' per-sample scores in rank order, so its standard errors see a
    # permuted list: float sums and bootstrap resamples differ in the last digits. Every point
    # metric and every response must be identical; the errors only agree to rounding.
    errors = {k for k in metrics if k.endswith("_stderr,none") and isinstance(metrics[k], float)}
    assert {k: two["results"]["softreason_smoke"][k] for k in metrics.keys() - errors} == \
        {k: metrics[k] for k in metrics.keys() - errors}
    for k in errors:
        assert two["results"]["softreason_smoke"][k] == pytest.approx(metrics[k], rel=0.01), k
    assert [r["doc_id"] for r in two_rows] == [0, 1, 2, 3, 4]
    # (lm-eval appends the padding copy's response to the instance it copied: a second entry)
    assert [r["resps"][0][0] for r in two_rows] == [r["resps"][0][0] for r in one_rows]
    assert [r["filtered_resps"] for r in two_rows] == [r["filtered_resps"] for r in one_rows]
    # run totals are the sum over ranks, without rank 1's padding request
    for key in ("requests", "gen_tokens", "prompt_tokens", "candidates", "rounds"):
        assert two["config"]["softreason_totals"][key] == one["config"]["softreason_totals"][key]
    assert two["config"]["softreason_totals"]["requests"] == 5
    assert two["config"]["softreason_world_size"] == 2


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(peaked_dir, single_process, tmp_path):
    proc = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                 "--master_port", _free_port(), *_lm_eval_args(peaked_dir, tmp_path)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_as_single(single_process, _results(tmp_path))


@pytest.mark.slow
def test_accelerate_launch_two_processes_equal_one(peaked_dir, single_process, tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert accelerate, "the accelerate CLI ships with the accelerate dependency"
    # `--cpu` would start a single process (accelerate wants MPI for several CPU processes);
    # `--multi_gpu` launches through torchrun, and the model falls back to gloo without GPUs
    proc = _run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                 "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
                 _free_port(), *_lm_eval_args(peaked_dir, tmp_path)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_as_single(single_process, _results(tmp_path))
