"""Memory modules (Eq. 3): rule-based resolver, LLM memory over a fake server, quality and distances."""
from __future__ import annotations

import logging
import os
import re

import numpy as np
import pytest
import torch

from acdc_lib.llm import InvalidAnswer, LLMClient
from acdc_lib import memory as MEM
from acdc_lib.memory import (
    LLMMemory,
    NoMemory,
    RuleMemory,
    parse_numbered_lines,
    refine_many,
    validate_story_answer,
)
from acdc_lib.toyworld.grammar import generate_stories
from acdc_lib.toyworld.vocabulary import explicit_captions, toy_vocabulary
from acdc_lib.types import Memory, Story
from fake_openai import fake_server, refused_url  # noqa: F401  (fixture)

KEY = "sk-test-DO-NOT-LEAK-123"
VOCAB = toy_vocabulary()


# The library's measures with the toy world's vocabulary and explicit captions, as every test here uses them.
def memory_quality(memory, stories, label=None):
    return MEM.memory_quality(memory, stories, label, vocabulary=VOCAB, captions=explicit_captions)


def mentioned(prompt):
    return MEM.mentioned(prompt, VOCAB)


def prompt_distances(prompts, stories, encode):
    return MEM.prompt_distances(prompts, stories, encode, captions=explicit_captions)

LUNA = ["Luna the fox was sitting in the forest at night.",
        "She jumped high.",
        "The fox ran off to the beach.",
        "The sun rose over the beach.",
        "Luna lay down to rest.",
        "Then they sniffed the ground."]
LUNA_REFINED = ["Luna the fox sits in the forest at night.",
                "Luna the fox jumps in the forest at night.",
                "Luna the fox runs on the beach at night.",
                "Luna the fox runs on the beach during the day.",  # a scene-only sentence keeps the pose
                "Luna the fox lies down on the beach during the day.",
                "Luna the fox sniffs the ground on the beach during the day."]


@pytest.fixture(scope="module")
def grammar_stories() -> list[Story]:
    return generate_stories(300, seed=11)


# ------------------------------------------------------------------------------ none / rules
def test_no_memory_returns_the_sentences():
    out = NoMemory().refine(LUNA)
    assert out.prompts == LUNA and out.source == "none" and out.requests == 0
    assert isinstance(NoMemory(), Memory) and isinstance(RuleMemory(VOCAB), Memory)


def test_rule_memory_hand_checked_toy_story():
    # pronoun, species noun, place change, time change, bare name, "they"
    out = RuleMemory(VOCAB).refine(LUNA)
    assert out.prompts == LUNA_REFINED and out.source == "rules"


def test_rule_memory_keeps_unknown_words_of_free_text():
    story = ["Benny the beagle sat on the beach during the day, waves rolling in.",
             "He barked at a gull.",
             "His ears flapped in the wind.",
             "Night fell and the beagle chased a crab to the park."]
    assert RuleMemory(VOCAB).refine(story).prompts == [
        story[0],
        "Benny the beagle barked at a gull on the beach during the day.",
        "Benny the beagle's ears flapped in the wind on the beach during the day.",
        "Night fell and Benny the beagle chased a crab to the park.",
    ]
    # a name outside the vocabulary, introduced as "<Name>, the <species>,"
    assert RuleMemory(VOCAB).refine(["Pip, the owl, perched in the garden at night.", "She hooted twice."]).prompts[1] \
        == "Pip the owl hooted twice in the garden at night."


def test_rule_memory_is_causal():
    # a prompt depends on the sentences up to it only: cutting the story does not change its prefix
    full = RuleMemory(VOCAB).refine(LUNA).prompts
    for k in range(1, len(LUNA)):
        assert RuleMemory(VOCAB).refine(LUNA[:k]).prompts == full[:k]


def test_rule_memory_is_exact_on_grammar_stories(grammar_stories):
    m = RuleMemory(VOCAB)
    wrong = [s.story_id for s in grammar_stories if m.refine(s.sentences).prompts != explicit_captions(s)]
    assert wrong == []


def test_rule_memory_is_exact_on_the_committed_test_split_and_its_referential_variant():
    from acdc_lib.toyworld.splits import load_split
    from acdc_lib.toyworld.stories import referential_variant

    test = load_split("test")
    assert len(test) == 1000
    m = RuleMemory(VOCAB)
    for story in (*test, *(referential_variant(s) for s in test)):
        assert m.refine(story.sentences).prompts == explicit_captions(story), story.story_id


