"""Slow: our own regression eval (results/regression.json: embedded model, softreason defaults
but max_rounds=2, 3 svamp problems) rerun exactly as a user's CI would run theirs; any changed answer or a token
count off by more than 2% fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # ~6.5 min on 2 quiet AVX2 cores
REPO = Path(__file__).resolve().parents[1]


def test_pinned_regression_eval_reproduces_the_recorded_answers(data_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "LM_EVAL_SOFTREASON_DATA": str(data_dir)}
    out = subprocess.run([sys.executable, "-m", "lm_eval_softreason.bench", "regression",
                          "--check", "--file", "results/regression.json"],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=1800)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "regression check passed" in out.stdout
