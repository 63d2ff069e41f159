"""Leaderboard benchmark: run methods x tasks through lm-eval, resume, report.

``cli`` is the ``softreason-bench`` command and only dispatches; ``runner`` runs the matrix
one problem at a time and keeps every finished problem on disk; ``records`` owns the results
layout and the aggregate metrics; ``report`` renders ``results/LEADERBOARD.md`` and the Pareto
plots from those files only, with ``compare`` (paired tests and cost ratios between two cells)
and ``paper`` (the "vs the paper" section); ``regression`` records and checks the pinned small
eval (through ``runner``); ``bench_model`` fetches and converts the named bench models;
``common`` holds what several of them share. Imports run one way (``cli`` -> ``regression`` -> ``runner`` -> the
rest); nothing heavy is imported here.
"""
