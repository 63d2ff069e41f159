import math

import pytest

from lm_eval_softreason.answers import (
    ANSWER_TYPES,
    answers_match,
    extract_answer,
    format_answer,
    majority_answer,
    parse_gold,
)

NUMERIC_OUTPUTS = [
    ("The answer is $1,234.50.", 1234.5),
    ("Answer: -3", -3.0),
    ("x = 5\nAnswer: 7 apples", 7.0),
    ("**Answer:** 12", 12.0),
    ("**Answer: 12**", 12.0),
    ("Answer: 12.", 12.0),
    ("The final answer is $\\boxed{12}$.", 12.0),
    ("So we get \\boxed{\\frac{3}{4}}", 0.75),
    ("\\boxed{1{,}000}", 1000.0),
    ("She ate 1/4 of it, so 3/4 is left.\nAnswer: 3/4", 0.75),
    ("Answer: 50%", 50.0),
    ("It costs −5 dollars.", -5.0),
    ("Answer: -$5", -5.0),
    ("He has 1,234,567.89 dollars", 1234567.89),
    ("Answer: 12 * 3 = 36", 36.0),
    ("Answer:\n\n42", 42.0),
    ("The answer is: 42", 42.0),
    ("Final Answer: The final answer is 8. I hope it is correct.", 8.0),
    # several numbers and no marker: the last one
    ("First 16 - 3 - 4 = 9 eggs. Then 9 * 2 = 18 dollars.", 18.0),
    ("7-3 = 4", 4.0),
    ("The difference is 10 - 3", 3.0),  # a spaced minus is subtraction, not a sign
    ("3,4 and 5", 5.0),  # "3,4" is not a thousands group
    # repetition, including a cut-off last marker
    ("Answer: 7\nAnswer: 7\nAnswer: 7\nAnswer:", 7.0),
    ("Answer: 5. Answer: 5. Answer: 5. Answ", 5.0),
    # a later marker without a number does not hide an earlier one
    ("Answer: 21\nI double-checked and the answer is correct.", 21.0),
    # the last marker wins over earlier ones
    ("At first the answer is 10. Wait, that is wrong. Answer: 12", 12.0),
    ("Let me compute 1.5 + 2.25 = 3.75", 3.75),
    ("There are .5 liters", 0.5),
    ("Answer: 3.509e-07", 3.509e-07),
    ("She has 5 eggs", 5.0),  # "e" of a word is no exponent
]


@pytest.mark.parametrize("text, expected", NUMERIC_OUTPUTS)
def test_numeric_answer_is_extracted_from_messy_outputs(text, expected):
    assert extract_answer(text, "numeric") == pytest.approx(expected)


@pytest.mark.parametrize(
    "text",
    ["", "I do not know.", "Answer: unknown", "The answer is not clear.", "Answer: 3/0",
     "Answer: 1e999"],
)
def test_numeric_answer_is_none_without_a_number(text):
    assert extract_answer(text, "numeric") is None


BOOLEAN_OUTPUTS = [
    ("Yes, because the tibia is a leg bone.", True),
    ("No. Hamsters are rodents.", False),
    ("Answer: true", True),
    ("Answer: **False**", False),
    ("The answer is no.", False),
    ("Answer: Yes", True),
    ("It is not true that ... Therefore the answer is: yes.", True),
    ("Apples grow on trees, so that is false", False),
    ("Answer: TRUE\nAnswer: TRUE\nAnswer:", True),
]


@pytest.mark.parametrize("text, expected", BOOLEAN_OUTPUTS)
def test_boolean_answer_is_extracted(text, expected):
    assert extract_answer(text, "boolean") is expected


def test_boolean_answer_is_none_without_a_yes_no_word():
    assert extract_answer("The ship was named after a battle.", "boolean") is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Answer: 12", 12.0),
        ("Answer: false", False),
        ("Yes, because 3 is odd.", True),
        ("No numbers in here", None),  # "No" that is not a reply
        ("There are no apples. So, no.", False),
        ("He has 4 apples and 3 pears, 7 in all", 7.0),
        ("Answer: yes, all 3 of them", True),
        ("Answer: 3 (yes)", 3.0),
        ("", None),
    ],
)
def test_auto_picks_the_type_the_text_shows(text, expected):
    assert extract_answer(text, "auto") == expected
    assert type(extract_answer(text, "auto")) is type(expected)


