"""isolate_cache with lm-eval's real CachingLM and a fake model that counts its calls."""

from __future__ import annotations

import pytest
from lm_eval.api.instance import Instance
from lm_eval.api.model import CacheHook, CachingLM, LM

from lm_eval_softreason.cache import cache_table_name, isolate_cache
from lm_eval_softreason.stats import GenerationResult


class CountingLM(LM):
    """Answers "<setting>:<context>"; isolates the cache by its setting, like the real model."""

    def __init__(self, setting: str, isolate: bool = True):
        super().__init__()
        self.setting = setting
        self.isolate = isolate
        self.calls = 0

    def set_cache_hook(self, cache_hook) -> None:
        super().set_cache_hook(cache_hook)
        if self.isolate:
            isolate_cache(cache_hook, f"search=softreason,setting={self.setting}")

    def generate_until(self, requests, disable_tqdm: bool = False):
        self.calls += len(requests)
        return [GenerationResult(f"{self.setting}:{r.args[0]}", {"wall_s": 1.0}) for r in requests]

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError


def _requests(*contexts):
    return [
        Instance("generate_until", doc={}, arguments=(ctx, {"until": ["\n"], "do_sample": False}),
                 idx=0)
        for ctx in contexts
    ]


def _run(lm, path, *contexts):
    cached = CachingLM(lm, str(path))
    try:
        return cached.generate_until(_requests(*contexts))
    finally:
        cached.dbdict.close()


@pytest.fixture
def cache_path(tmp_path):
    return tmp_path / "cache" / "rank0.db"


def test_same_fingerprint_reuses_cached_answers(cache_path):
    first = CountingLM("budget=8")
    assert _run(first, cache_path, "Q1", "Q2") == ["budget=8:Q1", "budget=8:Q2"]
    again = CountingLM("budget=8")
    answers = _run(again, cache_path, "Q1", "Q2")
    assert again.calls == 0
    assert answers == ["budget=8:Q1", "budget=8:Q2"]
    assert answers[0].stats == {"wall_s": 1.0}  # GenerationResult survives the cache


def test_different_fingerprint_recomputes(cache_path):
    _run(CountingLM("budget=8"), cache_path, "Q1")
    other = CountingLM("budget=16")
    assert _run(other, cache_path, "Q1") == ["budget=16:Q1"]
    assert other.calls == 1


def test_configs_do_not_overwrite_each_other(cache_path):
    _run(CountingLM("budget=8"), cache_path, "Q1")
    _run(CountingLM("budget=16"), cache_path, "Q1")
    back = CountingLM("budget=8")
    assert _run(back, cache_path, "Q1") == ["budget=8:Q1"]
    assert back.calls == 0


def test_without_isolation_lm_eval_returns_another_configs_answers(cache_path):
    """The problem isolate_cache exists for."""
    _run(CountingLM("budget=8", isolate=False), cache_path, "Q1")
    other = CountingLM("budget=16", isolate=False)
    assert _run(other, cache_path, "Q1") == ["budget=8:Q1"]
    assert other.calls == 0


def test_no_cache_is_a_no_op():
    isolate_cache(CacheHook(None), "anything")
    isolate_cache(None, "anything")


def test_table_name_is_a_safe_stable_identifier():
    name = cache_table_name('weird "quoted" fingerprint; DROP TABLE x')
    assert name == cache_table_name('weird "quoted" fingerprint; DROP TABLE x')
    assert name.startswith("softreason_") and name.replace("_", "").isalnum()
    assert cache_table_name("a") != cache_table_name("b")


def test_empty_fingerprint_is_rejected():
    with pytest.raises(ValueError, match="fingerprint must be a non-empty string, got ''"):
        isolate_cache(CacheHook(None), "")
