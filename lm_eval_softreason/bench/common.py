"""What the bench modules share: the settings hash and readable settings diff, the default
data directory, and quieter lm-eval logging.

Imported by ``runner``, ``regression`` and ``cli``; imports none of them, so the bench's
imports run one way: ``cli`` -> ``regression`` -> ``runner`` -> ``common``/``records``/...
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any

from .provenance import PACKAGE_ROOT


def settings_hash(settings: Any) -> str:
    """Short sha256 of ``settings`` (any JSON-able object, keys sorted)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def flatten(nested: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: dotted keys, for diffs of nested settings."""
    out = {}
    for key, value in nested.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def settings_diff(previous: dict | None, settings: dict, most: int = 8) -> str:
    """The first ``most`` differing keys of a cell's recorded settings and ``settings``, as
    ``key: old -> new``; says so when there are no recorded settings to compare."""
    old = (previous or {}).get("settings") or {}
    if not old:
        return "the cell JSON is missing, the samples carry another settings hash"
    flat_old, flat_new = flatten(old), flatten(settings)
    keys = sorted(k for k in set(flat_old) | set(flat_new) if flat_old.get(k) != flat_new.get(k))
    return "; ".join(f"{k}: {flat_old.get(k)!r} -> {flat_new.get(k)!r}" for k in keys[:most])


def default_data_dir() -> str | None:
    """``$LM_EVAL_SOFTREASON_DATA``, else ``../shared/data`` next to the checkout, else None."""
    env = os.environ.get("LM_EVAL_SOFTREASON_DATA")
    if env:
        return env
    candidate = PACKAGE_ROOT.parent / "shared" / "data"
    return os.path.relpath(candidate) if candidate.is_dir() else None


class _DropNoise(logging.Filter):
    """lm-eval repeats these on every call (here: every problem); the cell JSON has both."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("Custom kwargs can be passed" in message
                    or "specified through cli, these settings will update" in message)


def quiet_lm_eval(verbose: bool) -> None:
    """lm-eval's logger at WARNING (unless ``verbose``), without its per-call repeats."""
    logger = logging.getLogger("lm_eval")
    if not verbose:
        logger.setLevel(logging.WARNING)
    for name in ("lm_eval", "lm_eval.api.task", "lm_eval.evaluator"):
        logging.getLogger(name).addFilter(_DropNoise())
