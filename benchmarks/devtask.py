"""What the development sweeps share: which model (a bench model, a path or the embedded one),
and running a dev task's exact lm-eval requests (chat template, gen_prefix) through a sweep's
own handler instead of the model's ``generate_until``. Not a script."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

DEV_TASKS = ("svamp_dev", "gsm8k_dev")


def add_model_options(ap: argparse.ArgumentParser) -> None:
    """--bench-model | --pretrained (default: the embedded model), --model-args."""
    model = ap.add_mutually_exclusive_group()
    model.add_argument("--bench-model")
    model.add_argument("--pretrained")
    ap.add_argument("--model-args", default="", help="extra softreason model_args (k=, dtype=)")


def load_lm(args: argparse.Namespace) -> tuple[Any, Any]:
    """(model spec, SoftReasonLM) for the options ``add_model_options`` added."""
    from lm_eval.utils import simple_parse_args_string

    from lm_eval_softreason.bench.runner import model_spec
    from lm_eval_softreason.lm import SoftReasonLM

    spec = model_spec(args.pretrained, args.bench_model)
    return spec, SoftReasonLM(**{**spec.load_args, **simple_parse_args_string(args.model_args)})


def run_requests(lm: Any, task: str, handler: Callable[[list], list[str]], *,
                 limit: int | None = None, samples: list[int] | None = None) -> None:
    """Build ``task``'s requests as ``softreason-bench`` would (chat template on) for the
    first ``limit`` docs or the doc ids ``samples``, and hand them to ``handler`` (which
    returns one string per request; lm-eval's scores of those strings are discarded)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from lm_eval_softreason import _hook
    from lm_eval_softreason.bench.runner import default_data_dir

    lm.generate_until = lambda requests, disable_tqdm=False: handler(requests)
    _hook.install()
    metadata = {"data_dir": default_data_dir()} if default_data_dir() else {}
    tm = TaskManager(include_defaults=False, include_path=[_hook.tasks_dir()], metadata=metadata)
    lm_eval.simple_evaluate(model=lm, tasks=[task], limit=limit,
                            samples={task: samples} if samples is not None else None,
                            apply_chat_template=True, task_manager=tm, log_samples=False,
                            bootstrap_iters=0)
