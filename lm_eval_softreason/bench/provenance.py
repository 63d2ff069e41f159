"""Where a result came from: package and library versions, git commit, device, date, command."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import __version__

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the checkout (or site-packages)


def git_commit(root: Path = PACKAGE_ROOT) -> dict[str, Any] | None:
    """{"commit", "dirty"} of the checkout the package runs from (dirty: the package or tasks
    differ from the commit, untracked files included); None outside a git checkout."""
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                 "--", "lm_eval_softreason", "tasks"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status)}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: Any) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"device": str(device), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
                            "torch_threads": torch.get_num_threads()}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(str(device)))
    return info


def versions() -> dict[str, str]:
    import lm_eval
    import torch
    import transformers

    return {"lm_eval_softreason": __version__, "lm_eval": lm_eval.__version__,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed: ``softreason-bench ...`` or ``python -m ...``."""
    argv = sys.argv if argv is None else argv
    prog = Path(argv[0]).name if argv else "softreason-bench"
    if prog in ("__main__.py", "runner.py", "-m", "-c"):
        prog = "python -m lm_eval_softreason.bench"
    return " ".join([prog, shlex.join(argv[1:])]).strip()


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
