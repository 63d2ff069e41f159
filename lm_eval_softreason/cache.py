"""Keep lm-eval's request cache (``--use_cache``) apart per model configuration.

lm-eval's ``CachingLM`` keys each answer on sha256(method, context, gen_kwargs) only: not the
model, not its settings. A run with another search budget or verifier would silently get the
answers of an earlier run. ``CachingLM`` hands the wrapped model a ``CacheHook`` whose
``dbdict`` is the very ``SqliteDict`` it reads and writes; ``isolate_cache`` points that object
at a table of its own for the configuration's fingerprint, so configurations never see each
other's answers and a repeated configuration reuses its own.
"""

from __future__ import annotations

import hashlib
from typing import Any

TABLE_PREFIX = "softreason_"


def cache_table_name(fingerprint: str) -> str:
    """The sqlite table that holds the cached answers of one configuration fingerprint."""
    return TABLE_PREFIX + hashlib.sha256(fingerprint.encode("utf-8")).hexdigest()[:32]


def isolate_cache(cache_hook: Any, fingerprint: str) -> None:
    """Make the cache behind ``cache_hook`` use the table for ``fingerprint`` (created if new).

    ``cache_hook`` is what lm-eval passes to ``LM.set_cache_hook``; without a cache (its
    ``dbdict`` is None, as when ``--use_cache`` is off) this does nothing. Call it from
    ``set_cache_hook``, before any request runs. Returns None.
    """
    if not isinstance(fingerprint, str) or not fingerprint:
        raise ValueError(f"fingerprint must be a non-empty string, got {fingerprint!r}")
    dbdict = getattr(cache_hook, "dbdict", None)
    if dbdict is None:
        return
    table = cache_table_name(fingerprint)
    # SqliteDict builds every statement from .tablename at call time, so switching it switches
    # the table for CachingLM's reads and writes alike; the table must exist first (SqliteDict
    # creates only the one named at construction). Same statement SqliteDict itself runs.
    dbdict.conn.execute(
        f'CREATE TABLE IF NOT EXISTS "{table}" (key TEXT PRIMARY KEY, value BLOB)'
    )
    dbdict.conn.commit()
    dbdict.tablename = table
