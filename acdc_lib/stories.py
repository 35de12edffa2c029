"""Story files: one validated JSONL format, the referential extension, and the fixed splits.

File format (schema "acdc-stories", version 1), one JSON object per line, UTF-8, no blank lines:

    line 1   {"schema": "acdc-stories", "version": 1, "kind": "grammar", "n_sentences": 6, "count": 1000}
    line 2+  {"story_id": "g1-000000", "sentences": [6 strings], "source": "grammar",
              "states": [6 scene-state dicts] or null, "meta": {...}}

The header names the schema and its version once for the whole file (a reader of another version
refuses the file instead of guessing), the kind of stories ("grammar", "llm", "referential",
"explicit", "mixed"), the sentences per story and the number of records (a truncated file is
caught). A record maps to `acdc_lib.types.Story`; `story_id`, `sentences` and `source` are
required, `states` and `meta` optional. Reading validates everything and raises `StoryFileError`
naming the file, the line and the problem; a sentence longer than the text encoders take is warned
about (never cut). Writing is atomic (`acdc_lib.io.atomic_write_text`).

The referential extension follows StoryGPT-V's Algorithm 1 (paper/002, Appendix D.2): a character
mention becomes "he" / "she" (one character) or "they" (several) where the sentence's characters
are a subset of the previous sentence's. Its inverse is the fully explicit caption of every frame
(`explicit_variant`), on which the diffusion model is trained.

Splits (`make_splits`, or `python -m acdc_lib.stories make-splits`): data/stories/test.jsonl, 1,000
grammar stories (stream seed 1) that no model trains on, committed; the train split (20,000 stories
of stream seed 0, minus any whose sentences equal a test story's) is regenerated deterministically
on demand into the git-ignored data/stories/.cache/ and checked against the SHA-256 in
data/stories/MANIFEST.json.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Iterable, Mapping, Sequence

from acdc_lib.io import DATA_DIR, atomic_write_json, atomic_write_text
from acdc_lib.toyworld.world import PRONOUNS, SceneState, explicit_caption
from acdc_lib.types import SCHEMA_VERSION, Story

SCHEMA_NAME = "acdc-stories"
KINDS: tuple[str, ...] = ("grammar", "llm", "referential", "explicit", "mixed")
HEADER_FIELDS: tuple[str, ...] = ("schema", "version", "kind", "n_sentences", "count")
RECORD_REQUIRED: tuple[str, ...] = ("story_id", "sentences", "source")
RECORD_OPTIONAL: tuple[str, ...] = ("states", "meta")
DEFAULT_MAX_TOKENS = 77  # CLIP's text context (SD v1.5's and our tiny CLIP's), BOS and EOS included

STORIES_DIR = DATA_DIR / "stories"
MANIFEST_PATH = STORIES_DIR / "MANIFEST.json"
CACHE_DIR = STORIES_DIR / ".cache"  # git-ignored (".cache/" in .gitignore)
SPLITS: dict[str, dict[str, Any]] = {
    # name -> stream seed, size, where it lives, whether the file is committed.
    "test": {"seed": 1, "n": 1000, "path": STORIES_DIR / "test.jsonl", "committed": True},
    "train": {"seed": 0, "n": 20000, "path": CACHE_DIR / "train.jsonl", "committed": False},
}


class StoryFileError(ValueError):
    """A story file that does not follow the format; the message names file:line and the problem."""


class LongSentenceWarning(UserWarning):
    """A sentence has more (estimated) tokens than the text encoders take; it is kept whole."""


# --------------------------------------------------------------------------------------------
# Token estimate
# --------------------------------------------------------------------------------------------
_PIECES = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+", re.IGNORECASE)


def estimate_clip_tokens(text: str) -> int:
    """Estimated CLIP BPE token count of `text`, BOS and EOS included.

    No CLIP vocabulary can be loaded here (no weights, no internet), so this is an estimate built on
    CLIP's own pre-tokenisation (its regex: contractions, letter runs, single digits, punctuation
    runs): each letter run counts ceil(len / 7) tokens (common English words up to 7 letters are
    one token in CLIP's 49k vocabulary; longer ones usually split), each digit and each punctuation
    run one token, plus 2 for BOS/EOS. On plain English it is exact for short common words and errs
    high for long rare words, so a sentence it passes is very unlikely to be truncated.
    """
    n = 2
    for piece in _PIECES.findall(text.lower()):
        n += math.ceil(len(piece) / 7) if piece[0].isalpha() else 1
    return n


# --------------------------------------------------------------------------------------------
# Validation shared by reading and writing
# --------------------------------------------------------------------------------------------
def _check_record(d: Any, n_sentences: int | None) -> list[str]:
    """Problems of one decoded record (empty list when valid), each phrased for a user."""
    if not isinstance(d, dict):
        return [f"expected a JSON object (a story record), got {type(d).__name__}"]
    unknown = sorted(set(d) - set(RECORD_REQUIRED) - set(RECORD_OPTIONAL))
    if unknown:
        return [f"unknown field(s) {unknown}; allowed: {list(RECORD_REQUIRED + RECORD_OPTIONAL)}"]
    missing = [k for k in RECORD_REQUIRED if k not in d]
    if missing:
        return [f"missing required field(s) {missing}"]
    sid = d["story_id"]
    if not isinstance(sid, str) or not sid.strip():
        return [f"'story_id' must be a non-empty string, got {sid!r}"]
    sents = d["sentences"]
    if not isinstance(sents, list) or not all(isinstance(s, str) for s in sents):
        what = type(sents).__name__ if not isinstance(sents, list) else "a list with non-strings"
        return [f"story {sid!r}: 'sentences' must be a list of strings, got {what}"]
    if n_sentences is not None and len(sents) != n_sentences:
        return [f"story {sid!r} has {len(sents)} sentences, expected {n_sentences}"]
    for k, s in enumerate(sents, start=1):
        if s == "":
            return [f"story {sid!r}: sentence {k} is empty"]
        if not s.strip():
            return [f"story {sid!r}: sentence {k} is only whitespace"]
        if "\n" in s or "\r" in s:
            return [f"story {sid!r}: sentence {k} contains a line break"]
    if not isinstance(d["source"], str) or not d["source"].strip():
        return [f"story {sid!r}: 'source' must be a non-empty string, got {d['source']!r}"]
    meta = d.get("meta", {})
    if not isinstance(meta, dict):
        return [f"story {sid!r}: 'meta' must be a JSON object, got {type(meta).__name__}"]
    states = d.get("states")
    if states is not None:
        if not isinstance(states, list):
            return [f"story {sid!r}: 'states' must be a list or null, got {type(states).__name__}"]
        if len(states) != len(sents):
            return [f"story {sid!r}: {len(states)} states for {len(sents)} sentences"]
        for k, st in enumerate(states, start=1):
            try:
                SceneState.from_dict(st)
            except (ValueError, TypeError) as e:
                return [f"story {sid!r}: state {k}: {e}"]
    return []


def _story_from_record(d: dict[str, Any]) -> Story:
    states = d.get("states")
    return Story(
        story_id=d["story_id"], sentences=list(d["sentences"]),
        states=None if states is None else [SceneState.from_dict(s).to_dict() for s in states],
        source=d["source"], meta=dict(d.get("meta", {})),
    )


def _story_to_record(s: Story) -> dict[str, Any]:
    return {"story_id": s.story_id, "sentences": list(s.sentences), "source": s.source,
            "states": s.states, "meta": s.meta}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed (JSON has no NaN or Infinity)")


# --------------------------------------------------------------------------------------------
# Reading and writing
# --------------------------------------------------------------------------------------------
def read_stories(
    path: str | Path, n_sentences: int | None = 6, max_tokens: int | None = DEFAULT_MAX_TOKENS
) -> list[Story]:
    """Read and validate a story file.

    Args:
        path: a JSONL story file (format in the module docstring).
        n_sentences: sentences every story must have (None: any number, as the header says).
        max_tokens: warn (LongSentenceWarning) about sentences with more estimated CLIP tokens
            (`estimate_clip_tokens`); None turns the check off. Sentences are never cut.
    Returns:
        the stories, in file order.
    Raises:
        StoryFileError naming "file:line" and the problem (the first one found).
    """
    path = Path(path)
    raw = path.read_bytes()

    def fail(line: int | None, msg: str) -> StoryFileError:
        return StoryFileError(f"{path}:{line}: {msg}" if line else f"{path}: {msg}")

    if not raw:
        raise fail(None, "file is empty; expected a header line "
                         f'{{"schema": "{SCHEMA_NAME}", "version": {SCHEMA_VERSION}, ...}} and story records')
    if raw.startswith(b"\xef\xbb\xbf"):
        raise fail(1, "starts with a UTF-8 byte-order mark; write the file as plain UTF-8")
    lines = raw.split(b"\n")
    if lines[-1] == b"":  # the final newline
        lines = lines[:-1]
    header: dict[str, Any] | None = None
    stories: list[Story] = []
    first_line: dict[str, int] = {}
    for no, bline in enumerate(lines, start=1):
        try:
            text = bline.decode("utf-8")
        except UnicodeDecodeError as e:
            raise fail(no, f"not valid UTF-8 (byte 0x{bline[e.start]:02x} at column {e.start + 1})") from None
        if not text.strip():
            raise fail(no, "blank line; records must be on consecutive lines")
        try:
            d = json.loads(text, parse_constant=_reject_constant)
        except json.JSONDecodeError as e:
            if e.msg == "Extra data":
                raise fail(no, f"extra data after the JSON object (column {e.colno}): {text[e.pos:e.pos + 20]!r}") from None
            raise fail(no, f"not valid JSON: {e.msg} (column {e.colno})") from None
        except ValueError as e:
            raise fail(no, str(e)) from None
        if header is None:
            header = _check_header(d, no, fail)
            if n_sentences is not None and header["n_sentences"] != n_sentences:
                raise fail(no, f"header says {header['n_sentences']} sentences per story, expected {n_sentences}")
            continue
        problems = _check_record(d, header["n_sentences"])
        if problems:
            raise fail(no, problems[0])
        sid = d["story_id"]
        if sid in first_line:
            raise fail(no, f"duplicate story_id {sid!r} (first on line {first_line[sid]})")
        first_line[sid] = no
        if max_tokens is not None:
            for k, s in enumerate(d["sentences"], start=1):
                n_tok = estimate_clip_tokens(s)
                if n_tok > max_tokens:
                    warnings.warn(
                        f"{path}:{no}: story {sid!r} sentence {k} has about {n_tok} tokens, more than the "
                        f"{max_tokens} the text encoders take; kept whole (encoders truncate it)",
                        LongSentenceWarning, stacklevel=2)
        stories.append(_story_from_record(d))
    if header is None:  # pragma: no cover - an empty file was caught above
        raise fail(None, "no header line")
    if header["count"] != len(stories):
        raise fail(None, f"file has {len(stories)} stories but its header says {header['count']} (truncated or appended?)")
    return stories


def _check_header(d: Any, no: int, fail) -> dict[str, Any]:
    if not isinstance(d, dict) or "schema" not in d:
        looks_like = "a story record" if isinstance(d, dict) and "story_id" in d else f"a {type(d).__name__}"
        raise fail(no, f'missing header: line 1 must be {{"schema": "{SCHEMA_NAME}", "version": '
                       f'{SCHEMA_VERSION}, "kind": ..., "n_sentences": ..., "count": ...}}, found {looks_like}')
    if d["schema"] != SCHEMA_NAME:
        raise fail(no, f"unknown schema {d['schema']!r}; this reader knows {SCHEMA_NAME!r}")
    unknown = sorted(set(d) - set(HEADER_FIELDS))
    if unknown:
        raise fail(no, f"unknown header field(s) {unknown}; allowed: {list(HEADER_FIELDS)}")
    missing = [k for k in HEADER_FIELDS if k not in d]
    if missing:
        raise fail(no, f"header is missing field(s) {missing}")
    if d["version"] != SCHEMA_VERSION:
        raise fail(no, f"unsupported schema version {d['version']!r}; this reader knows version {SCHEMA_VERSION}")
    if d["kind"] not in KINDS:
        raise fail(no, f"unknown kind {d['kind']!r}; allowed: {list(KINDS)}")
    for k in ("n_sentences", "count"):
        if isinstance(d[k], bool) or not isinstance(d[k], int) or d[k] < (1 if k == "n_sentences" else 0):
            raise fail(no, f"header field {k!r} must be a {'positive' if k == 'n_sentences' else 'non-negative'} int, got {d[k]!r}")
    return d


def format_stories(stories: Sequence[Story], kind: str | None = None) -> str:
    """The file text of `stories` (validated; ValueError names the bad story and the problem)."""
    stories = list(stories)
    if not stories:
        raise ValueError("no stories to write")
    n = len(stories[0].sentences)
    if kind is None:
        sources = {s.source for s in stories}
        kind = sources.pop() if len(sources) == 1 and next(iter(sources)) in KINDS else "mixed"
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; allowed: {list(KINDS)}")
    header = {"schema": SCHEMA_NAME, "version": SCHEMA_VERSION, "kind": kind, "n_sentences": n,
              "count": len(stories)}
    lines = [json.dumps(header)]
    seen: set[str] = set()
    for i, s in enumerate(stories):
        rec = _story_to_record(s)
        problems = _check_record(json.loads(json.dumps(rec, allow_nan=False)), n)
        if problems:
            raise ValueError(f"story {i} ({s.story_id!r}): {problems[0]}")
        if s.story_id in seen:
            raise ValueError(f"story {i}: duplicate story_id {s.story_id!r}")
        seen.add(s.story_id)
        lines.append(json.dumps(rec, ensure_ascii=False, allow_nan=False, separators=(",", ":")))
    return "\n".join(lines) + "\n"


def write_stories(path: str | Path, stories: Sequence[Story], kind: str | None = None) -> Path:
    """Validate and write `stories` atomically (a reader sees the old file or the whole new one).

    Args:
        path: destination .jsonl.
        stories: stories with equal sentence counts.
        kind: header kind; default the stories' common source when it is one of KINDS, else "mixed".
    """
    return atomic_write_text(path, format_stories(stories, kind))


# --------------------------------------------------------------------------------------------
# Referential extension (StoryGPT-V, Algorithm 1) and its inverse
# --------------------------------------------------------------------------------------------
def _find_mention(sentence: str, alias_list: Sequence[str]) -> re.Match | None:
    # The earliest, then longest, alias occurrence at word boundaries (case-insensitive).
    best = None
    for alias in sorted(alias_list, key=len, reverse=True):
        m = re.search(rf"(?<!\w){re.escape(alias)}(?!\w)('s(?!\w))?", sentence, flags=re.IGNORECASE)
        if m and (best is None or m.start() < best.start()):
            best = m
    return best


def _put(sentence: str, m: re.Match, word: str) -> str:
    if m.start() == 0:
        word = word[0].upper() + word[1:]
    return sentence[: m.start()] + word + sentence[m.end():]


def referential_extension(
    sentences: Sequence[str],
    characters: Sequence[Collection[str]],
    genders: Mapping[str, str],
    aliases: Mapping[str, Sequence[str]] | None = None,
    carry: str = "previous",
) -> list[str]:
    """Replace character mentions by he / she / they where the character set is unchanged.

    StoryGPT-V, Algorithm 1 (paper/002, Appendix D.2): for frame i > 1 with immediate characters
    C_i, if C_i is a subset of the reference set, a single character's mention becomes "he"/"she"
    ("his"/"her" before 's) and a group's joint mention ("A and B", "A, B and C") becomes "they".
    The printed algorithm ends each step with "C_i <- C_{i-1}"; read literally the reference set is
    then always C_1 (`carry="first"`); we default to the previous frame's set (`carry="previous"`),
    the usual reading of "unchanged from the previous sentence". One-character stories whose
    character is in every frame give the same result either way.

    Args:
        sentences: the story, S_1 .. S_N.
        characters: C_1 .. C_N, the characters present in each frame (names).
        genders: name -> "male" / "female" (keys of world.PRONOUNS).
        aliases: name -> the phrases that mention it (default: just the name); e.g. for Max the
            corgi: ["Max the corgi", "Max", "the corgi"]. Mentions are matched case-insensitively at
            word boundaries; subject position is assumed (toy sentences mention characters as subjects).
        carry: "previous" or "first" (see above).
    Returns:
        the N sentences with the replacements made; sentence 1 is never changed.
    """
    if len(characters) != len(sentences):
        raise ValueError(f"need one character set per sentence: {len(characters)} sets for {len(sentences)} sentences")
    if carry not in ("previous", "first"):
        raise ValueError(f"carry must be 'previous' or 'first', got {carry!r}")
    sets = [frozenset(c) for c in characters]
    everyone = frozenset().union(*sets)
    for name in everyone:
        if genders.get(name) not in PRONOUNS:
            raise ValueError(f"character {name!r} needs a gender in {list(PRONOUNS)}, got {genders.get(name)!r}")
    aliases = {name: list((aliases or {}).get(name, [name])) for name in everyone}
    out = list(sentences[:1])
    for i in range(1, len(sentences)):
        s, c = sentences[i], sets[i]
        ref = sets[i - 1] if carry == "previous" else sets[0]
        if c and c <= ref:
            if len(c) == 1:
                (name,) = c
                m = _find_mention(s, aliases[name])
                if m is not None:
                    p = PRONOUNS[genders[name]]
                    s = _put(s, m, p["possessive"] if m.group(1) else p["subject"])
            else:
                s = _replace_group(s, sorted(c), aliases)
        out.append(s)
    return out


def _replace_group(sentence: str, names: Sequence[str], aliases: Mapping[str, Sequence[str]]) -> str:
    # "A and B" / "A, B and C" (any order, any alias of each) -> "they"; unchanged when not found.
    alt = {n: "|".join(re.escape(a) for a in sorted(aliases[n], key=len, reverse=True)) for n in names}
    any_name = "(?:" + "|".join(f"(?:{alt[n]})" for n in names) + ")"
    k = len(names)
    pattern = rf"(?<!\w){any_name}(?:(?:,\s*|\s+and\s+|,\s*and\s+){any_name}){{{k - 1}}}(?!\w)"
    for m in re.finditer(pattern, sentence, flags=re.IGNORECASE):
        found = {n for n in names for part in re.split(r",\s*and\s+|,\s*|\s+and\s+", m.group(0))
                 if any(part.lower() == a.lower() for a in aliases[n])}
        if found == set(names):
            return _put(sentence, m, "they")
    return sentence


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
    new = referential_extension(story.sentences, chars, genders, aliases, carry=carry)
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
    from acdc_lib.toyworld.grammar import VISUAL_ATTRIBUTES, ambiguous_alone

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


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------
def _split_stories(name: str, exclude: Collection[tuple[str, ...]] = ()) -> list[Story]:
    from acdc_lib.toyworld.grammar import generate_stories

    spec = SPLITS[name]
    out: list[Story] = []
    i = 0
    while len(out) < spec["n"]:
        chunk = generate_stories(min(4096, 2 * (spec["n"] - len(out))), seed=spec["seed"], start=i)
        i += len(chunk)
        out.extend(s for s in chunk if tuple(s.sentences) not in exclude)
    return out[: spec["n"]]


def build_splits() -> dict[str, str]:
    """The file texts of every split: test first, then train without any test story's sentences."""
    test = _split_stories("test")
    test_keys = {tuple(s.sentences) for s in test}
    train = _split_stories("train", exclude=test_keys)
    return {"test": format_stories(test, "grammar"), "train": format_stories(train, "grammar")}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def make_splits(check: bool = False) -> dict[str, Any]:
    """Write (or with `check`, verify) the splits and data/stories/MANIFEST.json.

    Returns:
        the manifest: per split, its path (relative to data/stories), stream seed, size, SHA-256
        of the file and whether the file is committed to git.
    """
    texts = build_splits()
    manifest = {"schema": SCHEMA_NAME, "version": SCHEMA_VERSION, "splits": {}}
    for name, text in texts.items():
        spec = SPLITS[name]
        manifest["splits"][name] = {
            "path": str(Path(spec["path"]).relative_to(STORIES_DIR)), "seed": spec["seed"], "n": spec["n"],
            "sha256": _sha(text), "committed": spec["committed"],
        }
    if check:
        old = json.loads(MANIFEST_PATH.read_text(encoding="utf-8"))
        if old != manifest:
            raise RuntimeError(f"regenerated splits differ from {MANIFEST_PATH}: {old} != {manifest}")
        return manifest
    for name, text in texts.items():
        atomic_write_text(SPLITS[name]["path"], text)
    atomic_write_json(MANIFEST_PATH, manifest)
    return manifest


def load_split(name: str, regenerate: bool = True) -> list[Story]:
    """The stories of split `name` ("train" or "test"), checked against the manifest's SHA-256.

    The train split is not committed: it is regenerated (about 20 s on 2 cores) into
    data/stories/.cache/ the first time, when `regenerate`.
    """
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; allowed: {list(SPLITS)}")
    manifest = json.loads(MANIFEST_PATH.read_text(encoding="utf-8"))
    entry = manifest["splits"][name]
    path = STORIES_DIR / entry["path"]
    if not path.exists() or _sha(path.read_text(encoding="utf-8")) != entry["sha256"]:
        if SPLITS[name]["committed"] or not regenerate:
            raise FileNotFoundError(f"{path} is missing or does not match {MANIFEST_PATH}; "
                                    f"run `python -m acdc_lib.stories make-splits`")
        text = build_splits()[name]
        if _sha(text) != entry["sha256"]:
            raise RuntimeError(f"regenerated {name} split does not match {MANIFEST_PATH} (grammar or numpy changed?)")
        atomic_write_text(path, text)
    return read_stories(path)


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m acdc_lib.stories", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make-splits", help="write data/stories/{test.jsonl, MANIFEST.json} and the train cache")
    mk.add_argument("--check", action="store_true", help="verify the regenerated splits against the manifest")
    args = parser.parse_args(list(argv) if argv is not None else None)
    manifest = make_splits(check=args.check)
    for name, e in manifest["splits"].items():
        print(f"{name}: {e['n']} stories, seed {e['seed']}, {e['path']}, sha256 {e['sha256'][:16]}…"
              f"{' (checked)' if args.check else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
