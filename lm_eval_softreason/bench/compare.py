"""Paired comparisons of two leaderboard cells on the problems both recorded: the right/wrong
split with its exact McNemar p, answer agreement, and cost ratios.

A cell here is a dict with ``"_records"``: {doc_id: per-problem record} (``report.load_cells``
builds them); nothing here reads files, so ``report`` and ``paper`` can both use it.
"""

from __future__ import annotations

import math

from . import records
from .provenance import describe_device


def shared_ids(a: dict, b: dict) -> list[int]:
    """The doc ids both cells recorded: every comparison between two cells is on these."""
    return sorted(set(a["_records"]) & set(b["_records"]))


def relative_cost(cell: dict, reference: dict) -> tuple[float | None, float | None, int]:
    """(tokens ratio, time ratio, problems timed) of ``cell`` over ``reference``, summed over
    the doc ids both recorded; None where either lacks the numbers. Time pairs only problems
    that both cells decoded on the same machine (a resumed cell can mix CPU classes, whose
    speeds differ by up to 2x), and says over how many."""
    shared = shared_ids(cell, reference)
    timed = [i for i in shared if _same_machine(cell, reference, i)]
    time = _ratio(cell, reference, timed, "generate_s")
    return (_ratio(cell, reference, shared, "gen_tokens"), time,
            len(timed) if time is not None else 0)


def _ratio(cell: dict, reference: dict, ids: list[int], key: str) -> float | None:
    mine = [cell["_records"][i].get(key) for i in ids]
    theirs = [reference["_records"][i].get(key) for i in ids]
    if not ids or None in mine + theirs or not sum(theirs):
        return None
    return sum(mine) / sum(theirs)


def _same_machine(a: dict, b: dict, doc_id: int) -> bool:
    machines = [records.record_device(c["_records"][doc_id], c) for c in (a, b)]
    return None not in machines and len({describe_device(m) for m in machines}) == 1


def answer_agreement(a: dict, b: dict) -> tuple[int, int]:
    """(same extracted answer, shared problems) between two cells."""
    shared = shared_ids(a, b)
    same = sum(a["_records"][i].get("answer") == b["_records"][i].get("answer") for i in shared)
    return same, len(shared)


def exact_mcnemar(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p from the discordant pair counts (1.0 when there are none)."""
    from scipy.stats import binomtest

    return float(binomtest(a_only, a_only + b_only, 0.5).pvalue) if a_only + b_only else 1.0


def paired(a: dict, b: dict) -> tuple[int, int, int, float]:
    """(problems only ``a`` got right, only ``b`` got right, shared problems, exact McNemar
    two-sided p) on the problems both cells recorded: a difference in accuracy between two
    cells on the same problems is judged by the discordant pairs, not by overlapping error bars."""
    shared = shared_ids(a, b)
    a_only = sum(a["_records"][i]["acc"] > b["_records"][i]["acc"] for i in shared)
    b_only = sum(b["_records"][i]["acc"] > a["_records"][i]["acc"] for i in shared)
    return a_only, b_only, len(shared), exact_mcnemar(a_only, b_only)


def signed_points(points: float) -> str:
    """``+3.3`` / ``−3.3``: a difference in points with the tables' minus sign (as in "+3 / −5")."""
    return f"{points:+.1f}".replace("-", "−")


def paired_interval(a_only: int, b_only: int, n: int, level: float = 0.95
                    ) -> tuple[float, float, float]:
    """(difference in accuracy a − b, low, high): the paired Wald interval from the discordant
    counts on ``n`` shared problems. A p-value says whether a gap is visible; the interval says
    which gaps the sample rules out, which is what "does not beat" needs."""
    from scipy.stats import norm

    if n <= 0:
        raise ValueError(f"paired_interval needs at least one shared problem, got n={n}")
    diff = (a_only - b_only) / n
    half = norm.ppf(0.5 + level / 2) * math.sqrt(max((a_only + b_only) / n - diff ** 2, 0.0) / n)
    return diff, diff - half, diff + half


def paired_text(a: dict, b: dict, interval: bool = False) -> str:
    """``+a_only / −b_only (p=...)``: the split of :func:`paired`, as the tables print it; with
    ``interval``, also the difference in points and its 95% paired interval."""
    a_only, b_only, n, p = paired(a, b)
    text = f"+{a_only} / −{b_only} (p={p:.2g})"
    if interval and n:
        diff, low, high = paired_interval(a_only, b_only, n)
        text += (f", {signed_points(100 * diff)} points (95% CI {signed_points(100 * low)} "
                 f"to {signed_points(100 * high)})")
    return text
