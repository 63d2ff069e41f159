"""The self-verification step: prompt the same model with the question and the candidates'
reasonings, let it write an analysis and one final answer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..answers import Answer, format_answer
from .problem import Engine, Problem

INSTRUCTION = (
    "Several attempts at the problem below are shown, each with its final answer. Check them "
    "carefully: work through the problem yourself, say which steps are right or wrong, and "
    "decide on the correct final answer (it may differ from all attempts). Finish with a last "
    'line of the form "Answer: <final answer>".'
)


def verification_prompt(
    question: str,
    attempts: list[tuple[str, Answer]],
    earlier_analyses: list[str],
) -> str:
    """The user-turn text of one verification call.

    Args:
        question: the bare question.
        attempts: (reasoning text, parsed answer) of this round's candidates with a parsable
            answer; identical reasonings should be de-duplicated by the caller.
        earlier_analyses: the verifier's own analyses from earlier rounds of this request.
    """
    parts = [INSTRUCTION, "", "Problem:", question.strip(), ""]
    for i, (reasoning, answer) in enumerate(attempts, 1):
        parts += [f"Attempt {i}:", reasoning.strip(), f"(final answer of attempt {i}: "
                  f"{format_answer(answer)})", ""]
    for i, analysis in enumerate(earlier_analyses, 1):
        parts += [f"Earlier check {i}:", analysis.strip(), ""]
    parts.append("Your check:")
    return "\n".join(parts)


GROUPED_INSTRUCTION = (
    "Several independent attempts at the problem below reached the final answers listed, each "
    "shown with how many attempts reached it and the reasoning of one of them. Check that "
    "reasoning: work through the problem yourself and decide which final answer is correct (it "
    "may be none of them). Do not trust an answer just because many attempts reached it. End "
    'with a last line "Answer: <final answer>" that gives the answer itself, not a label.'
)


def grouped_verification_prompt(
    question: str, groups: list[tuple[str, Answer, int]], attempts: int
) -> str:
    """The user-turn text of one grouped verification call (preset v2).

    Args:
        question: the bare question.
        groups: one (reasoning, answer, count) per distinct answer: the reasoning of one attempt
            that reached it, and how many attempts did.
        attempts: how many attempts there were in all (unparsable ones included).
    Candidates are labelled with letters so that no label reads as a numeric answer.
    """
    parts = [GROUPED_INSTRUCTION, "", "Problem:", question.strip(), ""]
    for i, (reasoning, answer, count) in enumerate(groups):
        label = chr(ord("A") + i) if i < 26 else f"Z{i - 25}"
        parts += [f"Candidate {label}: final answer {format_answer(answer)}, reached by {count} "
                  f"of {attempts} attempts. Its reasoning:", reasoning.strip(), ""]
    parts.append("Your check:")
    return "\n".join(parts)


# Appended to a reply that gave no final answer line, to make the model state one (issue 18:
# 15 of 40 grouped verdicts on Qwen svamp_dev had none, most cut off at the token cap).
FORCE_SUFFIX = "\nAnswer:"
FORCE_MAX_TOKENS = 16  # one number, word or short expression on that line


@dataclass
class Verdict:
    """One verifier call: its answer (None if it gave none), its full text, and its cost."""

    answer: Answer
    text: str
    tokens: int  # generated, the forced answer line's included
    prompt_tokens: int  # prefilled, the forced continuation's included
    forced: bool = False  # the answer came from the forced "Answer:" line
    forced_tokens: int = 0  # of ``tokens``, the forced continuation's


def ask(engine: Engine, problem: Problem, prompt: str, *, max_new_tokens: int,
        parse: Callable[[str, str], Answer], force_answer: bool = False) -> Verdict:
    """Decode the verifier's reply to ``prompt`` (a user-turn text) and parse its answer.

    With ``force_answer``, a reply that ``parse`` finds no answer in is continued with
    ``FORCE_SUFFIX`` and at most ``FORCE_MAX_TOKENS`` tokens, up to the end of that line, and
    parsed again: a cut-off or unformatted analysis still yields the model's own verdict."""
    ids = problem.render(prompt)
    prefilled = engine.stats.prefill_tokens
    [reply] = engine.decode(engine.prefill(ids), None, until=problem.until,
                            max_new_tokens=max_new_tokens)
    text, tokens = reply.text, len(reply.token_ids)
    answer = parse(text, problem.answer_type)
    forced, forced_tokens = False, 0
    if answer is None and force_answer:
        # re-encode the reply's text: its ids may end in an end-of-turn token
        body = text.rstrip() + FORCE_SUFFIX
        more = engine.tokenizer.encode(body, add_special_tokens=False)
        [tail] = engine.decode(engine.prefill(ids + more), None,
                               until=["\n", *problem.until], max_new_tokens=FORCE_MAX_TOKENS)
        forced_tokens = len(tail.token_ids)
        text, tokens = body + tail.text, tokens + forced_tokens
        answer = parse(text, problem.answer_type)
        forced = answer is not None
    return Verdict(answer, text, tokens, engine.stats.prefill_tokens - prefilled, forced,
                   forced_tokens)
