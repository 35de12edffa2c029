"""Self-instruct LLM stories (paper Appendix C) against a fake OpenAI-compatible server."""
from __future__ import annotations

import json
import logging
import re

import pytest

from acdc_lib.llm import LLMClient
from acdc_lib.memory import RuleMemory
from acdc_lib.stories_llm import generate_llm_stories, load_seed_stories, parse_story
from acdc_lib.toyworld.vocabulary import toy_vocabulary
from acdc_lib.toyworld.world import NAMES, PLACES, SPECIES
from fake_openai import fake_server  # noqa: F401  (fixture)

pytestmark = pytest.mark.network
KEY = "sk-test-DO-NOT-LEAK-123"


def examples_in(body: dict) -> list[str]:
    """The example stories shown in a request's system message (blocks between triple quotes)."""
    system = body["messages"][0]["content"]
    return [b.strip() for b in re.findall(r'"""\n(.*?)\n"""', system, re.S)]


def new_story(body: dict) -> str:
    # A plausible answer: six numbered sentences whose first names the first example's character
    # (so each answer is traceable to its request), with a preamble the parser must drop.
    first = examples_in(body)[0].splitlines()[0]
    name = first.split()[0].strip(",")
    return (f"Here is a new story:\n\n1. {name} the owl perched in the park at night.\n2. She blinked.\n"
            "3. The owl flew down.\n4. She sniffed the ground.\n5. She sat down.\n6. She lay down to sleep.")


def client(srv, tmp_path=None, **kw):
    return LLMClient(base_url=srv.url, timeout=2.0, max_retries=kw.pop("max_retries", 1), backoff_s=0.0,
                     cache_path=(tmp_path / "stories.sqlite") if tmp_path is not None else None)


def test_seed_stories_have_the_benchmark_shape():
    seeds = load_seed_stories()
    assert len(seeds) == 10 and len({s.story_id for s in seeds}) == 10
    rules = RuleMemory(toy_vocabulary())
    for s in seeds:
        assert len(s.sentences) == 6
        first = rules.read(s.sentences[0])
        assert first["name"] in NAMES and first["species"] in SPECIES and first["place"] in PLACES, s.story_id
        assert first["time"] is not None, s.story_id
        # later sentences refer back by pronoun or species, so one alone is ambiguous
        assert sum(rules.read(t)["name"] is None for t in s.sentences[1:]) >= 3, s.story_id


def test_three_examples_per_request_at_temperature_one(fake_server, tmp_path):
    fake_server.responder = new_story
    out = generate_llm_stories(5, seed=3, client=client(fake_server, tmp_path))
    assert len(out.stories) == 5 and out.failures == [] and out.requests == 5 and fake_server.count == 5
    seeds = {s.story_id: "\n".join(s.sentences) for s in load_seed_stories()}
    for story, req in zip(out.stories, fake_server.requests):
        body = req["body"]
        assert body["temperature"] == 1.0 and body["model"] == "gpt-4o-mini"
        shown = examples_in(body)
        assert len(shown) == 3 and len(set(shown)) == 3
        assert shown == [seeds[i] for i in story.meta["examples"]]
        assert story.source == "llm" and len(story.sentences) == 6 and story.states is None
        assert story.sentences[1] == "She blinked."
        assert story.meta["model"] == "gpt-4o-mini" and story.meta["sample"] == 0
    assert [s.meta["request_index"] for s in out.stories] == list(range(5))
    # the examples of request i depend on (seed, i) only
    again = generate_llm_stories(3, seed=3, client=client(fake_server, tmp_path))
    assert [s.meta["examples"] for s in again.stories] == [s.meta["examples"] for s in out.stories[:3]]
    other = generate_llm_stories(5, seed=4, client=client(fake_server))
    assert [s.meta["examples"] for s in other.stories] != [s.meta["examples"] for s in out.stories]


def test_rerun_from_cache_costs_nothing(fake_server, tmp_path):
    fake_server.responder = new_story
    first = generate_llm_stories(4, seed=0, client=client(fake_server, tmp_path))
    n = fake_server.count
    again = generate_llm_stories(4, seed=0, cache_path=tmp_path / "stories.sqlite", base_url=fake_server.url)
    assert fake_server.count == n and again.requests == 0
    assert [s.sentences for s in again.stories] == [s.sentences for s in first.stories]
    assert all(s.meta["cached"] for s in again.stories)


