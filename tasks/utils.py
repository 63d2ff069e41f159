"""Data loading and metrics for the softreason tasks (the YAMLs next to this file).

Data: each ``load_<task>`` is a ``custom_dataset`` and returns a ``DatasetDict`` with a ``test``
split and a ``fewshot`` split of exemplars. The test data comes from a local data directory
(metadata ``data_dir``, e.g. ``--metadata '{"data_dir": "../shared/data"}'``, else the
environment variable ``LM_EVAL_SOFTREASON_DATA``; relative paths are relative to the current
directory), else from the Hugging Face Hub. Exemplars are the paper's 8 per task, from
``<data_dir>/fewshot/exemplars.json`` only (the paper repository's
``data/few_shot_example.json``; no Hub dataset has them): without that file the ``fewshot``
split is empty and ``--num_fewshot N`` fails with a message saying where to put it
(``PaperExemplars``), rather than silently prompting with other rows.

Every row is normalised to ``question``, ``answer`` (the gold answer as prompt text: "18",
"0.75", "true"), ``answer_type`` ("numeric" or "boolean", for ``answers.extract_answer``) and
``thought`` (an exemplar's reasoning, "" when the source has none); the source's other fields
are kept, and a source field these names would overwrite is kept under another name
(gsm8k's rationale ``answer`` becomes ``solution``).

Metrics: ``process_results`` scores with ``lm_eval_softreason.answers``, the parser the search's
vote uses. Cost metrics come from ``GenerationResult.stats`` and are NaN for models that return
plain strings (lm-eval's ``hf``, ``vllm``, ...): those do not report tokens, and a metric only
sees the response text, not the tokenizer, so there is no faithful token count to give.
"""

import json
import logging
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lm_eval.api.samplers import FirstNSampler

from lm_eval_softreason.answers import answers_match, extract_answer, format_answer, parse_gold

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "LM_EVAL_SOFTREASON_DATA"
EXEMPLARS_FILE = "fewshot/exemplars.json"  # inside the data directory
EXEMPLARS_SOURCE = ("https://github.com/alickzhu/Soft-Reasoning, file data/few_shot_example.json")
COST_METRICS = ("gen_tokens", "prompt_tokens", "candidates", "rounds", "wall_s")
_REASONING_CUE = re.compile(r"^\s*let[’']s think step by step\.?\s*", re.IGNORECASE)


# ---------------------------------------------------------------------------------- normalising


def _number_text(value: Any) -> str:
    return format_answer(parse_gold(value))


def _boolean_text(value: Any) -> str:
    gold = parse_gold(value)
    if not isinstance(gold, bool):
        raise ValueError(f"expected a true/false answer, got {value!r}")
    return format_answer(gold)


def _strip_cue(thought: str) -> str:
    """Exemplar reasoning without its leading "Let's think step by step." (the YAML's
    ``gen_prefix`` already puts the cue before every answer)."""
    return _REASONING_CUE.sub("", thought or "").strip()


def _svamp_row(row: dict) -> dict:
    # paper file: index, question (Body + Question), answer (str);
    # Hub ChilleD/SVAMP: ID, Body, Question, Equation, Answer (float), Type, question_concat
    if "question" in row:
        question = row["question"]
    else:
        question = row.get("question_concat") or f"{row['Body'].strip()} {row['Question'].strip()}"
    equation = row.get("Equation")
    return {
        **row,
        "question": question.strip(),
        "answer": _number_text(row["answer"] if "answer" in row else row["Answer"]),
        "answer_type": "numeric",
        "thought": f"The answer is {equation.strip()}." if equation else "",
    }


def _gsm_hard_row(row: dict) -> dict:
    # paper file: index, question, answer (float); Hub reasoning-machines/gsm-hard: input, code,
    # target (float)
    return {
        **row,
        "question": (row["question"] if "question" in row else row["input"]).strip(),
        "answer": _number_text(row["answer"] if "answer" in row else row["target"]),
        "answer_type": "numeric",
        "thought": "",
    }


def _strategyqa_row(row: dict) -> dict:
    # paper file: index, question ("Term: description. Question?"), thought, answer ("True");
    # Hub ChilleD/StrategyQA: qid, term, description, question, answer (bool), facts
    normalised = {**row, "answer_type": "boolean", "answer": _boolean_text(row["answer"])}
    if "thought" not in row:
        facts = row.get("facts") or ""
        normalised["thought"] = " ".join(facts) if isinstance(facts, list) else str(facts)
    if row.get("term") and row.get("description"):  # the paper's "Term: description. Q?"
        normalised["source_question"] = row["question"]
        normalised["question"] = f"{row['term']}: {row['description']} {row['question']}"
    normalised["question"] = normalised["question"].strip()
    return normalised


