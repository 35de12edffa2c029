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


def _reader(images):
    """A stand-in identity reader: marking from the red channel, accessory from the green one."""
    return {"marking": (images[:, 0].mean((1, 2)) > 0.5).long(), "accessory": (images[:, 1].mean((1, 2)) > 0.5).long()}


def test_identity_diversity_tells_one_default_identity_from_varied_ones():
    import torch

    one = torch.zeros(8, 3, 4, 4)
    varied = one.clone()
    varied[::2, 0], varied[::4, 1] = 1.0, 1.0   # marking on half the stories, accessory on a quarter
    d1, d2 = A.identity_diversity(one, _reader), A.identity_diversity(varied, _reader)
    assert d1 == {"stories": 8, "distinct": 1, "most_common_share": 1.0, "entropy_bits": 0.0}
    assert d2["distinct"] == 3 and d2["most_common_share"] == 0.5 and d2["entropy_bits"] == pytest.approx(1.5)
    after = varied.clone()
    after[0, 1] = 0.0                            # the correction drops story 0's accessory
    assert A.identity_kept(varied, after, _reader).tolist() == [0.5] + [1.0] * 7
    with pytest.raises(ValueError, match="read_identity gives no \\['layout'\\]"):
        A.identity_diversity(one, _reader, heads=("marking", "layout"))