def test_the_vocabulary_is_required():
    with pytest.raises(TypeError, match="vocabulary"):
        RuleMemory()
    with pytest.raises(TypeError, match="RuleMemory needs a vocabulary"):
        RuleMemory(None)
    with pytest.raises(TypeError, match="mentioned needs a vocabulary"):
        MEM.mentioned("Max ran.", None)
    with pytest.raises(TypeError, match="vocabulary"):
        MEM.memory_quality(NoMemory(), [], captions=explicit_captions)
    with pytest.raises(TypeError, match="captions"):
        MEM.memory_quality(NoMemory(), [], vocabulary=VOCAB)
    with pytest.raises(ValueError, match="fallback='rules'.*vocabulary"):
        LLMMemory(LLMClient(base_url="http://127.0.0.1:9"))
    assert LLMMemory(LLMClient(base_url="http://127.0.0.1:9"), fallback=None).fallback is None


def test_refine_rejects_bad_input():
    with pytest.raises(ValueError, match="one string"):
        RuleMemory(VOCAB).refine("He jumped.")
    with pytest.raises(ValueError, match="sentence 1"):
        NoMemory().refine(["Max the corgi sat.", "  "])


# ------------------------------------------------------------------------------ quality, distances
def test_quality_none_matches_what_the_grammar_says_each_sentence_states(grammar_stories):
    # Independent ground truth: the grammar records which attributes each sentence states itself.
    q = memory_quality(NoMemory(), grammar_stories, label="none")
    explicit = [set(e) for s in grammar_stories for e in s.meta["explicit"]]
    for attr in ("name", "species", "place", "time"):
        assert q.shares[attr] == pytest.approx(np.mean([attr in e for e in explicit]), abs=1e-12), attr
    assert q.n_prompts == 6 * len(grammar_stories) and q.stories_exact == 0
    rules = memory_quality(RuleMemory(VOCAB), grammar_stories, label="rules")
    assert rules.shares == {k: 1.0 for k in ("name", "species", "place", "time", "all")}
    assert rules.caption_exact == 1.0 and rules.stories_exact == len(grammar_stories)


def test_quality_catches_a_wrong_attribute(grammar_stories):
    class SwapTime:
        def refine(self, sentences):
            out = RuleMemory(VOCAB).refine(sentences)
            return type(out)(prompts=[p.replace("at night", "during the DAY") if k == 2 else p
                                      for k, p in enumerate(out.prompts)], source="test")

    q = memory_quality(SwapTime(), grammar_stories)
    nights = sum(s.states[2]["time"] == "night" for s in grammar_stories)
    assert 0 < nights < len(grammar_stories)
    assert q.shares["time"] == pytest.approx(1 - nights / q.n_prompts)
    assert q.shares["name"] == 1.0 and q.stories_exact == len(grammar_stories) - nights


def test_mentioned_reads_the_time_phrase_not_its_words():
    assert mentioned("As the sun went down, Max ran.")["time"] == {"night"}
    assert mentioned("Max the corgi sits in the snowy field at night.") == {
        "name": {"Max"}, "species": {"corgi"}, "place": {"snowy field"}, "time": {"night"}}


def bag_of_words(texts):
    vocab = sorted({w for t in texts for w in re.findall(r"[a-z]+", t.lower())})
    idx = {w: k for k, w in enumerate(vocab)}
    out = torch.zeros(len(texts), len(vocab))
    for i, t in enumerate(texts):
        for w in re.findall(r"[a-z]+", t.lower()):
            out[i, idx[w]] += 1
    return out


def test_prompt_distances(grammar_stories):
    stories = grammar_stories[:20]
    rules = [RuleMemory(VOCAB).refine(s.sentences).prompts for s in stories]
    raw = [s.sentences for s in stories]
    d_rules = prompt_distances(rules, stories, bag_of_words)
    d_raw = prompt_distances(raw, stories, bag_of_words)
    assert d_rules.shape == d_raw.shape == (120,)
    assert np.all(d_rules == 0)
    assert np.all(d_raw > 0)  # no raw grammar sentence is its explicit caption
    # "He jumped." shares only "jumped"-free words with "Max the corgi jumps ...": far from it
    s = Story("x", ["Max the corgi sat in the park at night.", "He jumped."],
              states=[dict(stories[0].states[0], name="Max", species="corgi", place="park", time="night", action=a)
                      for a in ("sit", "jump")])
    d = prompt_distances([s.sentences], [s], bag_of_words)
    assert d[1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="prompt lists"):
        prompt_distances(raw[:2], stories, bag_of_words)


