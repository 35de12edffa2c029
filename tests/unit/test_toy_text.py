"""What a user may write for the toy world: its vocabulary in --help and the README, a warning per sentence
with words the toy models never saw, plurals the rule memory cannot resolve, the story file format."""
import argparse
import contextlib
import io
import json
import re
import warnings

import numpy as np
import pytest
from PIL import Image

from acdc_lib import generate as G
from acdc_lib.components import build
from acdc_lib.io import REPO_ROOT
from acdc_lib.memory import RuleMemory, UnresolvedReferenceWarning
from acdc_lib.stories import read_stories
from acdc_lib.toyworld import world as W
from acdc_lib.types import Story

GERALD = "Gerald the giraffe danced in the city."


def _args(**kw):
    return argparse.Namespace(**{"arm": "toy", "dm": "toy", "correct": "all", **kw})


def test_help_lists_the_toy_vocabulary():
    text = G.build_parser().format_help()
    for word in (*W.PLACES, *W.SPECIES, *W.NAMES, "jumped", "at night", "during the day"):
        assert word in text, word
    assert "Luna (she)" in text and "Max (he)" in text


def test_readme_lists_the_toy_vocabulary():
    text = (REPO_ROOT / "README.md").read_text()
    section = text[text.index("### The toy world's words"):]
    for word in (*W.PLACES, *W.SPECIES, *W.NAMES, *W.ACTIONS):
        assert word in section, word


def test_unknown_words_are_named_per_sentence_for_the_toy_models_only():
    story = Story(story_id="s1", sentences=[GERALD, "Max the corgi sat in the park.", "Then he ran to the moon."])
    got = G.unknown_word_warnings([story], _args())
    assert len(got) == 1 and got[0].startswith("story s1 sentence 1")
    assert "'gerald', 'giraffe', 'danced', 'city'" in got[0]
    # a toy corrector reads the prompts too, even behind another ARM; real models take any text
    assert len(G.unknown_word_warnings([story], _args(arm="janus"))) == 1
    assert G.unknown_word_warnings([story], _args(arm="janus", dm="sd")) == []
    assert G.unknown_word_warnings([story], _args(arm="janus", correct="none")) == []


def test_every_test_split_sentence_uses_only_known_words():
    vocab = build("vocabulary", "toy")
    stories = read_stories(REPO_ROOT / "data" / "stories" / "test.jsonl")[:200]
    assert [s for st in stories for s in st.sentences if vocab.unknown_words(s)] == []
    assert vocab.unknown_words("Luna the fox sniffed the ground at night, then ate a cake.") == ["ate", "cake"]


def test_a_plural_with_two_characters_is_not_resolved_to_one():
    memory = RuleMemory(build("vocabulary", "toy"))
    story = ["Max the corgi and Luna the fox were in the park at night.", "They jumped."]
    with pytest.warns(UnresolvedReferenceWarning, match=r"sentence 2 \('They jumped.'\): 'They' may mean any of Max, Luna"):
        prompts = memory.refine(story).prompts
    assert prompts[1] == "They jumped in the park at night."  # neither character dropped; place and time kept
    # with one character "they" is that character, as before, and nothing is warned
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnresolvedReferenceWarning)
        assert memory.refine(["Max the corgi was in the park at night.", "They jumped."]).prompts[1] == \
            "Max the corgi jumps in the park at night."


def test_the_readme_story_file_example_reads_with_a_trailing_blank_line(tmp_path):
    text = (REPO_ROOT / "README.md").read_text()
    example = re.search(r"```jsonl\n(.*?)```", text, flags=re.S).group(1)
    path = tmp_path / "my.jsonl"
    path.write_text(example + "\n")  # the file as an editor often leaves it: a blank line at the end
    stories = read_stories(path, n_sentences=None)
    header = json.loads(example.splitlines()[0])
    assert len(stories) == header["count"] and all(len(s.sentences) == header["n_sentences"] for s in stories)
    path.write_text(example.replace("\n", "\n\n", 1))  # a blank line between records is still refused
    with pytest.raises(ValueError, match="blank line"):
        read_stories(path, n_sentences=None)


def test_generate_warns_names_the_folder_and_writes_upscaled_frames(tmp_path, one_thread):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = G.main([GERALD, "He jumped.", "--correct", "none", "--steps", "4", "--scale", "4", "--out", str(tmp_path)])
    assert rc == 0, err.getvalue()
    sid = G.sentence_story_id([GERALD, "He jumped."])
    assert "'gerald', 'giraffe', 'danced', 'city'" in err.getvalue() and "sentence 2" not in err.getvalue()
    assert f"{tmp_path.resolve() / sid}/" in out.getvalue()
    assert "1 story done, 0 skipped" in out.getvalue()
    small = np.asarray(Image.open(tmp_path / sid / "frame_02_arm.png"))
    big = np.asarray(Image.open(tmp_path / sid / "frame_02_arm_x4.png"))
    assert big.shape == (small.shape[0] * 4, small.shape[1] * 4, 3)
    assert np.array_equal(big, small.repeat(4, axis=0).repeat(4, axis=1))
    assert "frame_02_arm_x4.png" in json.loads((tmp_path / sid / "story.json").read_text())["files"]