def _gsm8k_row(row: dict) -> dict:
    # openai/gsm8k (Hub and the jsonl files alike): question, answer (rationale ending "#### N")
    rationale = row["answer"]
    thought = re.sub(r"<<[^>]*>>", "", rationale.rsplit("####", 1)[0]).strip()
    return {
        **row,
        "question": row["question"].strip(),
        "answer": _number_text(rationale),
        "answer_type": "numeric",
        "thought": thought,
        "solution": rationale,
    }


def _exemplar_row(row: dict, answer_type: str) -> dict:
    # exemplars.json rows: Question, Thought, Answer
    answer = _boolean_text if answer_type == "boolean" else _number_text
    return {
        **row,
        "question": row["Question"].strip(),
        "answer": answer(row["Answer"]),
        "answer_type": answer_type,
        "thought": _strip_cue(row["Thought"]),
    }


# ---------------------------------------------------------------------------------- sources

# (No "from __future__ import annotations" in this file: lm-eval executes it before putting
# it in sys.modules, and dataclasses then cannot resolve string annotations.)
@dataclass(frozen=True)
class Source:
    """Where one benchmark's rows come from and how they are normalised."""

    local_file: str  # test rows, relative to the data directory
    hub_id: str
    hub_config: str | None
    hub_test_split: str
    exemplar_key: str  # key in <data_dir>/fewshot/exemplars.json
    normalise: Callable[[dict], dict]
    answer_type: str


SOURCES: dict[str, Source] = {
    "svamp": Source("svamp/test300.json", "ChilleD/SVAMP", None, "test", "svamp",
                    _svamp_row, "numeric"),
    "gsm_hard": Source("gsm_hard/test.json", "reasoning-machines/gsm-hard", None, "train",
                       "gsm_hard", _gsm_hard_row, "numeric"),
    "strategyqa": Source("strategyqa/test.json", "ChilleD/StrategyQA", None, "test",
                         "strategyqa", _strategyqa_row, "boolean"),
    "gsm8k": Source("gsm8k/test.jsonl", "openai/gsm8k", "main", "test", "gsm8k",
                    _gsm8k_row, "numeric"),
    # Development splits: every default is tuned on these, never on the report splits above.
    # dev700 is SVAMP's 1,000 minus the paper's 300 test questions, which is what the Hub copy
    # keeps as its train split (700 rows).
    "svamp_dev": Source("svamp/dev700.json", "ChilleD/SVAMP", None, "train", "svamp",
                        _svamp_row, "numeric"),
    "gsm8k_dev": Source("gsm8k/train.jsonl", "openai/gsm8k", "main", "train", "gsm8k",
                        _gsm8k_row, "numeric"),
}


def _read_rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in f if line.strip()]
        return json.load(f)


