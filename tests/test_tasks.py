"""The lm-eval tasks in tasks/: loading, prompts, metrics, and a run of the stock CLI."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lm_eval_softreason.answers import answers_match, extract_answer, parse_gold
from lm_eval_softreason.stats import GenerationResult

REPO_ROOT = Path(__file__).resolve().parents[1]
TASKS_DIR = REPO_ROOT / "tasks"

PAPER_TASKS = ("svamp", "gsm_hard", "strategyqa", "gsm8k_sr")
DEV_TASKS = ("svamp_dev", "gsm8k_dev")
ALL_TASKS = (*PAPER_TASKS, *DEV_TASKS, "softreason_smoke")
COST_METRICS = ("gen_tokens", "prompt_tokens", "candidates", "rounds", "wall_s")
CUE = "Let's think step by step."


@pytest.fixture(scope="module")
def task_manager(data_dir):
    from lm_eval.tasks import TaskManager

    return TaskManager(
        include_path=str(TASKS_DIR), include_defaults=False, metadata={"data_dir": str(data_dir)}
    )


@pytest.fixture(scope="module")
def tasks(task_manager):
    return task_manager.load(list(ALL_TASKS))["tasks"]


def _docs(task, n=3):
    return list(task.test_docs())[:n]


def _prompt(task, doc, num_fewshot=0, **kwargs):
    return task.fewshot_context(doc, num_fewshot, gen_prefix=task.doc_to_prefix(doc), **kwargs)


def test_our_names_are_not_lm_eval_builtins():
    import lm_eval

    ours = (*ALL_TASKS, "softreason_paper", "softreason_dev")
    names = "|".join((*ours, "gsm8k"))  # gsm8k: a builtin, to show the scan finds names
    line = re.compile(rf"^\s*(?:(?:task|group|tag)\s*:|-)\s*['\"]?({names})['\"]?\s*$", re.M)
    found = set()
    for path in (Path(lm_eval.__file__).parent / "tasks").rglob("*.yaml"):
        found.update(line.findall(path.read_text(errors="ignore")))
    assert "gsm8k" in found
    assert not found & set(ours)


def test_tag_runs_the_four_paper_tasks(task_manager):
    loaded = task_manager.load(["softreason_paper"])["tasks"]
    assert sorted(loaded) == sorted(PAPER_TASKS)


@pytest.mark.parametrize(
    "name, size, first_answer, answer_type",
    [
        ("svamp", 300, "27", "numeric"),
        ("gsm_hard", 1306, "-9867630", "numeric"),
        ("strategyqa", 687, "true", "boolean"),
        ("gsm8k_sr", 1319, "18", "numeric"),
        ("svamp_dev", 700, "1", "numeric"),
        ("gsm8k_dev", 7473, "72", "numeric"),
        ("softreason_smoke", 8, "7", "numeric"),
    ],
)
def test_task_loads_normalised_docs(tasks, name, size, first_answer, answer_type):
    task = tasks[name]
    docs = list(task.test_docs())
    assert len(docs) == size
    assert docs[0]["answer"] == first_answer
    assert {doc["answer_type"] for doc in docs} == {answer_type}
    assert all(doc["question"] and doc["answer"] for doc in docs)
    assert task.doc_to_target(docs[0]) == first_answer


@pytest.mark.parametrize("dev, report", [("svamp_dev", "svamp"), ("gsm8k_dev", "gsm8k_sr")])
def test_dev_split_shares_no_question_and_no_prompt_with_its_report_split(tasks, dev, report):
    dev_docs, report_docs = list(tasks[dev].test_docs()), list(tasks[report].test_docs())
    assert not {d["question"] for d in dev_docs} & {d["question"] for d in report_docs}
    # same instruction, template and cue: a default tuned on dev transfers to the report task
    assert _prompt(tasks[dev], dev_docs[0]).replace(dev_docs[0]["question"], "Q") == \
        _prompt(tasks[report], report_docs[0]).replace(report_docs[0]["question"], "Q")


def test_dev_tag_runs_the_two_dev_tasks(task_manager):
    assert sorted(task_manager.load(["softreason_dev"])["tasks"]) == sorted(DEV_TASKS)


def test_normalising_keeps_the_source_fields(tasks):
    gsm8k = _docs(tasks["gsm8k_sr"], 1)[0]
    assert gsm8k["solution"].endswith("#### 18")
    assert "<<" not in gsm8k["thought"] and "####" not in gsm8k["thought"]
    assert _docs(tasks["svamp"], 1)[0]["index"] == 0
    assert _docs(tasks["strategyqa"], 1)[0]["thought"].startswith("Apollo 13 was recovered")


@pytest.mark.parametrize("name", ALL_TASKS)
def test_zero_shot_prompt_is_instruction_question_and_cue(tasks, name):
    task = tasks[name]
    doc = _docs(task, 1)[0]
    prompt = _prompt(task, doc)
    assert prompt.endswith(f"Question: {doc['question']}\n{CUE}")
    assert 'Answer: ' in prompt.split("Question:")[0]  # the instruction names the answer line
    assert prompt.count("Question:") == 1


@pytest.mark.parametrize("name", PAPER_TASKS)
def test_eight_shot_prompt_shows_the_paper_exemplars_in_order(tasks, name, data_dir):
    task = tasks[name]
    doc = _docs(task, 1)[0]
    prompt = _prompt(task, doc, num_fewshot=8)
    exemplars = json.loads((data_dir / "fewshot" / "exemplars.json").read_text())[
        {"gsm8k_sr": "gsm8k"}.get(name, name)
    ]
    assert prompt.count("Question:") == 9
    assert prompt.count(CUE) == 9  # the exemplars' own cue is not doubled
    assert "Let’s" not in prompt
    positions = [prompt.index(ex["Question"].strip()) for ex in exemplars]
    assert positions == sorted(positions)
    blocks = prompt.split("\n\nQuestion: ")[1:-1]
    assert len(blocks) == 8 and all(re.search(r"\nAnswer: \S+$", block) for block in blocks)
    assert prompt.endswith(f"Question: {doc['question']}\n{CUE}")


def test_exemplar_answers_are_formatted_like_model_answers(tasks):
    prompt = _prompt(tasks["gsm_hard"], _docs(tasks["gsm_hard"], 1)[0], num_fewshot=8)
    assert "Answer: 57188562\n" in prompt  # "57188562.0" in the file
    prompt = _prompt(tasks["strategyqa"], _docs(tasks["strategyqa"], 1)[0], num_fewshot=8)
    assert "Answer: false\n" in prompt and "Answer: False" not in prompt


def test_chat_template_puts_the_cue_in_the_assistant_turn(tasks, tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir("llama"))

    def chat_template(messages, add_generation_prompt=True):
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt,
            continue_final_message=not add_generation_prompt,
        )

    task = tasks["svamp"]
    doc = _docs(task, 1)[0]
    prompt = _prompt(task, doc, apply_chat_template=True, chat_template=chat_template)
    assert prompt.startswith("<|im_start|>system\nSolve the math word problem.")
    assert prompt.endswith(f"Question: {doc['question']}<|im_end|>\n<|im_start|>assistant\n{CUE}")


def test_generation_stops_safely(tasks):
    kwargs = tasks["svamp"].config.generation_kwargs
    assert kwargs["do_sample"] is False and kwargs["max_gen_toks"] == 300
    assert "Question:" in kwargs["until"] and "\n\n" not in kwargs["until"]
    assert tasks["softreason_smoke"].config.generation_kwargs["max_gen_toks"] == 128


def _scores(task, doc, response):
    return task.process_results(doc, [response])


@pytest.mark.parametrize(
    "name, doc_index, response, acc",
    [
        ("svamp", 0, "62 - 35 = 27\nAnswer: 27", 1.0),
        ("svamp", 0, "The answer is 27.", 1.0),
        ("svamp", 0, "Answer: 26", 0.0),
        ("svamp", 0, "I am not sure.", 0.0),
        ("gsm_hard", 0, "16 - 3 - 4933828 = -4933815; x2\nAnswer: -9,867,630", 1.0),
        ("gsm_hard", 0, "Answer: -9867631", 0.0),
        ("strategyqa", 0, "The USS Iwo Jima recovered it.\nAnswer: true", 1.0),
        ("strategyqa", 0, "Yes, the USS Iwo Jima.", 1.0),
        ("strategyqa", 0, "Answer: false", 0.0),
        ("gsm8k_sr", 0, "9 * 2 = 18\nAnswer: $18", 1.0),
        ("softreason_smoke", 0, "3 + 4 = 7\nAnswer: 7 apples", 1.0),
    ],
)
def test_accuracy_uses_the_shared_answer_parser(tasks, name, doc_index, response, acc):
    task = tasks[name]
    assert _scores(task, _docs(task)[doc_index], response)["acc"] == acc


def test_gsm_hard_float_targets_match_with_tolerance(tasks):
    task = tasks["gsm_hard"]
    doc = next(d for d in task.test_docs() if d["answer"] == "14053029.666666666")
    assert _scores(task, doc, "Answer: 14053029.67")["acc"] == 1.0


def test_metrics_read_the_stats_of_a_generation_result(tasks):
    task = tasks["svamp"]
    doc = _docs(task, 1)[0]  # gold 27
    stats = {
        "prompt_tokens": 120, "gen_tokens": 900, "candidates": 8, "rounds": 3, "wall_s": 1.5,
        "candidate_answers": [26.0, None, "Answer: 27"], "verifier_answers": [27.0],
    }
    scores = _scores(task, doc, GenerationResult("Answer: 26", stats))
    assert scores == {
        "acc": 0.0, "coverage": 1.0, "gen_tokens": 900.0, "prompt_tokens": 120.0,
        "candidates": 8.0, "rounds": 3.0, "wall_s": 1.5,
    }
    missed = _scores(task, doc, GenerationResult("Answer: 26", {"candidate_answers": [26.0]}))
    assert missed["coverage"] == 0.0 and math.isnan(missed["gen_tokens"])


def test_metrics_of_a_plain_string_are_nan_except_accuracy(tasks):
    task = tasks["strategyqa"]
    scores = _scores(task, _docs(task, 1)[0], "Answer: true")
    assert scores["acc"] == 1.0
    assert all(math.isnan(scores[key]) for key in ("coverage", *COST_METRICS))


def test_nan_metrics_aggregate_without_crashing(tasks):
    task = tasks["svamp"]
    doc = _docs(task, 1)[0]
    per_doc = [
        _scores(task, doc, "Answer: 27"),
        _scores(task, doc, GenerationResult("Answer: 27", {"gen_tokens": 10, "candidate_answers": [27.0]})),
        _scores(task, doc, GenerationResult("Answer: 1", {"gen_tokens": 30, "candidate_answers": [1.0]})),
    ]
    aggregate = {name: fn([s[name] for s in per_doc]) for name, fn in task.aggregation().items()}
    assert aggregate["acc"] == pytest.approx(2 / 3)
    assert aggregate["coverage"] == pytest.approx(0.5)
    assert aggregate["gen_tokens"] == pytest.approx(20.0)
    assert math.isnan(aggregate["rounds"])
    assert task.higher_is_better()["acc"] and task.higher_is_better()["coverage"]
    assert not any(task.higher_is_better()[key] for key in COST_METRICS)


def _utils():
    import importlib.util

    spec = importlib.util.spec_from_file_location("softreason_task_utils", TASKS_DIR / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_data_dir_comes_from_the_environment_variable(monkeypatch, data_dir):
    monkeypatch.setenv("LM_EVAL_SOFTREASON_DATA", str(data_dir))
    dataset = _utils().load_svamp(version=1.0, pretrained="ignored")
    assert dataset["test"].num_rows == 300 and dataset["fewshot"].num_rows == 8


def test_few_shot_without_the_paper_exemplars_fails_naming_the_file(tmp_path, data_dir):
    """No train-row stand-ins: a data dir without fewshot/exemplars.json (or the Hub) gives
    zero-shot prompts, and --num_fewshot 8 a clear error instead of other exemplars."""
    from lm_eval.tasks import TaskManager

    (tmp_path / "svamp").mkdir()
    (tmp_path / "svamp" / "test300.json").symlink_to(data_dir / "svamp" / "test300.json")
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False,
                          metadata={"data_dir": str(tmp_path)})
    task = manager.load(["svamp"])["tasks"]["svamp"]
    doc = _docs(task, 1)[0]
    assert _prompt(task, doc).endswith(f"Question: {doc['question']}\n{CUE}")
    with pytest.raises(ValueError, match=r"--num_fewshot 8: .*paper's own exemplars only, and 0 "
                                         r"are available.*<data_dir>/fewshot/exemplars\.json"):
        _prompt(task, doc, num_fewshot=8)


def test_more_shots_than_the_paper_has_are_refused_not_cut(tasks):
    task = tasks["svamp"]
    with pytest.raises(ValueError, match="--num_fewshot 9: .* 8 are available"):
        _prompt(task, _docs(task, 1)[0], num_fewshot=9)


def test_smoke_needs_no_data_dir(monkeypatch):
    monkeypatch.delenv("LM_EVAL_SOFTREASON_DATA", raising=False)
    dataset = _utils().load_smoke()
    assert dataset["test"].num_rows == 8
    assert all(row["answer"].isdigit() for row in dataset["test"])


HUB_ROWS = {  # the Hub datasets' own field layouts
    ("ChilleD/SVAMP", "test"): [{
        "ID": "chal-777", "Body": "There are 41 bird families. 35 flew to asia and 62 to africa.",
        "Question": "How many more flew to africa?", "Equation": "( 62.0 - 35.0 )",
        "Answer": 27.0, "Type": "Subtraction",
        "question_concat": "There are 41 bird families. 35 flew to asia and 62 to africa. "
                            "How many more flew to africa?",
    }],
    ("reasoning-machines/gsm-hard", "train"): [
        {"input": "A robe takes 2287720 bolts ...", "code": "def solution(): ...",
         "target": 3431580.0},
    ],
    ("ChilleD/StrategyQA", "test"): [{
        "qid": "abc", "term": "Tibia", "description": "larger of the two bones of the leg.",
        "question": "Is the tibia necessary to win the Stanley Cup?", "answer": True,
        "facts": ["Ice hockey is played on skates.", "Legs are needed to skate."],
    }],
}


def test_hub_rows_are_normalised_like_the_local_files(monkeypatch):
    utils = _utils()
    monkeypatch.delenv("LM_EVAL_SOFTREASON_DATA", raising=False)
    monkeypatch.setattr(utils, "_hub_rows", lambda hub_id, config, split: HUB_ROWS[hub_id, split])

    svamp = utils.load_svamp()
    row = svamp["test"][0]
    assert (row["question"], row["answer"], row["ID"]) == (
        HUB_ROWS["ChilleD/SVAMP", "test"][0]["question_concat"], "27", "chal-777")
    assert svamp["test"][0]["thought"] == "The answer is ( 62.0 - 35.0 )."
    assert svamp["fewshot"].num_rows == 0  # the paper's exemplars are not on the Hub

    hard = utils.load_gsm_hard()
    assert hard["test"][0]["answer"] == "3431580" and hard["fewshot"].num_rows == 0

    strategy_data = utils.load_strategyqa()
    assert strategy_data["fewshot"].num_rows == 0
    strategy = strategy_data["test"][0]
    assert strategy["question"] == (
        "Tibia: larger of the two bones of the leg. Is the tibia necessary to win the Stanley Cup?")
    assert strategy["answer"] == "true" and strategy["answer_type"] == "boolean"
    assert strategy["thought"].startswith("Ice hockey")


def test_missing_data_names_what_was_tried_and_how_to_fix_it(monkeypatch, tmp_path):
    import datasets
    import huggingface_hub.constants

    monkeypatch.delenv("LM_EVAL_SOFTREASON_DATA", raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError) as err:
        _utils().load_strategyqa(data_dir=str(tmp_path / "nowhere"))
    message = str(err.value)
    assert str(tmp_path / "nowhere" / "strategyqa" / "test.json") in message
    assert "'ChilleD/StrategyQA'" in message and "split 'test'" in message
    assert "data_dir" in message and "LM_EVAL_SOFTREASON_DATA" in message
    assert "Error" in message  # the Hub failure itself, by exception type


def test_builtin_gsm8k_loads_offline_from_the_seeded_cache(offline_hf_env, tmp_path):
    """lm-eval's own gsm8k YAML, loaded by TaskManager in a fresh process that cannot reach
    the Hub (only lm-eval's gsm8k folder is indexed, to skip indexing ~14k builtin YAMLs)."""
    script = (
        "import lm_eval, pathlib\n"
        "from lm_eval.tasks import TaskManager, get_task_dict\n"
        "gsm8k_dir = pathlib.Path(lm_eval.__file__).parent / 'tasks' / 'gsm8k'\n"
        "tm = TaskManager(include_path=str(gsm8k_dir), include_defaults=False)\n"
        "task = get_task_dict(['gsm8k'], tm)['gsm8k']\n"
        "docs = list(task.test_docs())\n"
        "print(len(docs), len(list(task.fewshot_docs())), docs[0]['answer'].split('#### ')[-1])\n"
    )
    env = {**offline_hf_env, "LM_EVAL_SOFTREASON_NO_HOOK": "1"}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-3:] == ["1319", "7473", "18"]


