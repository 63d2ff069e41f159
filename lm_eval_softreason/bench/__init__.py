"""Leaderboard benchmark: run methods x tasks through lm-eval, resume, report.

``runner`` (the ``softreason-bench`` command) runs the matrix one problem at a time and keeps
every finished problem on disk; ``records`` owns the results layout and the aggregate metrics;
``report`` renders ``results/LEADERBOARD.md`` and the Pareto plots from those files only;
``regression`` records and checks the pinned small eval; ``bench_model`` fetches and converts
the named bench models. Nothing heavy is imported here.
"""
