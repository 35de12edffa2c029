"""A seeded grammar that writes toy-world stories shaped like the ACDC benchmark's (paper section 4.1).

A story has 6 sentences (by default). Sentence 1 names the character, its species, the place, the
time of day and what it is doing ("Max the corgi was sitting in the park on a sunny day."). Each later
sentence changes the action, sometimes the place ("Then she ran to the beach.") or the time ("Night
fell over the beach."), and refers to the character by pronoun, by species ("The corgi") or by name,
so that a later sentence alone never states everything its frame shows. Every sentence carries its
ground-truth `SceneState` and the list of attributes it states explicitly, from which notebook 01
counts the sentences that are ambiguous alone.

Story i of `generate_stories(n, seed)` is drawn from `numpy.random.default_rng([seed, i])`, so it
does not depend on n, on the other stories, or on any global seed.

Version 2 (world version 2) also draws what no sentence states: the character's coat marking and
collar colour, once per story, and a layout variant for every place, kept whenever the story is (or
returns) there; x lies on the grid X_POSITIONS, and running moves it RUN_CELLS cells the way the
character faces, turning at the edges (a place change puts it anywhere on the grid, facing either way).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from acdc_lib.toyworld.world import (
    ACCESSORIES,
    ACTIONS,
    FACINGS,
    MARKINGS,
    N_LAYOUTS,
    NAMES,
    PLACES,
    RUN_CELLS,
    SPECIES,
    TIMES,
    VERBS,
    X_POSITIONS,
    SceneState,
    place_phrase,
    x_cell,
)
from acdc_lib.types import Story

GRAMMAR_VERSION = 2

# Attributes a sentence can state; the frame needs the visual ones (the name is not drawn).
ATTRIBUTES: tuple[str, ...] = ("name", "species", "place", "time", "action")
VISUAL_ATTRIBUTES: tuple[str, ...] = ("species", "place", "time", "action")
# How a sentence mentions the character.
MENTIONS: tuple[str, ...] = ("name_species", "name", "species", "pronoun", "none")

# Probabilities of what a later sentence changes, and of how it mentions the character.
EVENT_PROBS: dict[str, float] = {"action": 0.6, "place": 0.25, "time": 0.15}
MENTION_PROBS: dict[str, float] = {"pronoun": 0.45, "species": 0.35, "name": 0.2}
# Optional endings after an action's verb in later sentences; they add variety, not state.
ACTION_ENDINGS: dict[str, tuple[str, ...]] = {
    "stand": ("", " still", " up"),
    "sit": ("", " down", " quietly"),
    "jump": ("", " high", " into the air"),
    "run": ("", " around", " fast"),
    "lie": ("", " to rest"),
    "sniff": ("", " curiously"),
}
MAX_TIME_CHANGES = 1  # day and night swap at most once per story, as in the paper's examples


@dataclass
class GrammarSentence:
    """One generated sentence with its ground truth.

    Args:
        text: the sentence.
        state: the full scene state of its frame.
        explicit: the ATTRIBUTES the sentence states itself (sorted in ATTRIBUTES order).
        mention: how it mentions the character, one of MENTIONS.
    """

    text: str
    state: SceneState
    explicit: list[str]
    mention: str


def ambiguous_alone(explicit: Sequence[str]) -> bool:
    """True when a sentence that states `explicit` does not say everything its frame shows.

    A frame shows the species, the place, the time (sun or moon) and the action; a sentence is
    ambiguous alone when it leaves out any of them.
    """
    unknown = set(explicit) - set(ATTRIBUTES)
    if unknown:
        raise ValueError(f"unknown attribute(s) {sorted(unknown)}; allowed: {ATTRIBUTES}")
    return not set(VISUAL_ATTRIBUTES) <= set(explicit)


def _pick(rng: np.random.Generator, options: Sequence):
    return options[int(rng.integers(len(options)))]


def _pick_weighted(rng: np.random.Generator, probs: dict[str, float]) -> str:
    keys = list(probs)
    p = np.array([probs[k] for k in keys], dtype=float)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _subject(state: SceneState, mention: str, capital: bool) -> str:
    # The text of a character mention in subject position.
    if mention == "pronoun":
        word = state.pronoun
    elif mention == "species":
        word = f"the {state.species}"
    elif mention == "name":
        return state.name
    elif mention == "name_species":
        return f"{state.name} the {state.species}"
    else:
        raise ValueError(f"unknown mention {mention!r}; allowed: {MENTIONS}")
    return word[0].upper() + word[1:] if capital else word


def _mention_attrs(mention: str) -> list[str]:
    return {"name_species": ["name", "species"], "name": ["name"], "species": ["species"]}.get(mention, [])


def _ordered(attrs: Sequence[str]) -> list[str]:
    return [a for a in ATTRIBUTES if a in set(attrs)]


def _first_sentence(rng: np.random.Generator, s: SceneState) -> GrammarSentence:
    # Sentence 1 states name, species, place, time and action (the paper's first prompt sets the scene).
    v = VERBS[s.action]
    where = place_phrase(s.place)
    template = int(rng.integers(3))
    if template == 0:
        when = "on a sunny day" if s.time == "day" else "at night"
        text = f"{s.name} the {s.species} was {v.ing} {where} {when}."
    elif template == 1:
        when = "One sunny morning" if s.time == "day" else "One moonlit night"
        text = f"{when}, {s.name} the {s.species} {v.past} {where}."
    else:
        sky = "under the bright sun" if s.time == "day" else "under the moon"
        text = f"{s.name}, a young {s.species}, {v.past} {where} {sky}."
    return GrammarSentence(text, s, list(ATTRIBUTES), "name_species")


def move(x: float, facing: str, action: str) -> tuple[float, str]:
    """(x, facing) after `action`: running moves the character RUN_CELLS grid cells the way it faces,
    turning at the edges; every other action keeps both."""
    if action != "run":
        return x, facing
    step = RUN_CELLS if facing == "right" else -RUN_CELLS
    cell = x_cell(x)
    if not 0 <= cell + step < len(X_POSITIONS):
        facing = "left" if facing == "right" else "right"
        step = -step
    return X_POSITIONS[cell + step], facing


def _move(rng: np.random.Generator, s: SceneState, action: str) -> tuple[float, str]:
    return move(s.x, s.facing, action)


def _later_sentence(rng: np.random.Generator, prev: SceneState, allow_time: bool = True,
                    layouts: dict[str, int] | None = None) -> GrammarSentence:
    # A later sentence: change the action, the place or the time; mention by pronoun/species/name.
    probs = EVENT_PROBS if allow_time else {k: p for k, p in EVENT_PROBS.items() if k != "time"}
    event = _pick_weighted(rng, probs)
    mention = _pick_weighted(rng, MENTION_PROBS)
    if event == "action":
        action = _pick(rng, [a for a in ACTIONS if a != prev.action])
        x, facing = _move(rng, prev, action)
        s = prev.replace(action=action, x=x, facing=facing)
        lead = _pick(rng, ["", "Then ", "After a while, ", "Suddenly, "])
        subj = _subject(s, mention, capital=not lead)
        text = f"{lead}{subj} {VERBS[action].past}{_pick(rng, ACTION_ENDINGS[action])}."
        explicit = ["action", *_mention_attrs(mention)]
    elif event == "place":
        place = _pick(rng, [p for p in PLACES if p != prev.place])
        template = int(rng.integers(3))
        action = "run" if template < 2 else _pick(rng, ACTIONS)
        x = _pick(rng, X_POSITIONS)
        s = prev.replace(place=place, action=action, x=x, facing=_pick(rng, FACINGS),
                         layout=(layouts or {}).get(place, 0))
        if template == 0:
            text = f"Then {_subject(s, mention, False)} ran to the {place}."
        elif template == 1:
            text = f"{_subject(s, mention, True)} ran off to the {place}."
        else:
            text = f"Later, {_subject(s, mention, False)} {VERBS[action].past} {place_phrase(place)}."
        explicit = ["place", "action", *_mention_attrs(mention)]
    else:  # time
        time = "night" if prev.time == "day" else "day"
        if rng.random() < 0.5:
            # No character in the sentence: the frame keeps the previous pose.
            s = prev.replace(time=time, n_suns=None, n_moons=None)
            text = f"Night fell over the {s.place}." if time == "night" else f"The sun rose over the {s.place}."
            explicit, mention = ["place", "time"], "none"
        else:
            action = _pick(rng, [a for a in ACTIONS if a != prev.action])
            x, facing = _move(rng, prev, action)
            s = prev.replace(time=time, action=action, x=x, facing=facing, n_suns=None, n_moons=None)
            lead = "As night fell, " if time == "night" else "When the sun came up, "
            text = f"{lead}{_subject(s, mention, False)} {VERBS[action].past}{_pick(rng, ACTION_ENDINGS[action])}."
            explicit = ["time", "action", *_mention_attrs(mention)]
    return GrammarSentence(text, s, _ordered(explicit), mention)


def generate_sentences(rng: np.random.Generator, n_sentences: int = 6) -> list[GrammarSentence]:
    """Draw one story's sentences from `rng`.

    Args:
        rng: numpy Generator; the only source of randomness.
        n_sentences: sentences per story (>= 1; the paper's benchmark uses 6).
    Returns:
        n_sentences `GrammarSentence`s; the first states every attribute.
    """
    if not isinstance(n_sentences, int) or n_sentences < 1:
        raise ValueError(f"n_sentences must be a positive int, got {n_sentences!r}")
    name = _pick(rng, list(NAMES))
    place = _pick(rng, PLACES)
    layouts = {p: int(rng.integers(N_LAYOUTS)) for p in PLACES}  # kept whenever the story is at p
    state = SceneState(
        place=place, time=_pick(rng, TIMES), name=name, species=_pick(rng, SPECIES),
        gender=NAMES[name], action=_pick(rng, ACTIONS), x=_pick(rng, X_POSITIONS), facing=_pick(rng, FACINGS),
        marking=_pick(rng, MARKINGS), accessory=_pick(rng, ACCESSORIES[1:]), layout=layouts[place],
    )
    out = [_first_sentence(rng, state)]
    while len(out) < n_sentences:
        n_time_changes = sum(a.state.time != b.state.time for a, b in zip(out, out[1:]))
        out.append(_later_sentence(rng, out[-1].state, allow_time=n_time_changes < MAX_TIME_CHANGES,
                                   layouts=layouts))
    return out


def to_story(sentences: Sequence[GrammarSentence], story_id: str, meta: dict | None = None) -> Story:
    """Pack generated sentences into a `Story` (states as dicts; explicit/mention lists in meta)."""
    return Story(
        story_id=story_id,
        sentences=[g.text for g in sentences],
        states=[g.state.to_dict() for g in sentences],
        source="grammar",
        meta={
            **(meta or {}),
            "grammar_version": GRAMMAR_VERSION,
            "explicit": [g.explicit for g in sentences],
            "mentions": [g.mention for g in sentences],
        },
    )


def generate_stories(
    n: int, seed: int = 0, *, start: int = 0, n_sentences: int = 6, prefix: str = "g"
) -> list[Story]:
    """Generate stories `start .. start+n-1` of the grammar stream `seed`.

    Args:
        n: number of stories.
        seed: stream seed; story i is drawn from numpy.random.default_rng([seed, i]).
        start: index of the first story (so a long stream can be generated in pieces).
        n_sentences: sentences per story (6 in the paper).
        prefix: story ids are f"{prefix}{seed}-{i:06d}".
    Returns:
        list of `Story` with source "grammar", states, and meta {seed, index, grammar_version,
        explicit, mentions}.
    """
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if not isinstance(seed, int) or seed < 0 or not isinstance(start, int) or start < 0:
        raise ValueError(f"seed and start must be non-negative ints, got seed={seed!r}, start={start!r}")
    stories = []
    for i in range(start, start + n):
        rng = np.random.default_rng([seed, i])
        sents = generate_sentences(rng, n_sentences)
        stories.append(to_story(sents, f"{prefix}{seed}-{i:06d}", {"seed": seed, "index": i}))
    return stories
