"""The toy world's words for the rule-based memory, and the explicit captions of a toy story's frames.

    memory = RuleMemory(toy_vocabulary())
    q = memory_quality(memory, stories, vocabulary=toy_vocabulary(), captions=explicit_captions)
"""
from __future__ import annotations

import functools

from acdc_lib.memory import Vocabulary
from acdc_lib.toyworld import world as W
from acdc_lib.types import Story


@functools.lru_cache(maxsize=1)
def model_words() -> frozenset[str]:
    """Every word the toy models' tokenizer knows (`acdc_lib.toyworld.text.vocabulary`, which their
    training builds the tokenizer from); any other word reaches them as <unk>."""
    from acdc_lib.toyworld.text import vocabulary

    return frozenset(vocabulary())


def toy_vocabulary() -> Vocabulary:
    """The toy world's vocabulary (acdc_lib.toyworld.world), with its explicit-caption style."""

    def caption(name: str, species: str, action: str, place: str, time: str) -> str:
        gender = W.NAMES.get(name, W.GENDERS[0])  # gender only picks pronouns; captions do not show it
        return W.explicit_caption(W.SceneState(place=place, time=time, name=name, species=species,
                                               gender=gender, action=action))

    # Words that say which time of day a sentence shows (the grammar's "One sunny morning", "under
    # the moon", "Night fell ...", and common free-text ones). At equal positions the longer phrase
    # wins, so "the sun went down" reads as night.
    time_words = {
        "day": ("during the day", "daytime", "day", "sun", "sunny", "morning", "afternoon", "daylight",
                "dawn", "sunrise", "sun rose", "sun came up"),
        "night": ("at night", "nighttime", "night", "moon", "moonlit", "moonlight", "midnight", "evening",
                  "dusk", "sunset", "sun went down", "sun set", "stars", "starry"),
    }
    return Vocabulary(
        names=dict(W.NAMES),
        species=tuple(W.SPECIES),
        places=tuple(W.PLACES),
        place_phrases={p: W.place_phrase(p) for p in W.PLACES},
        times={t: time_words.get(t, (t,)) for t in W.TIMES},
        time_phrases=dict(W.TIME_PHRASES),
        actions={a: tuple(dict.fromkeys((v.base, v.present, v.past, v.ing))) for a, v in W.VERBS.items()},
        caption=caption,
        model_words=model_words,
    )


def explicit_captions(story: Story) -> list[str]:
    """The fully explicit caption of every frame of a toy story (from its ground-truth states)."""
    if not story.states:
        raise ValueError(f"story {story.story_id!r} has no ground-truth states (source {story.source!r}); "
                         "memory quality needs toy-world stories with states")
    if len(story.states) != len(story.sentences):
        raise ValueError(f"story {story.story_id!r}: {len(story.states)} states for {len(story.sentences)} sentences")
    return [W.explicit_caption(W.SceneState.from_dict(d)) for d in story.states]
