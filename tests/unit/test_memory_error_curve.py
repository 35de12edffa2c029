"""A memory with a chosen error rate: from the exact rule memory (rate 0) to no memory at all (rate 1)."""
from __future__ import annotations

import numpy as np
import pytest

from acdc_lib.experiment import ablations as A
from acdc_lib.memory import NoMemory, RuleMemory
from test_ablations import VOCAB

SENTENCES = ["Max the corgi ran in the park at night.", "He ran.", "Max ran.", "He ran in the field.", "He ran.",
             "Max ran during the day."]


def test_unresolved_prompts_run_from_the_exact_memory_to_no_memory():
    rules = RuleMemory(VOCAB)
    exact = rules.refine(SENTENCES).prompts
    assert A.CorruptedMemory(rules, VOCAB, 0.0, mode="unresolved").refine(SENTENCES).prompts == exact
    every = A.CorruptedMemory(rules, VOCAB, 1.0, mode="unresolved")
    out = every.refine(SENTENCES)
    assert out.prompts == NoMemory().refine(SENTENCES).prompts == SENTENCES
    assert "unresolved(1)" in out.source
    # a prompt the memory left as its sentence cannot be made any less resolved: not counted as a change
    assert every.last_changes == [None if p == s else "unresolved" for p, s in zip(exact, SENTENCES)]
    half = A.CorruptedMemory(rules, VOCAB, 0.5, seed=1, mode="unresolved")
    shares = []
    for k in range(40):
        sentences = [s + f" {k}" for s in SENTENCES]
        prompts = half.refine(sentences).prompts
        assert all(p in (r, s) for p, r, s in zip(prompts, rules.refine(sentences).prompts, sentences))
        shares.append(np.mean([p == s for p, s in zip(prompts, sentences)]))
    assert 0.3 < np.mean(shares) < 0.8


def test_the_wrong_mode_keeps_its_draws_and_a_bad_mode_is_refused():
    rules = RuleMemory(VOCAB)
    a = A.CorruptedMemory(rules, VOCAB, 1.0, seed=3).refine(SENTENCES).prompts
    assert a == A.CorruptedMemory(rules, VOCAB, 1.0, seed=3, mode="wrong").refine(SENTENCES).prompts
    with pytest.raises(ValueError, match="mode must be one of \\('wrong', 'unresolved'\\), got 'missing'"):
        A.CorruptedMemory(rules, VOCAB, 0.5, mode="missing")