def _hub_rows(hub_id: str, config: str | None, split: str) -> list[dict]:
    import datasets

    return datasets.load_dataset(hub_id, config, split=split).to_list()


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The local data directory: the metadata value, else ``$LM_EVAL_SOFTREASON_DATA``, else None."""
    chosen = data_dir or os.environ.get(DATA_DIR_ENV) or None
    return Path(chosen).expanduser() if chosen else None


def _load_test_rows(name: str, source: Source, data_dir: Path | None) -> list[dict]:
    tried = []
    if data_dir is None:
        tried.append(f"no local data directory (metadata 'data_dir' and ${DATA_DIR_ENV} unset)")
    else:
        path = data_dir / source.local_file
        if path.is_file():
            return _read_rows(path)
        tried.append(f"local file {path.resolve()}: not found")
    hub = f"Hub dataset {source.hub_id!r}" + (
        f" config {source.hub_config!r}" if source.hub_config else ""
    ) + f" split {source.hub_test_split!r}"
    try:
        rows = _hub_rows(source.hub_id, source.hub_config, source.hub_test_split)
    except Exception as err:  # noqa: BLE001 - any failure is reported with what was tried
        tried.append(f"{hub}: {type(err).__name__}: {err}")
        raise FileNotFoundError(
            f"Cannot load the data of task {name!r}. Tried:\n  - " + "\n  - ".join(tried)
            + f"\nFix: point to a local copy containing {source.local_file} with "
            f"--metadata '{{\"data_dir\": \"/path/to/data\"}}' or ${DATA_DIR_ENV}=/path/to/data, "
            f"or allow downloading {source.hub_id!r} from the Hugging Face Hub (network access, "
            "HF_HUB_OFFLINE/HF_DATASETS_OFFLINE unset)."
        ) from err
    if data_dir is not None:
        logger.warning("%s: %s; loaded the %s instead", name, tried[-1], hub)
    return rows


def _load_exemplars(name: str, source: Source, data_dir: Path | None) -> list[dict]:
    """The paper's exemplars for ``source`` from ``<data_dir>/fewshot/exemplars.json``, in the
    paper's order; [] (logged, and refused by ``PaperExemplars`` if few-shot is asked) when
    the file or its entry is missing."""
    if data_dir is None:
        reason = f"no data directory (metadata 'data_dir' and ${DATA_DIR_ENV} unset)"
    elif not (path := data_dir / EXEMPLARS_FILE).is_file():
        reason = f"{path.resolve()} not found"
    elif source.exemplar_key not in (exemplars := _read_rows(path)):
        reason = f"{path.resolve()} has no {source.exemplar_key!r} entry"
    else:
        return [_exemplar_row(row, source.answer_type)
                for row in exemplars[source.exemplar_key]]
    logger.info("%s: no paper exemplars (%s): zero-shot only", name, reason)
    return []


class PaperExemplars(FirstNSampler):
    """lm-eval's ``first_n`` sampler over the paper's exemplars (the ``fewshot`` split, in the
    paper's order) that refuses, naming the fix, to give fewer than asked: without this, an
    empty split fails deep inside lm-eval and a short one silently gives fewer shots."""

    def sample(self, n: int, eval_doc=None, df=None, **kwargs):
        available = len(df or self.df)
        if n > available:
            raise ValueError(
                f"--num_fewshot {n}: the softreason tasks prompt with the Soft Reasoning "
                f"paper's own exemplars only, and {available} are available (8 per task when "
                f"found). They are read from <data_dir>/{EXEMPLARS_FILE} (the paper's "
                f"{EXEMPLARS_SOURCE}); point --metadata '{{\"data_dir\": \"/path/to/data\"}}'"
                f" or ${DATA_DIR_ENV} at a directory that holds it, or run zero-shot."
            )
        return super().sample(n, eval_doc=eval_doc, df=df, **kwargs)


def load_task_data(name: str, data_dir: str | os.PathLike | None = None, **_: Any):
    """``DatasetDict(test=..., fewshot=...)`` of normalised rows for ``SOURCES[name]``.

    ``data_dir`` (the task metadata's, else ``$LM_EVAL_SOFTREASON_DATA``) is tried first, then
    the Hub; other keyword arguments (lm-eval passes all metadata) are ignored.
    """
    import datasets

    source = SOURCES[name]
    resolved = resolve_data_dir(data_dir)
    test = [source.normalise(row) for row in _load_test_rows(name, source, resolved)]
    fewshot = _load_exemplars(name, source, resolved)
    return datasets.DatasetDict(
        test=datasets.Dataset.from_list(test), fewshot=datasets.Dataset.from_list(fewshot)
    )


def load_svamp(**kwargs):
    return load_task_data("svamp", **kwargs)


def load_gsm_hard(**kwargs):
    return load_task_data("gsm_hard", **kwargs)


def load_strategyqa(**kwargs):
    return load_task_data("strategyqa", **kwargs)


def load_gsm8k(**kwargs):
    return load_task_data("gsm8k", **kwargs)


def load_svamp_dev(**kwargs):
    return load_task_data("svamp_dev", **kwargs)


def load_gsm8k_dev(**kwargs):
    return load_task_data("gsm8k_dev", **kwargs)


def load_smoke(**_: Any):
    """Our own 8 arithmetic word problems (softreason_smoke.jsonl next to this file)."""
    import datasets

    rows = _read_rows(Path(__file__).with_name("softreason_smoke.jsonl"))
    test = [{**row, "answer": _number_text(row["answer"]), "answer_type": "numeric",
             "thought": ""} for row in rows]
    return datasets.DatasetDict(test=datasets.Dataset.from_list(test))


# ---------------------------------------------------------------------------------- metrics


def _as_float(value: Any) -> float:
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def coverage(stats: dict | None, gold: Any, answer_type: str) -> float:
    """1.0 if any candidate the search produced has the gold answer, 0.0 if none does; NaN when
    the response carries no candidate list (plain-string models)."""
    candidates = (stats or {}).get("candidate_answers")
    if candidates is None:
        return math.nan
    return float(any(answers_match(c, gold, answer_type) for c in candidates))


def process_results(doc: dict, results: list) -> dict[str, float]:
    """Per-doc metrics: ``acc``, ``coverage`` and the cost metrics in COST_METRICS.

    ``results[0]`` is the response: a ``GenerationResult`` (with ``.stats``) from the
    softreason model, or a plain ``str`` from other models, for which coverage and every cost
    metric are NaN (see the module docstring) and ``nanmean`` leaves them out.
    """
    response = results[0]
    answer_type = doc.get("answer_type", "auto")
    gold = parse_gold(doc["answer"])
    stats = getattr(response, "stats", None)
    scores = {
        "acc": float(answers_match(extract_answer(response, answer_type), gold, answer_type)),
        "coverage": coverage(stats, gold, answer_type),
    }
    for key in COST_METRICS:
        scores[key] = _as_float((stats or {}).get(key))
    return scores


def nanmean(values: list[float]) -> float:
    """Mean over the non-NaN values (NaN when there are none).

    Used for the cost metrics instead of lm-eval's registered ``nanmean``, which lm-eval
    bootstraps for a standard error (seconds per metric); costs get no stderr.
    """
    kept = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return sum(kept) / len(kept) if kept else math.nan

