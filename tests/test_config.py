"""The model_args dataclass: the configuration fingerprint covers every field that can change a
response (``--use_cache`` keys its table on it)."""

from __future__ import annotations

import copy
from dataclasses import fields, replace

import pytest

from lm_eval_softreason.config import NOT_IN_FINGERPRINT, SoftReasonConfig


def _another_value(value):
    """A different value of the same kind (validity does not matter to the hash)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "-other"
    if value is None:
        return "other"
    raise TypeError(f"no other value for {value!r}: teach this test the field's type")


@pytest.mark.parametrize("name", [f.name for f in fields(SoftReasonConfig)])
def test_a_field_changes_the_fingerprint_unless_listed_as_output_neutral(name):
    """Iterates the dataclass: a field added later is covered without touching this test, and
    fails here if the fingerprint leaves it out without listing it in NOT_IN_FINGERPRINT."""
    base = SoftReasonConfig()
    changed = copy.copy(base)  # set, not replace()d: the hash sees every value, valid or not
    setattr(changed, name, _another_value(getattr(base, name)))
    if name in NOT_IN_FINGERPRINT:
        assert changed.fingerprint() == base.fingerprint()
    else:
        assert changed.fingerprint() != base.fingerprint(), f"{name} is not fingerprinted"


def test_output_neutral_list_names_real_fields_with_a_reason():
    names = {f.name for f in fields(SoftReasonConfig)}
    assert set(NOT_IN_FINGERPRINT) <= names
    assert all(reason.strip() for reason in NOT_IN_FINGERPRINT.values())


@pytest.mark.parametrize("name, value", [("question_field", "input"), ("max_length", 512),
                                         ("max_gen_toks", 64)])
def test_keys_the_old_fingerprint_missed_are_in(name, value):
    base = SoftReasonConfig()
    assert replace(base, **{name: value}).fingerprint() != base.fingerprint()


def test_fingerprint_is_stable_and_short():
    assert SoftReasonConfig(k=3).fingerprint() == SoftReasonConfig(k=3).fingerprint()
    assert len(SoftReasonConfig().fingerprint()) == 16


def test_search_and_acquisition_names_are_one_list_each():
    import lm_eval_softreason.lm as lm_module
    from lm_eval_softreason import config
    from lm_eval_softreason.search import bo, choices

    assert config.SEARCHES is choices.SEARCHES and config.ACQUISITIONS is choices.ACQUISITIONS
    assert bo.ACQUISITIONS is choices.ACQUISITIONS
    assert set(lm_module.SEARCH_FUNCTIONS) == set(choices.SEARCHES)  # each name runs
    for name in choices.SEARCHES:
        assert SoftReasonConfig.from_model_args(search=name).search == name


def test_config_imports_nothing_heavy():
    import subprocess
    import sys

    code = ("import sys, lm_eval_softreason.config; "
            "print([m for m in ('torch', 'botorch', 'lm_eval', 'transformers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"LM_EVAL_SOFTREASON_NO_HOOK": "1", "PATH": ""})
    assert out.stdout.strip() == "[]", out.stderr


def test_a_key_added_later_keeps_earlier_fingerprints_at_its_original_value():
    """backend was added after caches and cells were recorded: at hf (what they all ran on) it
    is not hashed, so they stay valid; at vllm it is. So for every key added later."""
    from lm_eval_softreason.config import ADDED_LATER

    hf = SoftReasonConfig.from_model_args(backend="hf")
    assert ADDED_LATER == {"backend": "hf", "verifier_force_answer": False}
    other = {"backend": "vllm", "verifier_force_answer": True}
    for key, original in ADDED_LATER.items():
        assert key not in SoftReasonConfig.from_model_args(**{key: original}).output_settings()
        assert SoftReasonConfig.from_model_args(**{key: other[key]}).output_settings()[key] \
            == other[key]
    assert "backend" not in hf.output_settings()
    assert SoftReasonConfig.from_model_args(backend="vllm").output_settings()["backend"] == "vllm"
    assert hf.fingerprint() != SoftReasonConfig.from_model_args(backend="vllm").fingerprint()
