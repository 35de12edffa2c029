"""Story files (format, validation, atomic writes), the referential extension, and the toy world's splits."""
from __future__ import annotations

import json
import os
import warnings

import pytest

from acdc_lib.stories import (
    LongSentenceWarning,
    StoryFileError,
    estimate_clip_tokens,
    read_stories,
    referential_extension,
    write_stories,
)
from acdc_lib.toyworld import splits as S
from acdc_lib.toyworld.grammar import generate_stories
from acdc_lib.toyworld.stories import check_toy_state, explicit_variant, read_toy_stories, referential_variant
from acdc_lib.toyworld.world import SceneState, explicit_caption
from acdc_lib.types import Story

HEADER = {"schema": "acdc-stories", "version": 1, "kind": "grammar", "n_sentences": 6, "count": 1}
SIX = ["Max the corgi sat in the park on a sunny day.", "He ran.", "The corgi jumped.", "He sat.",
       "Max lay down.", "He stood."]
STATE = SceneState("park", "day", "Max", "corgi", "male", "sit").to_dict()
RECORD = {"story_id": "s1", "sentences": SIX, "source": "grammar", "states": [STATE] * 6, "meta": {}}


def _line(obj) -> bytes:
    return json.dumps(obj).encode()


def _file(*records, header=HEADER) -> bytes:
    lines = ([_line(header)] if header is not None else []) + [r if isinstance(r, bytes) else _line(r) for r in records]
    return b"\n".join(lines) + b"\n"


def _rec(**changes):
    r = dict(RECORD)
    r.update(changes)
    return {k: v for k, v in r.items() if v is not _DROP}


_DROP = object()

# (case, file bytes, the line the message names, a phrase only this case's message has)
BAD_FILES = [
    ("empty file", b"", None, "file is empty"),
    ("missing header", _file(RECORD, header=None), 1, "missing header"),
    ("unknown schema", _file(RECORD, header={**HEADER, "schema": "stories"}), 1, "unknown schema 'stories'"),
    ("unknown version", _file(RECORD, header={**HEADER, "version": 2}), 1, "unsupported schema version 2"),
    ("unknown kind", _file(RECORD, header={**HEADER, "kind": "poems"}), 1, "unknown kind 'poems'"),
    ("unknown header field", _file(RECORD, header={**HEADER, "author": "x"}), 1, "unknown header field(s) ['author']"),
    ("header count wrong", _file(RECORD, header={**HEADER, "count": 2}), None, "its header says 2 (truncated"),
    ("byte-order mark", b"\xef\xbb\xbf" + _file(RECORD), 1, "byte-order mark"),
    ("bad utf-8", _file(RECORD) + b'{"story_id": "\xff"}\n', 3, "not valid UTF-8 (byte 0xff"),
    ("not json", _file(b"{story_id: s1}"), 2, "not valid JSON"),
    ("trailing garbage", _file(_line(RECORD) + b" xyz"), 2, "extra data after the JSON object"),
    ("json not an object", _file([1, 2, 3]), 2, "expected a JSON object (a story record), got list"),
    ("blank line", _file(RECORD).replace(b"\n", b"\n\n", 1), 2, "blank line"),
    ("unknown field", _file(_rec(colour="red")), 2, "unknown field(s) ['colour']"),
    ("missing field", _file(_rec(sentences=_DROP)), 2, "missing required field(s) ['sentences']"),
    ("empty story_id", _file(_rec(story_id="")), 2, "'story_id' must be a non-empty string"),
    ("sentences not a list", _file(_rec(sentences="Max ran.")), 2, "'sentences' must be a list of strings, got str"),
    ("sentences with a number", _file(_rec(sentences=SIX[:5] + [7])), 2, "a list with non-strings"),
    ("wrong sentence count", _file(_rec(sentences=SIX[:5], states=[STATE] * 5)), 2, "has 5 sentences, expected 6"),
    ("empty sentence", _file(_rec(sentences=SIX[:2] + [""] + SIX[3:])), 2, "sentence 3 is empty"),
    ("whitespace sentence", _file(_rec(sentences=SIX[:3] + ["   "] + SIX[4:])), 2, "sentence 4 is only whitespace"),
    ("line break in sentence", _file(_rec(sentences=SIX[:1] + ["He ran.\nHe sat."] + SIX[2:])), 2, "contains a line break"),
    ("empty source", _file(_rec(source="")), 2, "'source' must be a non-empty string"),
    ("meta not an object", _file(_rec(meta=[1])), 2, "'meta' must be a JSON object, got list"),
    ("states not a list", _file(_rec(states="park")), 2, "'states' must be a list or null, got str"),
    ("states length mismatch", _file(_rec(states=[STATE] * 5)), 2, "5 states for 6 sentences"),
    ("state not an object", _file(_rec(states=[STATE] * 5 + [["park"]])), 2, "state 6 must be a JSON object, got list"),
    ("duplicate story_id", _file(RECORD, RECORD, header={**HEADER, "count": 2}), 3, "duplicate story_id 's1' (first on line 2)"),
    ("NaN in a state", _file(_line(_rec()).replace(b'"x": 0.5', b'"x": NaN')), 2, "NaN is not allowed"),
]