# ------------------------------------------------------------------------------ LLM answers
def test_parse_numbered_lines_variants():
    expect = ["First one.", "Second one.", "Third one."]
    assert parse_numbered_lines("1. First one.\n2. Second one.\n3. Third one.") == expect
    assert parse_numbered_lines("1) First one.\n\n2) Second one.\n\n3) Third one.") == expect
    assert parse_numbered_lines("(1) First one.\n(2) Second one.\n(3) Third one.") == expect
    assert parse_numbered_lines("- First one.\n- Second one.\n- Third one.") == expect
    assert parse_numbered_lines("Sure, here it is:\n\n1. First one.\n2. Second\none.\n3. Third one.\n\n"
                                "Let me know if you need more!") == expect
    assert parse_numbered_lines("(Story)\n1. a\n2. b\n3. c\n(Rewritten)\n1. First one.\n2. Second one.\n"
                                "3. Third one.") == expect
    assert parse_numbered_lines("```\nFirst one.\nSecond one.\n\nThird one.\n```") == expect


def test_validate_story_answer():
    story = ["Max the corgi sat in the park.", "He ran.", "He jumped."]
    ok = "1. Max the corgi sat in the park\n2. Max the corgi ran in the park.\n3. Max the corgi jumped in the park."
    assert validate_story_answer(ok, story) == [story[0], "Max the corgi ran in the park.",
                                                "Max the corgi jumped in the park."]
    with pytest.raises(InvalidAnswer, match="sentence 1 was changed"):
        validate_story_answer(ok.replace("sat in the park", "sat in the garden", 1), story)
    with pytest.raises(InvalidAnswer, match="empty"):
        validate_story_answer("1. Max the corgi sat in the park.\n2.\n3. Max jumped.", story)
    with pytest.raises(InvalidAnswer, match="expected 3 sentences, got 2"):
        validate_story_answer("1. Max the corgi sat in the park.\n2. Max ran.", story)


def test_labelled_lines_and_answers_without_sentence_1_are_read_when_unambiguous():
    story = ["Max the corgi sat in the park.", "He ran.", "He jumped."]
    want = [story[0], "Max the corgi ran in the park.", "Max the corgi jumped in the park."]
    labelled = "Sentence 1: Max the corgi sat in the park.\nSentence 2: " + want[1] + "\nSentence 3: " + want[2]
    assert validate_story_answer(labelled, story) == want
    assert validate_story_answer(labelled.replace("Sentence", "**Prompt").replace(":", ":**"), story) == want
    assert validate_story_answer(f"2. {want[1]}\n3. {want[2]}", story) == want              # only 2..N
    assert validate_story_answer(f"Sentence 2: {want[1]}\nSentence 3: {want[2]}", story) == want
    for ambiguous in (f"{want[1]}\n{want[2]}",                                             # which one is missing?
                      f"1. {story[0]}\n3. {want[2]}", f"3. {want[2]}\n2. {want[1]}"):
        with pytest.raises(InvalidAnswer, match="expected 3 sentences, got 2"):
            validate_story_answer(ambiguous, story)


def story_of(body: dict) -> list[str]:
    """The numbered story inside the user message of a story request."""
    user = body["messages"][-1]["content"]
    return [m.group(1) for m in re.finditer(r"^\d+\. (.*)$", user, re.M)]


def rule_answer(body: dict) -> str:
    # What a good LLM would answer: sentence 1 as is, then the causal rewrite, numbered, in some chatter.
    story = story_of(body)
    prompts = story[:1] + RuleMemory(VOCAB).refine(story).prompts[1:]
    return "Here is the rewritten story:\n\n" + "\n".join(f"{k + 1}. {p}" for k, p in enumerate(prompts)) + "\n\nDone."


def llm_memory(srv, tmp_path=None, mode="story", **kw):
    client = LLMClient(base_url=srv.url if hasattr(srv, "url") else srv, timeout=kw.pop("timeout", 2.0),
                       max_retries=kw.pop("max_retries", 2), backoff_s=0.0,
                       cache_path=(tmp_path / "memory.sqlite") if tmp_path is not None else None)
    return LLMMemory(client, mode=mode, **{"vocabulary": VOCAB, **kw})


