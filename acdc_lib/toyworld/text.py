"""A word-level tokenizer over the toy world's vocabulary, shared in form (not in weights) by every toy model.

Why word level: the toy world's language is closed (the grammar's templates, the world's names of
places, species, actions and characters), so one id per word is exact, tiny and readable, and a BPE
would only add merges to learn. The tokenizer is a transformers `PreTrainedTokenizerFast` around a
`tokenizers` WordLevel model, so it saves with `save_pretrained` and loads with
`AutoTokenizer.from_pretrained` (as `acdc_lib.sdedit.UNetCorrector.from_pretrained` does).

Rules (documented because prompts from other sources, e.g. an LLM memory, go through it too):
- text is lower-cased, then split into words (runs of letters/digits/underscore) and punctuation
  runs (the `tokenizers` Whitespace pre-tokenizer);
- a word outside the vocabulary becomes `<unk>` (never dropped);
- `tokenizer(text)` adds `<bos>` ... `<eos>`; `<pad>` pads; the empty prompt "" is `<bos> <eos>`,
  the unconditional input of classifier-free guidance.
"""
from __future__ import annotations

from typing import Iterable

from acdc_lib.toyworld import grammar
from acdc_lib.toyworld.world import (ACTIONS, NAMES, PLACES, PRONOUNS, SPECIES, TIME_PHRASES, TIMES, VERBS,
                                     SceneState, explicit_caption)

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS: tuple[str, ...] = (PAD, UNK, BOS, EOS)
MODEL_MAX_LENGTH = 32  # tokens incl. <bos>/<eos>; the longest grammar sentence or caption has < 20

# Words the grammar's templates use besides the world's names (kept explicit so the vocabulary does
# not depend on which stories a sample happens to draw; `vocabulary()` also scans grammar output).
_EXTRA_WORDS = (
    "a", "the", "in", "on", "to", "at", "over", "under", "was", "one", "young", "sunny", "day", "night",
    "morning", "moonlit", "bright", "sun", "moon", "during", "then", "after", "while", "suddenly", "later",
    "off", "ran", "fell", "rose", "as", "when", "came", "up", "still", "down", "quietly", "high", "into",
    "air", "around", "fast", "rest", "curiously", "ground", "and", "his", "her", "it", "is", "of", ".", ",",
    "!", "?", "'", "s",
)


def split_words(text: str) -> list[str]:
    """The words and punctuation the tokenizer sees in `text` (lower-cased), before vocabulary lookup."""
    from tokenizers.pre_tokenizers import Whitespace

    return [w for w, _ in Whitespace().pre_tokenize_str(text.lower())]


def vocabulary(n_scan_stories: int = 400) -> list[str]:
    """The sorted word list: world names, template words, and every word of `n_scan_stories` grammar stories.

    Args:
        n_scan_stories: grammar stories (stream seed 0) scanned for template words; the result is
            the same for any value >= a few hundred (every template appears).
    Returns:
        sorted list of lower-case words (no specials).
    """
    words: set[str] = set(_EXTRA_WORDS)
    for phrase in (*PLACES, *SPECIES, *ACTIONS, *TIMES, *NAMES, *TIME_PHRASES.values()):
        words.update(split_words(phrase))
    for v in VERBS.values():
        for form in (v.base, v.present, v.past, v.ing):
            words.update(split_words(form))
    for forms in PRONOUNS.values():
        words.update(forms.values())
    for story in grammar.generate_stories(n_scan_stories, seed=0):
        for s in story.sentences:
            words.update(split_words(s))
    # Every explicit caption's words (one state per place/time/species/action combination is enough).
    for place in PLACES:
        for time in TIMES:
            for species in SPECIES:
                for action in ACTIONS:
                    st = SceneState(place=place, time=time, name="Max", species=species, gender="male",
                                    action=action)
                    words.update(split_words(explicit_caption(st)))
    return sorted(words)


def build_tokenizer(words: Iterable[str] | None = None, model_max_length: int = MODEL_MAX_LENGTH):
    """A `PreTrainedTokenizerFast` over `words` (default: `vocabulary()`), specials first.

    Args:
        words: the vocabulary (lower-case); ids are 4.. in the given order after <pad> <unk> <bos> <eos>.
        model_max_length: the padded length (`padding="max_length"`) used by the text encoders.
    Returns:
        the tokenizer; `save_pretrained(dir)` and `AutoTokenizer.from_pretrained(dir)` round-trip it.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    words = list(vocabulary() if words is None else words)
    dup = sorted({w for w in words if words.count(w) > 1})
    if dup or any(w in SPECIALS for w in words):
        raise ValueError(f"vocabulary words must be unique and not specials {SPECIALS}; duplicates: {dup}")
    vocab = {tok: i for i, tok in enumerate((*SPECIALS, *words))}
    tk = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", pair=f"{BOS} $A {EOS} $B {EOS}",
        special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token=PAD, unk_token=UNK, bos_token=BOS, eos_token=EOS,
        model_max_length=model_max_length, padding_side="right")


def load_tokenizer(path):
    """Load a tokenizer saved by `build_tokenizer(...).save_pretrained(path)` (AutoTokenizer)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)
