"""``python -m lm_eval_softreason.bench ...``: the ``softreason-bench`` command."""

from lm_eval_softreason.bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
