"""Story files: one validated JSONL format, and the referential extension.

File format (schema "acdc-stories", version 1), one JSON object per line, UTF-8, no blank line between
records (blank lines at the end are ignored):

    line 1   {"schema": "acdc-stories", "version": 1, "kind": "grammar", "n_sentences": 6, "count": 1000}
    line 2+  {"story_id": "g1-000000", "sentences": [6 strings], "source": "grammar",
              "states": [6 state dicts] or null, "meta": {...}}

The header names the schema and its version once for the whole file (a reader of another version
refuses the file instead of guessing), the kind of stories ("grammar", "llm", "referential",
"explicit", "mixed"), the sentences per story and the number of records (a truncated file is
caught). A record maps to `acdc_lib.types.Story`; `story_id`, `sentences` and `source` are
required, `states` and `meta` optional. A state is an opaque JSON object, one per sentence: this
module checks only that shape, and a world that knows its states passes `check_state` to validate
each one. Reading validates everything and raises `StoryFileError` naming the file, the line and the
problem; a sentence longer than the text encoders take is warned about (never cut). Writing is
atomic (`acdc_lib.io.atomic_write_text`).

The referential extension follows StoryGPT-V's Algorithm 1 (paper/002, Appendix D.2): a character
mention becomes "he" / "she" (one character) or "they" (several) where the sentence's characters
are a subset of the previous sentence's.
"""
from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Collection, Mapping, Sequence

from acdc_lib.io import DATA_DIR, atomic_write_text
from acdc_lib.types import SCHEMA_VERSION, Story

SCHEMA_NAME = "acdc-stories"
KINDS: tuple[str, ...] = ("grammar", "llm", "referential", "explicit", "mixed")
HEADER_FIELDS: tuple[str, ...] = ("schema", "version", "kind", "n_sentences", "count")
RECORD_REQUIRED: tuple[str, ...] = ("story_id", "sentences", "source")
RECORD_OPTIONAL: tuple[str, ...] = ("states", "meta")
DEFAULT_MAX_TOKENS = 77  # CLIP's text context (SD v1.5's and our tiny CLIP's), BOS and EOS included

STORIES_DIR = DATA_DIR / "stories"
CACHE_DIR = STORIES_DIR / ".cache"  # git-ignored (".cache/" in .gitignore)

# English pronouns by gender, for the referential extension.
PRONOUNS: dict[str, dict[str, str]] = {
    "male": {"subject": "he", "object": "him", "possessive": "his"},
    "female": {"subject": "she", "object": "her", "possessive": "her"},
}

CheckState = Callable[[dict[str, Any]], dict[str, Any]]
"""Validates one state dict (raising ValueError or TypeError naming the problem) and returns the
dict the Story keeps (e.g. with defaults filled in)."""


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
def _check_record(d: Any, n_sentences: int | None, check_state: CheckState | None = None) -> list[str]:
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
            if not isinstance(st, dict):
                return [f"story {sid!r}: state {k} must be a JSON object, got {type(st).__name__}"]
            if check_state is not None:
                try:
                    check_state(st)
                except (ValueError, TypeError) as e:
                    return [f"story {sid!r}: state {k}: {e}"]
    return []


def _story_from_record(d: dict[str, Any], check_state: CheckState | None = None) -> Story:
    states = d.get("states")
    if states is not None:
        states = [check_state(s) if check_state is not None else s for s in states]
    return Story(
        story_id=d["story_id"], sentences=list(d["sentences"]), states=states,
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
    path: str | Path, n_sentences: int | None = 6, max_tokens: int | None = DEFAULT_MAX_TOKENS,
    check_state: CheckState | None = None,
) -> list[Story]:
    """Read and validate a story file.

    Args:
        path: a JSONL story file (format in the module docstring).
        n_sentences: sentences every story must have (None: any number, as the header says).
        max_tokens: warn (LongSentenceWarning) about sentences with more estimated CLIP tokens
            (`estimate_clip_tokens`); None turns the check off. Sentences are never cut.
        check_state: validates each state dict and returns what the Story keeps (`CheckState`);
            None: states are kept as read, checked only to be JSON objects.
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
    while lines and not lines[-1].strip():  # the final newline, and blank lines after the last record
        lines.pop()
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
        problems = _check_record(d, header["n_sentences"], check_state)
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
        stories.append(_story_from_record(d, check_state))
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


def format_stories(stories: Sequence[Story], kind: str | None = None, check_state: CheckState | None = None) -> str:
    """The file text of `stories` (validated; ValueError names the bad story and the problem).

    `check_state` validates each state as in `read_stories`; the states are written as given.
    """
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
        problems = _check_record(json.loads(json.dumps(rec, allow_nan=False)), n, check_state)
        if problems:
            raise ValueError(f"story {i} ({s.story_id!r}): {problems[0]}")
        if s.story_id in seen:
            raise ValueError(f"story {i}: duplicate story_id {s.story_id!r}")
        seen.add(s.story_id)
        lines.append(json.dumps(rec, ensure_ascii=False, allow_nan=False, separators=(",", ":")))
    return "\n".join(lines) + "\n"


def write_stories(path: str | Path, stories: Sequence[Story], kind: str | None = None,
                  check_state: CheckState | None = None) -> Path:
    """Validate and write `stories` atomically (a reader sees the old file or the whole new one).

    Args:
        path: destination .jsonl.
        stories: stories with equal sentence counts.
        kind: header kind; default the stories' common source when it is one of KINDS, else "mixed".
        check_state: validates each state (`CheckState`); None: states are checked only to be JSON objects.
    """
    return atomic_write_text(path, format_stories(stories, kind, check_state))


# --------------------------------------------------------------------------------------------
# Referential extension (StoryGPT-V, Algorithm 1)
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
    pronouns: Mapping[str, Mapping[str, str]] | None = None,
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
        genders: name -> a key of `pronouns` ("male" / "female").
        aliases: name -> the phrases that mention it (default: just the name); e.g. for Max the
            corgi: ["Max the corgi", "Max", "the corgi"]. Mentions are matched case-insensitively at
            word boundaries; subject position is assumed (characters are mentioned as subjects).
        carry: "previous" or "first" (see above).
        pronouns: gender -> {"subject": ..., "possessive": ...} (default: `PRONOUNS`, English he / she).
    Returns:
        the N sentences with the replacements made; sentence 1 is never changed.
    """
    if len(characters) != len(sentences):
        raise ValueError(f"need one character set per sentence: {len(characters)} sets for {len(sentences)} sentences")
    if carry not in ("previous", "first"):
        raise ValueError(f"carry must be 'previous' or 'first', got {carry!r}")
    pronouns = PRONOUNS if pronouns is None else pronouns
    sets = [frozenset(c) for c in characters]
    everyone = frozenset().union(*sets)
    for name in everyone:
        if genders.get(name) not in pronouns:
            raise ValueError(f"character {name!r} needs a gender in {list(pronouns)}, got {genders.get(name)!r}")
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
                    p = pronouns[genders[name]]
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
