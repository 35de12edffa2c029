"""Toy-world stories: scene-state validation, the referential and explicit variants, and statistics.

Story files are `acdc_lib.stories` files whose states are `SceneState` dicts; `check_toy_state`
validates one (and fills in its defaults), `read_toy_stories` reads a file with it.

The referential variant applies StoryGPT-V's Algorithm 1 (`acdc_lib.stories.referential_extension`)
to a grammar story: later mentions of the character become "he" / "she". Its inverse is the fully
explicit caption of every frame (`explicit_variant`), on which the diffusion model is trained.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from acdc_lib.stories import DEFAULT_MAX_TOKENS, read_stories, referential_extension
from acdc_lib.toyworld.grammar import VISUAL_ATTRIBUTES, ambiguous_alone
from acdc_lib.toyworld.world import PRONOUNS, SceneState, explicit_caption
from acdc_lib.types import Story


# --------------------------------------------------------------------------------------------
# Scene states in story files
# --------------------------------------------------------------------------------------------
def check_toy_state(d: dict[str, Any]) -> dict[str, Any]:
    """One state dict validated as a `SceneState` (ValueError naming the problem), with defaults filled in."""
    return SceneState.from_dict(d).to_dict()


class WorldV1StoriesWarning(UserWarning):
    """A story file written by the version-1 grammar: readable, but its frames carry no identity."""


def read_toy_stories(path: str | Path, n_sentences: int | None = 6,
                     max_tokens: int | None = DEFAULT_MAX_TOKENS) -> list[Story]:
    """`acdc_lib.stories.read_stories` with every state validated as a toy `SceneState`.

    Version-1 grammar stories (no marking, collar or layout: they render as plain, collarless, layout 0)
    are still read, with a WorldV1StoriesWarning that says how to regenerate the splits.
    """
    import warnings

    from acdc_lib.toyworld.grammar import GRAMMAR_VERSION

    stories = read_stories(path, n_sentences=n_sentences, max_tokens=max_tokens, check_state=check_toy_state)
    old = sorted({st.meta.get("grammar_version") for st in stories
                  if st.source == "grammar" and st.meta.get("grammar_version", GRAMMAR_VERSION) < GRAMMAR_VERSION})
    if old:
        warnings.warn(f"{path} holds stories of grammar version(s) {old} (world version 1: no coat marking, collar "
                      f"or layout variant, x off the grid); today's models are trained on version {GRAMMAR_VERSION}. "
                      f"Regenerate with `python -m acdc_lib.toyworld.splits make-splits`.", WorldV1StoriesWarning,
                      stacklevel=2)
    return stories


# --------------------------------------------------------------------------------------------
# Referential extension of toy stories and its inverse
# --------------------------------------------------------------------------------------------
def _aliases_for(state: Mapping[str, Any]) -> list[str]:
    # How the grammar and the LLM prompts name a toy character.
    name, sp = state["name"], state["species"]
    return [f"{name} the {sp}", f"{name}, the {sp},", f"{name}, a young {sp},", name, f"the {sp}"]


def referential_variant(story: Story, carry: str = "previous") -> Story:
    """The story with its later mentions of the character replaced by he/she (Algorithm 1).

    Needs ground-truth states: the character of each frame is the state's name (in every frame).
    meta["explicit"] (grammar stories) is updated: a replaced mention no longer states the name
    or species.
    """
    if story.states is None:
        raise ValueError(f"story {story.story_id!r} has no states; pass character sets to referential_extension")
    chars = [{st["name"]} for st in story.states]
    genders = {st["name"]: st["gender"] for st in story.states}
    aliases: dict[str, list[str]] = {}
    for st in story.states:
        aliases.setdefault(st["name"], _aliases_for(st))
    new = referential_extension(story.sentences, chars, genders, aliases, carry=carry, pronouns=PRONOUNS)
    meta = {**story.meta, "parent": story.story_id, "carry": carry}
    if "explicit" in story.meta:
        meta["explicit"] = [
            e if old == nw else [a for a in e if a not in ("name", "species")]
            for e, old, nw in zip(story.meta["explicit"], story.sentences, new)
        ]
    if "mentions" in story.meta:
        meta["mentions"] = [
            m if old == nw else "pronoun" for m, old, nw in zip(story.meta["mentions"], story.sentences, new)
        ]
    return Story(story_id=f"{story.story_id}-ref", sentences=new, states=story.states, source="referential",
                 meta=meta)


def explicit_variant(story: Story) -> Story:
    """The inverse of the referential extension: every sentence replaced by its frame's explicit caption."""
    if story.states is None:
        raise ValueError(f"story {story.story_id!r} has no states to caption")
    sents = [explicit_caption(SceneState.from_dict(st)) for st in story.states]
    meta = {**story.meta, "parent": story.story_id}
    if "explicit" in story.meta:
        meta["explicit"] = [["name", "species", "place", "time", "action"] for _ in sents]
        meta["mentions"] = ["name_species" for _ in sents]
    return Story(story_id=f"{story.story_id}-exp", sentences=sents, states=story.states, source="explicit", meta=meta)


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------
@dataclass
class StoryStats:
    """Counts over a set of stories with ground-truth states.

    Args:
        n_stories, n_sentences: sizes.
        frames: attribute ("species", "place", "time", "action") -> value -> number of frames.
        first_frames: the same over sentence 1 only (what each story starts with).
        mentions: how sentences mention the character (grammar meta) -> count.
        ambiguous: sentences that are ambiguous alone (they leave out species, place, time or
            action that their frame shows), from meta["explicit"]; None when stories lack it.
        ambiguous_by_position: per sentence index, the number ambiguous alone.
        missing: per visual attribute, the sentences that do not state it (None without meta).
        changes: what changes from one sentence to the next ("action", "place", "time") -> count.
    """

    n_stories: int
    n_sentences: int
    frames: dict[str, dict[str, int]]
    first_frames: dict[str, dict[str, int]]
    mentions: dict[str, int]
    ambiguous: int | None
    ambiguous_by_position: list[int] | None
    changes: dict[str, int]
    missing: dict[str, int] | None = None

    @property
    def ambiguous_share(self) -> float | None:
        """Fraction of all sentences that are ambiguous alone."""
        return None if self.ambiguous is None else self.ambiguous / self.n_sentences