@pytest.mark.network
def test_llm_memory_story_mode_and_cache(fake_server, tmp_path):
    fake_server.responder = rule_answer
    out = llm_memory(fake_server, tmp_path).refine(LUNA)
    assert out.prompts == LUNA[:1] + LUNA_REFINED[1:] and out.source == "llm" and out.requests == 1
    body = fake_server.requests[0]["body"]
    assert [m["role"] for m in body["messages"]] == ["system", "user"] and story_of(body) == LUNA
    again = llm_memory(fake_server, tmp_path).refine(LUNA)
    assert again.prompts == out.prompts and again.source == "llm-cache" and again.requests == 0
    assert fake_server.count == 1


@pytest.mark.network
@pytest.mark.parametrize("script", [
    lambda s: s.push_status(429),
    lambda s: s.push_status(500),
    lambda s: s.push_slow(1.0),
    lambda s: s.push_ok("1. Luna the fox was sitting in the forest at night.\n2. Luna jumped."),  # too short
    lambda s: s.push_ok("1. Luna the fox sat somewhere else.\n2. a\n3. b\n4. c\n5. d\n6. e"),  # sentence 1 changed
    lambda s: s.push_ok("I cannot help with that."),  # prose
])
def test_llm_memory_retries_then_uses_the_answer(fake_server, script):
    script(fake_server)
    fake_server.responder = rule_answer
    out = llm_memory(fake_server, timeout=0.3).refine(LUNA)
    assert out.source == "llm" and out.fallback_reason is None and out.requests == 2
    assert out.prompts[1:] == LUNA_REFINED[1:] and fake_server.count == 2


def _answer_formats(prompts: list[str]) -> dict[str, str]:
    """Ten ways a chat model writes the rewritten story (all of them complete and unambiguous)."""
    n = lambda fmt: "\n".join(fmt.format(k=k + 1, p=p) for k, p in enumerate(prompts))
    return {"plain": "\n".join(prompts), "dot": n("{k}. {p}"), "paren": n("{k}) {p}"),
            "fence": "```\n" + n("{k}. {p}") + "\n```", "preamble": "Sure! Here you go:\n\n" + n("{k}. {p}"),
            "blank lines": n("{k}. {p}\n"), "quotes": n('{k}. "{p}"'), "header": "(Rewritten)\n" + n("{k}. {p}"),
            "labelled": n("Sentence {k}: {p}"), "only 2..N": n("{k}. {p}").split("\n", 1)[1]}


@pytest.mark.network
@pytest.mark.parametrize("fmt", ["plain", "dot", "paren", "fence", "preamble", "blank lines", "quotes", "header",
                                 "labelled", "only 2..N"])
def test_llm_memory_reads_ten_answer_formats(fake_server, fmt):
    refined = LUNA[:1] + LUNA_REFINED[1:]
    fake_server.responder = lambda body: _answer_formats(refined)[fmt]
    out = llm_memory(fake_server, max_retries=0).refine(LUNA)
    assert out.source == "llm" and out.prompts == refined and fake_server.count == 1


@pytest.mark.network
def test_llm_memory_falls_back_with_reason(fake_server):
    for _ in range(3):
        fake_server.push_status(500)
    out = llm_memory(fake_server, max_retries=2).refine(LUNA)
    assert out.source == "fallback-rules" and "InternalServerError" in out.fallback_reason
    assert out.prompts == LUNA_REFINED and out.requests == 3 and fake_server.count == 3

    refused = llm_memory(refused_url(), max_retries=1).refine(LUNA)
    assert refused.source == "fallback-rules" and "APIConnectionError" in refused.fallback_reason
    assert refused.requests == 0

    fake_server.responder = lambda body: "1. only one line"
    bad = llm_memory(fake_server, max_retries=1).refine(LUNA)
    assert bad.source == "fallback-rules" and "expected 6 sentences, got 1" in bad.fallback_reason


