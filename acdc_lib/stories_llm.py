"""LLM-written stories by self-instruct (paper Sec. 4 "Benchmark dataset generation", Appendix C).

The paper wrote 10 example stories by hand and asked gpt-4o-mini for new ones at temperature 1.0,
each request showing 3 examples drawn at random (Alg. 1, Table 4). We do the same with our own
seed stories (`acdc_lib/data/seed_stories.jsonl`, our words, the toy grammar's shape: sentence 1
names the character, its species and the place; later sentences refer back by pronoun or species)
and our own prompt wording.

    out = generate_llm_stories(100, cache_path="data/llm_cache.sqlite")   # OPENAI_API_KEY from the env
    out.stories[0].sentences, out.failures

Every request goes through `LLMClient`, so a rerun with the same cache costs nothing. An answer that
does not parse into exactly six sentences is asked again with a new sample index (a distinct sample
at temperature 1.0); after `max_attempts` the request is reported in `failures` with its reasons,
never silently dropped or padded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .llm import InvalidAnswer, LLMClient, LLMError
from .memory import parse_numbered_lines
from .types import Story

SEED_STORIES_PATH = Path(__file__).resolve().parent / "data" / "seed_stories.jsonl"
N_SENTENCES = 6  # the paper's stories have 6 sentences (Sec. 4)

# Our wording of the structure of the paper's Table 4: a system prompt with the examples between
# triple quotes, then a user turn asking for one new story.
SYSTEM_PROMPT = '''You write short, vivid stories that a text-to-image model can illustrate, one picture per sentence. Each story has exactly {n} sentences, one per line.
Below are {k} example stories, each delimited by """.
{examples}'''

USER_PROMPT = '''Write one new story like the examples: exactly {n} sentences, one per line, numbered 1 to {n}.
The main character is an animal with a name. Sentence 1 gives its name, its species and the place it is in (and whether it is day or night). The following sentences describe what the character does next, mostly referring to it as he, she or "the <species>" rather than by name; the place or the time of day may change.
Keep each sentence simple and concise. Be creative and do not copy the examples.
Story:'''


@dataclass
class LLMStoriesOutput:
    """Stories written by the LLM and the requests that gave none.

    Args:
        stories: Story(source="llm") with meta {model, request_index, sample, examples, temperature, seed, cached}.
        failures: one dict per request without a valid story: request_index, reason, attempts, errors, examples.
        requests: requests that reached the server in total (0 on a fully cached rerun).
    """

    stories: list[Story]
    failures: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0


def load_seed_stories(path: str | Path = SEED_STORIES_PATH) -> list[Story]:
    """The hand-written seed stories (a story file in the `acdc_lib.stories` format, source "seed")."""
    from .stories import read_stories

    return read_stories(path)


def story_messages(examples: Sequence[Story], n_sentences: int = N_SENTENCES) -> list[dict[str, str]]:
    """The chat messages of one self-instruct request showing `examples` (Alg. 1 of the paper)."""
    blocks = "\n".join('"""\n' + "\n".join(ex.sentences) + '\n"""' for ex in examples)
    return [{"role": "system", "content": SYSTEM_PROMPT.format(n=n_sentences, k=len(examples), examples=blocks)},
            {"role": "user", "content": USER_PROMPT.format(n=n_sentences)}]


def parse_story(text: str, n_sentences: int = N_SENTENCES) -> list[str]:
    """The sentences of an answer (numbered or plain lines, prose around dropped); InvalidAnswer unless exactly n."""
    got = parse_numbered_lines(text)
    if len(got) != n_sentences:
        raise InvalidAnswer(f"expected {n_sentences} sentences, parsed {len(got)}")
    return got


def _api_seed(seed: int, request_index: int, sample: int) -> int:
    # A distinct, reproducible server seed per (run seed, request, sample): the same seed with the
    # same examples would otherwise ask for the same sample twice.
    return int(np.random.SeedSequence([seed, request_index, sample]).generate_state(1)[0] % (2**31 - 1))


def generate_llm_stories(
    n: int,
    *,
    model: str = "gpt-4o-mini",
    base_url: str | None = None,
    timeout: float = 60.0,
    seed: int = 0,
    cache_path: str | Path | None = None,
    temperature: float = 1.0,
    n_examples: int = 3,
    max_attempts: int = 3,
    seed_stories: Sequence[Story] | None = None,
    n_sentences: int = N_SENTENCES,
    client: LLMClient | None = None,
) -> LLMStoriesOutput:
    """Ask an LLM for `n` new stories, each request showing `n_examples` random seed stories.

    Args:
        n: number of requests (stories asked for).
        model, base_url, timeout, cache_path: passed to `LLMClient` (key from OPENAI_API_KEY only).
        seed: run seed; request i draws its examples from numpy `default_rng([seed, i])`, so request
            i's examples depend on (seed, i) alone.
        temperature: sampling temperature (paper: 1.0, Appendix C).
        n_examples: in-context examples per request (paper: 3 of 10).
        max_attempts: samples asked per request before it is reported as a failure.
        seed_stories: the examples to sample from (default: `load_seed_stories()`).
        n_sentences: sentences per story (paper: 6).
        client: a ready `LLMClient` (then model/base_url/timeout/cache_path are not used).
    Returns:
        LLMStoriesOutput(stories, failures, requests); len(stories) + len(failures) == n.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
    seeds = list(seed_stories) if seed_stories is not None else load_seed_stories()
    if not 1 <= n_examples <= len(seeds):
        raise ValueError(f"n_examples must be in [1, {len(seeds)}] (the number of seed stories), got {n_examples}")
    if client is None:
        client = LLMClient(model=model, base_url=base_url, timeout=timeout, cache_path=cache_path)

    stories: list[Story] = []
    failures: list[dict[str, Any]] = []
    total_requests = 0
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        picked = [seeds[j] for j in rng.choice(len(seeds), size=n_examples, replace=False)]
        messages = story_messages(picked, n_sentences)
        errors: list[str] = []
        for sample in range(max_attempts):
            try:
                res = client.chat(messages, temperature=temperature, seed=_api_seed(seed, i, sample),
                                  validate=lambda t: parse_story(t, n_sentences), sample=sample,
                                  retry_invalid=False)  # a new sample index instead (this loop)
            except LLMError as e:
                total_requests += getattr(e, "requests", 0)
                errors.append(client.scrub(f"sample {sample}: {e}"))
                continue
            total_requests += res.requests
            stories.append(Story(
                story_id=f"llm-s{seed}-{i:05d}", sentences=res.value, states=None, source="llm",
                meta={"model": client.model, "request_index": i, "sample": sample,
                      "examples": [s.story_id for s in picked], "temperature": temperature, "seed": seed,
                      "cached": res.cached}))
            break
        else:
            failures.append({"request_index": i, "reason": errors[-1], "attempts": max_attempts,
                             "errors": errors, "examples": [s.story_id for s in picked]})
    return LLMStoriesOutput(stories=stories, failures=failures, requests=total_requests)