@pytest.mark.slow
def test_stock_cli_runs_our_tasks_with_a_tiny_hf_model(tiny_model_dir, data_dir, tmp_path):
    """`lm_eval --model hf` on svamp and strategyqa: the table, results JSON and samples
    carry acc, coverage and the cost metrics (NaN for a plain-string model)."""
    out = tmp_path / "out"
    command = [
        "lm_eval", "--model", "hf",
        "--model_args", f"pretrained={tiny_model_dir('llama')},dtype=float32",
        "--tasks", "svamp,strategyqa", "--limit", "3",
        "--include_path", "tasks", "--metadata", json.dumps({"data_dir": str(data_dir)}),
        "--gen_kwargs", "max_gen_toks=16",
        "--log_samples", "--output_path", str(out),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    lm_eval_bin = Path(sys.executable).with_name("lm_eval")
    command[0] = str(lm_eval_bin) if lm_eval_bin.exists() else "lm_eval"
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not re.search(r"overrides existing task from \S*lm_eval/tasks", done.stderr)

    table = done.stdout
    for metric in ("acc", "coverage", *COST_METRICS):
        assert re.search(rf"\|\s*{metric}\s*\|", table), metric
    assert re.search(r"\|svamp\s*\|", table) and re.search(r"\|strategyqa\s*\|", table)

    results = json.loads(next(out.rglob("results_*.json")).read_text())
    for name in ("svamp", "strategyqa"):
        row = results["results"][name]
        assert math.isnan(row["coverage,none"]) and math.isnan(row["gen_tokens,none"])
        assert results["higher_is_better"][name]["wall_s"] is False
        samples = [json.loads(line) for line in next(out.rglob(f"samples_{name}_*.jsonl")).open()]
        assert len(samples) == 3
        for sample in samples:
            assert {"acc", "coverage", *COST_METRICS} <= sample.keys()
            assert sample["arguments"]["gen_args_0"]["arg_0"].endswith(CUE)
            # each score is the shared parser's verdict on the logged response
            doc, response = sample["doc"], sample["filtered_resps"][0]
            verdict = answers_match(extract_answer(response, doc["answer_type"]),
                                    parse_gold(doc["answer"]), doc["answer_type"])
            assert sample["acc"] == float(verdict)
        assert row["acc,none"] == pytest.approx(sum(s["acc"] for s in samples) / 3)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_tiny_model_fixture_loads_and_generates(tiny_model_dir, arch):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_model_dir(arch)
    assert tiny_model_dir(arch) == path  # built once per session
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Question: 2 + 2?"}], tokenize=False,
        add_generation_prompt=True,
    )
    assert prompt.endswith("<|im_start|>assistant\n") and tokenizer.eos_token == "<|im_end|>"
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    assert tokenizer.decode(ids[0]) == prompt  # byte-level: encodes any text losslessly
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] <= ids.shape[1] + 3