def story_statistics(stories: Sequence[Story]) -> StoryStats:
    """Count species, places, times, actions, mentions, changes and ambiguous-alone sentences."""
    keys = ("species", "place", "time", "action")
    frames = {k: {} for k in keys}
    first = {k: {} for k in keys}
    mentions: dict[str, int] = {}
    changes = {"action": 0, "place": 0, "time": 0}
    n_sent = 0
    have_explicit = all("explicit" in s.meta for s in stories)
    amb = 0
    missing = {a: 0 for a in VISUAL_ATTRIBUTES}
    by_pos = [0] * max((len(s) for s in stories), default=0)
    for s in stories:
        if s.states is None:
            raise ValueError(f"story {s.story_id!r} has no states; statistics need ground truth")
        n_sent += len(s)
        for i, st in enumerate(s.states):
            for k in keys:
                frames[k][st[k]] = frames[k].get(st[k], 0) + 1
                if i == 0:
                    first[k][st[k]] = first[k].get(st[k], 0) + 1
            if i > 0:
                for k in changes:
                    changes[k] += st[k] != s.states[i - 1][k]
        for m in s.meta.get("mentions", []):
            mentions[m] = mentions.get(m, 0) + 1
        if have_explicit:
            for i, e in enumerate(s.meta["explicit"]):
                a = ambiguous_alone(e)
                amb += a
                by_pos[i] += a
                for attr in missing:
                    missing[attr] += attr not in e
    sort = lambda d: dict(sorted(d.items(), key=lambda kv: (-kv[1], kv[0])))  # noqa: E731
    return StoryStats(
        n_stories=len(stories), n_sentences=n_sent, frames={k: sort(v) for k, v in frames.items()},
        first_frames={k: sort(v) for k, v in first.items()}, mentions=sort(mentions),
        ambiguous=amb if have_explicit else None, ambiguous_by_position=by_pos if have_explicit else None,
        changes=changes, missing=missing if have_explicit else None,
    )


def format_statistics(stats: StoryStats) -> str:
    """A plain-text table of `story_statistics` (integers and shares rounded to 0.1%)."""
    pct = lambda n, d: f"{100 * n / d:.1f}%" if d else "-"  # noqa: E731
    out = [f"{stats.n_stories} stories, {stats.n_sentences} sentences"]
    for k, counts in stats.frames.items():
        out.append(f"{k:8s} (frames): " + ", ".join(f"{v} {n} ({pct(n, stats.n_sentences)})" for v, n in counts.items()))
    out.append("mentions: " + ", ".join(f"{m} {n}" for m, n in stats.mentions.items()))
    n_later = stats.n_sentences - stats.n_stories
    out.append("changes to the next sentence: " + ", ".join(f"{k} {n} ({pct(n, n_later)})" for k, n in stats.changes.items()))
    if stats.ambiguous is not None:
        out.append(f"ambiguous alone: {stats.ambiguous} of {stats.n_sentences} sentences ({pct(stats.ambiguous, stats.n_sentences)}); "
                   f"by position: {stats.ambiguous_by_position}")
        out.append("sentences that do not state: " + ", ".join(
            f"{a} {n} ({pct(n, stats.n_sentences)})" for a, n in stats.missing.items()))
    return "\n".join(out)
