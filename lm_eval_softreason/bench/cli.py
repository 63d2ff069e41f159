"""``softreason-bench [run|report|regression|fetch-model] ...``: the command, dispatching to the
subcommand modules (``runner``, ``report``, ``regression``, ``bench_model``); nothing imports
this module back.

``run`` (the default) runs methods x tasks x --limit through lm-eval, resumably; ``report``
renders LEADERBOARD.md and the Pareto plots; ``regression --record|--check`` the pinned small
eval; ``fetch-model NAME`` fetches and converts a named bench model ahead of a run.
"""

from __future__ import annotations

import sys

from . import provenance


def main(argv: list[str] | None = None) -> int:
    """Run the subcommand named first in ``argv`` (default ``sys.argv[1:]``); returns the exit
    code."""
    invoked = provenance.command_line(sys.argv if argv is None else ["softreason-bench", *argv])
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else ""
    if command == "report":
        from .report import main as report_main

        return report_main(argv[1:])
    if command == "regression":
        from .regression import main as regression_main

        return regression_main(argv[1:])
    if command == "fetch-model":
        from .bench_model import main as fetch_main

        return fetch_main(argv[1:])
    if command == "run":
        argv = argv[1:]
    from .runner import run

    try:
        return run(argv, invoked)
    except ValueError as err:
        print(f"softreason-bench: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
