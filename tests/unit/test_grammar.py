"""The story grammar: seeded and reproducible, paper-shaped, and honest about what each sentence states."""
from __future__ import annotations

import re

import pytest

from acdc_lib.toyworld.grammar import (
    ATTRIBUTES,
    ambiguous_alone,
    generate_sentences,
    generate_stories,
)
from acdc_lib.toyworld.world import NAMES, PLACES, PRONOUNS, SPECIES, SceneState, X_RANGE

STORIES = generate_stories(300, seed=5)


def _has_word(text: str, phrase: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text, flags=re.IGNORECASE) is not None


def test_same_seed_same_stories_and_story_i_does_not_depend_on_n_or_start():
    again = generate_stories(300, seed=5)
    assert [s.sentences for s in again] == [s.sentences for s in STORIES]
    assert [s.states for s in again] == [s.states for s in STORIES]
    piece = generate_stories(3, seed=5, start=120)
    assert [s.sentences for s in piece] == [s.sentences for s in STORIES[120:123]]
    assert [s.story_id for s in piece] == ["g5-000120", "g5-000121", "g5-000122"]


def test_different_seeds_give_different_stories():
    other = generate_stories(50, seed=6)
    same = sum(a.sentences == b.sentences for a, b in zip(other, STORIES[:50]))
    assert same == 0


def test_stories_have_six_sentences_each_with_a_valid_state():
    for s in STORIES:
        assert len(s.sentences) == 6 and len(s.states) == 6 and s.source == "grammar"
        states = [SceneState.from_dict(d) for d in s.states]
        # One character per story: same name, species and gender in every frame.
        assert len({(st.name, st.species, st.gender) for st in states}) == 1
        assert NAMES[states[0].name] == states[0].gender
        assert all(X_RANGE[0] <= st.x <= X_RANGE[1] for st in states)


def test_first_sentence_names_character_species_place_and_time():
    for s in STORIES:
        st = s.states[0]
        first = s.sentences[0]
        assert s.meta["explicit"][0] == list(ATTRIBUTES)
        assert _has_word(first, st["name"]) and _has_word(first, st["species"]) and _has_word(first, st["place"])
        time_words = ("sunny", "sun") if st["time"] == "day" else ("night", "moon", "moonlit")
        assert any(_has_word(first, w) for w in time_words)
        assert not ambiguous_alone(s.meta["explicit"][0])


def test_every_later_sentence_is_ambiguous_alone_and_changes_something():
    for s in STORIES:
        for i in range(1, 6):
            assert ambiguous_alone(s.meta["explicit"][i]), s.sentences[i]
            a, b = s.states[i - 1], s.states[i]
            assert (a["action"], a["place"], a["time"]) != (b["action"], b["place"], b["time"]), s.sentences
        n_time_changes = sum(s.states[i]["time"] != s.states[i - 1]["time"] for i in range(1, 6))
        assert n_time_changes <= 1


def test_explicit_attributes_match_the_words_of_each_sentence():
    # "name"/"species"/"place" are listed as explicit exactly when the sentence contains the word.
    for s in STORIES:
        for text, st, explicit in zip(s.sentences, s.states, s.meta["explicit"]):
            assert ("name" in explicit) == _has_word(text, st["name"]), text
            assert ("species" in explicit) == _has_word(text, st["species"]), text
            assert ("place" in explicit) == _has_word(text, st["place"]), text
            others = [p for p in PLACES if p != st["place"]] + [sp for sp in SPECIES if sp != st["species"]]
            assert not any(_has_word(text, w) for w in others), text


def test_mentions_use_the_pronoun_of_the_characters_gender():
    for s in STORIES:
        for text, st, mention in zip(s.sentences, s.states, s.meta["mentions"]):
            subject = PRONOUNS[st["gender"]]["subject"]
            wrong = PRONOUNS["female" if st["gender"] == "male" else "male"]["subject"]
            assert _has_word(text, subject) == (mention == "pronoun"), text
            assert not _has_word(text, wrong), text


def test_story_variety_covers_the_vocabulary():
    first = [s.states[0] for s in STORIES]
    assert {d["species"] for d in first} == set(SPECIES)
    assert {d["place"] for d in first} == set(PLACES)
    mentions = {m for s in STORIES for m in s.meta["mentions"][1:]}
    assert {"pronoun", "species", "name", "none"} <= mentions
    assert len({tuple(s.sentences) for s in STORIES}) == len(STORIES)


def test_bad_arguments_are_refused():
    import numpy as np

    with pytest.raises(ValueError, match="n_sentences"):
        generate_sentences(np.random.default_rng(0), 0)
    with pytest.raises(ValueError, match="non-negative"):
        generate_stories(3, seed=-1)
    with pytest.raises(ValueError, match="unknown attribute"):
        ambiguous_alone(["colour"])