# Files the core format accepts but whose states are not toy scene states: caught by the toy reader.
BAD_TOY_FILES = [
    ("unknown species", _file(_rec(states=[STATE] * 5 + [{**STATE, "species": "dragon"}])), 2,
     "state 6: unknown species 'dragon'"),
    ("unknown place", _file(_rec(states=[{**STATE, "place": "moon"}] + [STATE] * 5)), 2, "state 1: unknown place 'moon'"),
    ("state missing field", _file(_rec(states=[{k: v for k, v in STATE.items() if k != "action"}] * 6)), 2,
     "missing required field(s) ['action']"),
]


def test_there_are_at_least_15_distinct_bad_file_cases():
    assert len(BAD_FILES) >= 15
    assert len({case[3] for case in BAD_FILES + BAD_TOY_FILES}) == len(BAD_FILES) + len(BAD_TOY_FILES)


@pytest.mark.parametrize("case,data,line,phrase", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_file_fails_with_its_own_clear_message(tmp_path, case, data, line, phrase):
    path = tmp_path / "stories.jsonl"
    path.write_bytes(data)
    with pytest.raises(StoryFileError) as err:
        read_stories(path)
    msg = str(err.value)
    assert phrase in msg, msg
    assert msg.startswith(f"{path}:{line}: " if line else f"{path}: "), msg
    # The message of this case names no other case's problem.
    others = [c[3] for c in BAD_FILES if c[0] != case and c[3] not in phrase]
    assert not any(o in msg for o in others), msg
    # The toy reader reports the same problem the same way.
    with pytest.raises(StoryFileError) as toy_err:
        read_toy_stories(path)
    assert str(toy_err.value) == msg


@pytest.mark.parametrize("case,data,line,phrase", BAD_TOY_FILES, ids=[c[0] for c in BAD_TOY_FILES])
def test_bad_toy_state_fails_in_the_toy_reader_only(tmp_path, case, data, line, phrase):
    path = tmp_path / "stories.jsonl"
    path.write_bytes(data)
    with pytest.raises(StoryFileError) as err:
        read_toy_stories(path)
    msg = str(err.value)
    assert phrase in msg and msg.startswith(f"{path}:{line}: "), msg
    with pytest.raises(StoryFileError, match="state"):
        read_stories(path, check_state=check_toy_state)
    # The core format keeps states as opaque JSON objects.
    (story,) = read_stories(path)
    assert story.states == json.loads(data.splitlines()[1])["states"]


def test_toy_reader_fills_in_state_defaults(tmp_path):
    short = {k: STATE[k] for k in ("place", "time", "name", "species", "gender", "action")}
    path = tmp_path / "short.jsonl"
    path.write_bytes(_file(_rec(states=[short] * 6)))
    assert read_toy_stories(path)[0].states == [STATE] * 6
    assert read_stories(path)[0].states == [short] * 6
    with pytest.raises(ValueError, match="unknown species 'dragon'"):
        write_stories(tmp_path / "w.jsonl", [Story("w", SIX, [{**STATE, "species": "dragon"}] * 6, "grammar")],
                      check_state=check_toy_state)


def test_valid_file_reads_back_what_was_written(tmp_path):
    stories = generate_stories(20, seed=2)
    path = write_stories(tmp_path / "g.jsonl", stories)
    back = read_stories(path)
    assert back == stories
    assert read_toy_stories(path) == stories
    header = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert header == {"schema": "acdc-stories", "version": 1, "kind": "grammar", "n_sentences": 6, "count": 20}
    # LLM-style stories without states and other sentence counts also round-trip.
    llm = [Story("llm-1", ["Ana the owl flew.", "She landed."], None, "llm", {"model": "m"})]
    assert read_stories(write_stories(tmp_path / "l.jsonl", llm), n_sentences=2) == llm
    with pytest.raises(StoryFileError, match="header says 2 sentences per story, expected 6"):
        read_stories(tmp_path / "l.jsonl")


def test_writing_is_validated_and_atomic(tmp_path):
    path = tmp_path / "s.jsonl"
    good = generate_stories(3, seed=0)
    write_stories(path, good)
    before = path.read_bytes()
    bad = good[:2] + [Story("x", ["one", ""] + ["s"] * 4, None, "grammar")]
    with pytest.raises(ValueError, match="story 2 \\('x'\\): story 'x': sentence 2 is empty"):
        write_stories(path, bad)
    with pytest.raises(ValueError, match="duplicate story_id"):
        write_stories(path, good + good[:1])
    assert path.read_bytes() == before  # the old file is untouched
    assert sorted(os.listdir(tmp_path)) == ["s.jsonl"]  # and no temporary file is left behind


def test_long_sentence_is_warned_with_its_line_and_kept_whole(tmp_path):
    long = "Max the corgi " + " ".join(["happily"] * 80) + " ran."
    story = Story("long", [long] + SIX[1:], None, "llm")
    path = write_stories(tmp_path / "long.jsonl", [story])
    with pytest.warns(LongSentenceWarning, match=r"long\.jsonl:2: story 'long' sentence 1 has about 87 tokens"):
        back = read_stories(path)
    assert back[0].sentences[0] == long
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_stories(path, max_tokens=None)


def test_token_estimate_follows_clip_pretokenisation():
    assert estimate_clip_tokens("He ran.") == 2 + 2 + 1
    assert estimate_clip_tokens("Max's 2 dogs!!") == 2 + 1 + 1 + 1 + 1 + 1  # max, 's, 2, dogs, !!
    assert estimate_clip_tokens("extraordinarily") == 2 + 3  # 15 letters -> ceil(15/7)


# --------------------------------------------------------------------------------------------
# Referential extension, hand-checked
# --------------------------------------------------------------------------------------------
def test_referential_extension_single_character_hand_checked():
    sents = ["Luna the fox stood in the forest at night.", "Then Luna ran to the beach.",
             "The fox jumped high.", "Night fell over the beach.", "Luna's tail swished as Luna sat.",
             "After a while, the fox lay down."]
    chars = [{"Luna"}] * 6
    got = referential_extension(sents, chars, {"Luna": "female"}, {"Luna": ["Luna the fox", "Luna", "the fox"]})
    assert got == ["Luna the fox stood in the forest at night.", "Then she ran to the beach.",
                   "She jumped high.", "Night fell over the beach.", "Her tail swished as Luna sat.",
                   "After a while, she lay down."]


def test_referential_extension_groups_and_changing_character_sets():
    sents = ["Fred and Wilma walked into the cave.", "Fred and Wilma are talking.", "Wilma and Fred laughed.",
             "Fred sat down.", "Barney came in.", "Barney waved.", "Fred, Wilma and Barney ate."]
    chars = [{"Fred", "Wilma"}, {"Fred", "Wilma"}, {"Fred", "Wilma"}, {"Fred"}, {"Barney"}, {"Barney"},
             {"Fred", "Wilma", "Barney"}]
    genders = {"Fred": "male", "Wilma": "female", "Barney": "male"}
    got = referential_extension(sents, chars, genders)
    assert got == ["Fred and Wilma walked into the cave.", "They are talking.", "They laughed.",
                   "He sat down.",          # {Fred} is a subset of {Fred, Wilma}
                   "Barney came in.",       # {Barney} is new: kept
                   "He waved.",
                   "Fred, Wilma and Barney ate."]  # more characters than before: kept
    # Read literally, the printed algorithm compares with the first frame's set: Barney stays named.
    literal = referential_extension(sents, chars, genders, carry="first")
    assert literal[5] == "Barney waved." and literal[3] == "He sat down."


def test_referential_extension_refuses_bad_input():
    with pytest.raises(ValueError, match="one character set per sentence"):
        referential_extension(["a", "b"], [{"A"}], {"A": "male"})
    with pytest.raises(ValueError, match="needs a gender"):
        referential_extension(["a", "b"], [{"A"}, {"A"}], {})
    with pytest.raises(ValueError, match="carry"):
        referential_extension(["a"], [{"A"}], {"A": "male"}, carry="last")


def test_referential_extension_takes_other_pronouns():
    xe = {"x": {"subject": "xe", "object": "xem", "possessive": "xyr"}}
    got = referential_extension(["Ana ran.", "Ana sat.", "Ana's hat fell."], [{"Ana"}] * 3, {"Ana": "x"}, pronouns=xe)
    assert got == ["Ana ran.", "Xe sat.", "Xyr hat fell."]
    with pytest.raises(ValueError, match="needs a gender in \\['x'\\]"):
        referential_extension(["a", "b"], [{"A"}, {"A"}], {"A": "male"}, pronouns=xe)


def test_referential_and_explicit_variants_of_grammar_stories():
    story = generate_stories(40, seed=4)
    for s in story:
        ref = referential_variant(s)
        assert ref.sentences[0] == s.sentences[0] and ref.states == s.states and ref.source == "referential"
        name, species = s.states[0]["name"], s.states[0]["species"]
        for text in ref.sentences[1:]:
            assert name not in text and species not in text  # every later mention became a pronoun
        assert all(("name" not in e and "species" not in e) for e in ref.meta["explicit"][1:])
        exp = explicit_variant(s)
        assert exp.sentences == [explicit_caption(SceneState.from_dict(d)) for d in s.states]
    s = story[0]
    assert referential_variant(s).story_id == f"{s.story_id}-ref"
    with pytest.raises(ValueError, match="no states"):
        explicit_variant(Story("x", SIX, None, "llm"))


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------
def test_committed_test_split_matches_its_manifest():
    manifest = json.loads(S.MANIFEST_PATH.read_text(encoding="utf-8"))
    test = S.load_split("test")
    assert len(test) == manifest["splits"]["test"]["n"] >= 1000
    assert test[0].story_id == "g1-000000" and all(s.source == "grammar" for s in test)
    assert manifest["splits"]["train"]["committed"] is False
    assert os.path.getsize(S.SPLITS["test"]["path"]) < 4_000_000


def test_train_stream_skips_every_test_story(monkeypatch):
    # With both splits on the same stream, every test story comes up in train and must be skipped.
    monkeypatch.setitem(S.SPLITS, "test", {**S.SPLITS["test"], "n": 30, "seed": 9})
    monkeypatch.setitem(S.SPLITS, "train", {**S.SPLITS["train"], "n": 50, "seed": 9})
    test = S._split_stories("test")
    train = S._split_stories("train", exclude={tuple(s.sentences) for s in test})
    assert len(train) == 50 and train[0].story_id == "g9-000030"
    assert not {tuple(s.sentences) for s in test} & {tuple(s.sentences) for s in train}


@pytest.mark.slow
def test_splits_regenerate_exactly_and_train_never_contains_a_test_story():
    texts = S.build_splits()
    manifest = json.loads(S.MANIFEST_PATH.read_text(encoding="utf-8"))
    for name, text in texts.items():  # regenerated byte for byte
        assert S._sha(text) == manifest["splits"][name]["sha256"], name
    test_keys = {tuple(json.loads(line)["sentences"]) for line in texts["test"].splitlines()[1:]}
    train_keys = [tuple(json.loads(line)["sentences"]) for line in texts["train"].splitlines()[1:]]
    assert len(train_keys) == manifest["splits"]["train"]["n"]
    assert not test_keys & set(train_keys)