def test_unparseable_answer_is_asked_again_with_a_new_sample(fake_server):
    fake_server.push_ok("Sorry, here are only two lines.\n1. A cat.\n2. It sat.")
    fake_server.responder = new_story
    out = generate_llm_stories(1, seed=0, client=client(fake_server))
    assert len(out.stories) == 1 and out.stories[0].meta["sample"] == 1 and fake_server.count == 2
    b0, b1 = (r["body"] for r in fake_server.requests)
    assert b0["messages"] == b1["messages"] and b0["seed"] != b1["seed"]  # a distinct sample is asked for


def test_failures_are_reported_not_dropped(fake_server):
    fake_server.responder = lambda body: "1. Only.\n2. Three.\n3. Lines."
    out = generate_llm_stories(2, seed=0, max_attempts=3, client=client(fake_server))
    assert out.stories == [] and len(out.failures) == 2 and fake_server.count == 6
    f = out.failures[0]
    assert f["request_index"] == 0 and f["attempts"] == 3 and len(f["errors"]) == 3
    assert "expected 6 sentences, parsed 3" in f["reason"] and len(f["examples"]) == 3
    # transport failures count as failed attempts too; the batch goes on
    fake_server.responder = new_story
    for _ in range(4):
        fake_server.push_status(500)
    out = generate_llm_stories(2, seed=0, max_attempts=2, client=client(fake_server, max_retries=1))
    assert len(out.failures) == 1 and "InternalServerError" in out.failures[0]["reason"]
    assert len(out.stories) == 1 and out.stories[0].meta["request_index"] == 1


def test_parse_story_and_bad_arguments(fake_server):
    six = [f"Sentence {k}." for k in range(1, 7)]
    assert parse_story("\n".join(f"{k}) {s}" for k, s in enumerate(six, 1))) == six
    assert parse_story("\n\n".join(six) + "\n") == six
    with pytest.raises(ValueError, match="expected 6"):
        parse_story("\n".join(six[:5]))
    with pytest.raises(ValueError, match="n_examples"):
        generate_llm_stories(1, n_examples=11, client=client(fake_server))
    with pytest.raises(ValueError, match="max_attempts"):
        generate_llm_stories(1, max_attempts=0, client=client(fake_server))


def test_generation_never_leaks_the_key(monkeypatch, fake_server, tmp_path, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    fake_server.push_status(500, f"bad key {KEY}").push_status(500, f"bad key {KEY}")
    fake_server.responder = new_story
    c = LLMClient(base_url=fake_server.url, cache_path=tmp_path / "c.sqlite", max_retries=1, backoff_s=0.0)
    out = generate_llm_stories(2, seed=0, client=c, max_attempts=1)
    assert len(out.failures) == 1 and "***" in out.failures[0]["reason"]
    dumped = json.dumps({"stories": [s.__dict__ for s in out.stories], "failures": out.failures})
    assert KEY not in dumped and KEY not in caplog.text
    assert KEY.encode() not in (tmp_path / "c.sqlite").read_bytes()


@pytest.mark.parametrize("script", [
    pytest.param(lambda s: s.push_slow(3.0), id="slow answer"),
    pytest.param(lambda s: s.push_status(429), id="429"),
    pytest.param(lambda s: s.push_status(500), id="500"),
    pytest.param(lambda s: s.push_ok("1. A fox.\n2. It ran."), id="malformed"),
])
def test_each_failure_mode_is_retried_then_the_story_arrives(fake_server, script):
    # One bad answer, then good ones: the story still arrives, from the second request.
    script(fake_server)
    fake_server.responder = new_story
    out = generate_llm_stories(1, seed=0, max_attempts=3, client=client(fake_server, max_retries=1))
    assert len(out.stories) == 1 and out.failures == [] and fake_server.count == 2
    assert len(out.stories[0].sentences) == 6


def test_refused_connection_is_reported_as_a_failure():
    from fake_openai import refused_url

    c = LLMClient(base_url=refused_url(), timeout=1.0, max_retries=1, backoff_s=0.0)
    out = generate_llm_stories(2, seed=0, max_attempts=2, client=c)
    assert out.stories == [] and [f["request_index"] for f in out.failures] == [0, 1]
    assert all("APIConnectionError" in f["reason"] for f in out.failures), out.failures[0]["reason"]