def test_bad_answer_type_names_the_value_and_the_allowed_ones():
    with pytest.raises(ValueError) as err:
        extract_answer("Answer: 3", "number")
    assert "'number'" in str(err.value)
    for allowed in ANSWER_TYPES:
        assert repr(allowed) in str(err.value)
    with pytest.raises(ValueError):
        answers_match(1.0, 1.0, answer_type="int")


def test_answer_of_a_str_subclass_is_extracted():
    class Tagged(str):
        pass

    assert extract_answer(Tagged("Answer: 4"), "numeric") == 4.0


@pytest.mark.parametrize(
    "value, expected",
    [
        ("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs.\n#### 18", 18.0),
        ("#### 1,018", 1018.0),
        ("#### -4", -4.0),
        ("27", 27.0),
        ("3.0", 3.0),
        (-9867630.0, -9867630.0),
        (14053029.666666666, 14053029.666666666),
        (7, 7.0),
        ("True", True),
        ("False", False),
        ("yes", True),
        (True, True),
        (False, False),
        ("3/4", 0.75),
        ("$1,200", 1200.0),
        ("The answer is 5", 5.0),
        (None, None),
        (float("nan"), None),
        ("", None),
    ],
)
def test_parse_gold_reads_dataset_targets(value, expected):
    gold = parse_gold(value)
    assert gold == expected
    assert type(gold) is type(expected)


def test_numbers_match_with_tolerance_for_gsm_hard_floats():
    assert answers_match(14053029.67, 14053029.666666666)
    assert answers_match(14053030, 14053029.666666666)
    assert answers_match("Answer: 5489.55", 5489.5466666667)
    assert answers_match(0.00167916, 0.0016791648)
    assert answers_match(3, 3.0)
    assert answers_match(0.0, 1e-12)
    assert not answers_match(18.0, 19.0)
    assert not answers_match(0.0016791648, 0.0017)


def test_large_numbers_one_apart_do_not_match():
    # a relative tolerance alone would accept these GSM-Hard arithmetic slips
    assert not answers_match(-9867631.0, -9867630.0)
    assert not answers_match(9867600.0, 9867630.0)
    assert not answers_match(14053000.0, 14053029.666666666)


def test_zero_does_not_match_a_tiny_target():
    assert not answers_match(0.0, 3.509e-07)
    assert answers_match(3.509e-07, 3.509e-07)


def test_booleans_match_exactly_and_never_match_numbers():
    assert answers_match(True, True)
    assert not answers_match(True, False)
    assert not answers_match(True, 1.0)
    assert not answers_match(0.0, False)
    assert not answers_match(1.0, 1.0, answer_type="boolean")
    assert not answers_match(True, True, answer_type="numeric")


def test_none_and_nan_never_match():
    assert not answers_match(None, None)
    assert not answers_match(None, 3.0)
    assert not answers_match(float("nan"), float("nan"))


def test_strings_are_parsed_with_the_given_answer_type():
    assert answers_match("So the answer is 7.", "Answer: 7", "numeric")
    assert answers_match("Yes, it can.", True, "boolean")
    assert not answers_match("no idea", 3.0, "numeric")


def test_majority_groups_matching_numbers_and_ignores_none():
    assert majority_answer([1.0, 2.0, 2.000000001, None, None, None]) == 2.0
    assert majority_answer([None, None]) is None
    assert majority_answer([]) is None
    assert majority_answer([True, False, False]) is False


def test_majority_tie_goes_to_the_first_seen_answer():
    assert majority_answer([5.0, 3.0, 3.0, 5.0]) == 5.0


def test_format_answer_is_what_prompts_show_after_answer():
    assert format_answer(57188562.0) == "57188562"
    assert format_answer(92941.83) == "92941.83"
    assert format_answer(-3.0) == "-3"
    assert format_answer(True) == "true"
    assert format_answer(None) == ""
    assert extract_answer("Answer: " + format_answer(3244047.0999999996), "numeric") == (
        3244047.0999999996
    )
    assert not math.isnan(parse_gold(format_answer(0.0016791648)))