@pytest.mark.network
def test_refine_many_survives_a_failing_story(fake_server, grammar_stories):
    stories = grammar_stories[:3]
    fake_server.responder = rule_answer
    fake_server.push_ok(rule_answer({"messages": [{"content": "\n".join(
        f"{k + 1}. {s}" for k, s in enumerate(stories[0].sentences))}]}))
    fake_server.push_status(500).push_status(500)  # story 2: both attempts fail
    outs = refine_many(llm_memory(fake_server, max_retries=1), stories)
    assert [o.source for o in outs] == ["llm", "fallback-rules", "llm"]
    assert [o.prompts[1:] for o in outs] == [explicit_captions(s)[1:] for s in stories]
    assert outs[1].prompts == RuleMemory(VOCAB).refine(stories[1].sentences).prompts

    class Broken:
        def refine(self, sentences):
            raise RuntimeError("boom")

    errs = refine_many(Broken(), stories)
    assert [o.source for o in errs] == ["error"] * 3 and "boom" in errs[0].fallback_reason


@pytest.mark.network
def test_llm_memory_frame_mode_sends_previous_prompts(fake_server):
    def one_line(body):
        user = body["messages"][-1]["content"]
        n_prev = len(re.findall(r"^\d+\. ", user, re.M))
        return LUNA_REFINED[n_prev]

    fake_server.responder = one_line
    out = llm_memory(fake_server, mode="frame").refine(LUNA)
    assert out.prompts == LUNA[:1] + LUNA_REFINED[1:] and out.requests == 5 and fake_server.count == 5
    last = fake_server.requests[-1]["body"]["messages"][-1]["content"]
    assert "2. Luna the fox jumps in the forest at night." in last and LUNA[-1] in last
    with pytest.raises(ValueError, match="allowed"):
        LLMMemory(out, mode="paragraph")


@pytest.mark.network
def test_quality_records_llm_fallbacks(fake_server, grammar_stories):
    stories = grammar_stories[:4]
    fake_server.responder = rule_answer
    fake_server.push_status(400)  # not retried: story 1 falls back at once
    q = memory_quality(llm_memory(fake_server), stories, label="llm")
    assert q.sources == {"fallback-rules": 1, "llm": 3} and len(q.fallbacks) == 1
    assert q.fallbacks[0][0] == stories[0].story_id and q.requests == 4
    assert q.shares["all"] == 1.0


@pytest.mark.network
def test_memory_never_leaks_the_key(monkeypatch, fake_server, tmp_path, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    fake_server.responder = rule_answer
    fake_server.push_status(401, f"incorrect api key {KEY}").push_status(500, f"key {KEY} rejected")
    outs = refine_many(llm_memory(fake_server, tmp_path), [LUNA, LUNA[:3]])
    assert outs[0].source == "fallback-rules" and outs[1].source == "llm"
    assert any(KEY in str(r["headers"]) for r in fake_server.requests)  # the server did get it
    assert KEY not in repr(outs) and KEY not in caplog.text
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert KEY.encode() not in f.read_bytes(), f


@pytest.mark.slow
@pytest.mark.network
def test_notebook_04_runs_with_a_fake_llm_and_never_writes_the_key(monkeypatch, fake_server, tmp_path):
    import json

    import papermill

    from acdc_lib.io import REPO_ROOT

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fake_server.responder = rule_answer
    out_dir, fig_dir, cache = tmp_path / "out", tmp_path / "fig", tmp_path / "llm.sqlite"
    executed = tmp_path / "04_executed.ipynb"
    papermill.execute_notebook(
        str(REPO_ROOT / "notebooks" / "04_memory_module.ipynb"), str(executed), kernel_name="python3",
        cwd=str(REPO_ROOT / "notebooks"), progress_bar=False,
        parameters={"N_SMOKE": 8, "OUT_DIR": str(out_dir), "FIG_DIR": str(fig_dir),
                    "LLM_BASE_URL": fake_server.url, "LLM_CACHE": str(cache)})
    results = json.loads((out_dir / "results.json").read_text())
    assert results["llm"]["used"] and results["n_stories"] == 8
    assert results["quality"]["LLM"]["all"] == 1.0 and results["quality"]["LLM"]["fallbacks"] == 0
    assert results["quality"]["rule-based"]["stories_exact"] == 8
    assert fake_server.count == 8  # one request per story (the Fig. 3 example is story 1, then cached)
    assert (fig_dir / "04_memory_distances.png").exists()
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert executed in written and cache in written
    for p in written:
        assert KEY.encode() not in p.read_bytes(), p
