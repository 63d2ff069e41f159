"""The self-verification step: prompt the same model with the question and the candidates'
reasonings, let it write an analysis and one final answer."""

from __future__ import annotations

from ..answers import Answer, format_answer

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
