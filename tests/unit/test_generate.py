"""`python -m acdc_lib.generate` on the shipped toy models: files, resume, batch sizes, bad input.

Two 6-sentence test stories with --steps 4 (t' 0.5 then runs 2 DDIM steps) keep every run to seconds.
"""
import ast
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from acdc_lib import generate as G
from acdc_lib.defaults import PAPER_GUIDANCE_SCALE, PAPER_STRENGTH
from acdc_lib.experiment import story_seed
from acdc_lib.io import REPO_ROOT
from acdc_lib.sdedit import steps_for_strength
from acdc_lib.stories import read_stories, write_stories
from acdc_lib.types import Story

STEPS = 4
TOY_SIDE = 32  # the toy world's frames are 32 x 32


# Subprocesses get the same single thread (ONE_THREAD), so in-process and subprocess runs compute alike.
pytestmark = pytest.mark.usefixtures("one_thread")


ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def story_file(tmp_path_factory):
    stories = read_stories(REPO_ROOT / "data" / "stories" / "test.jsonl")[:2]
    return write_stories(tmp_path_factory.mktemp("stories") / "two.jsonl", stories)


def _main(argv):
    """(exit status, stdout, stderr) of G.main(argv); argparse's SystemExit becomes its status."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = G.main([str(a) for a in argv])
        except SystemExit as e:
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


def _cli(argv, **kw):
    return subprocess.Popen([sys.executable, "-m", "acdc_lib.generate", *map(str, argv)], cwd=REPO_ROOT,
                            env=ONE_THREAD, **kw)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def batch2(story_file, tmp_path_factory):
    """One uninterrupted in-process run of both stories in one batch."""
    out = tmp_path_factory.mktemp("batch2")
    rc, stdout, err = _main(["--stories", story_file, "--steps", STEPS, "--batch-size", 2, "--out", out])
    assert rc == 0, err
    assert "2 stories done, 0 skipped" in stdout
    return out


@pytest.fixture(scope="module")
def batch1(story_file, tmp_path_factory):
    """The same run, uninterrupted, one story per batch."""
    out = tmp_path_factory.mktemp("batch1")
    rc, _, err = _main(["--stories", story_file, "--steps", STEPS, "--batch-size", 1, "--out", out])
    assert rc == 0, err
    return out


def test_writes_numbered_frames_contact_sheet_and_story_json(batch2, story_file):
    stories = read_stories(story_file)
    assert sorted(p.name for p in batch2.iterdir()) == [s.story_id for s in stories]
    steps_run = steps_for_strength(STEPS, PAPER_STRENGTH)
    for k, s in enumerate(stories):
        d = batch2 / s.story_id
        frames = [f"frame_{i:02d}_{kind}.png" for i in range(1, 7) for kind in ("arm", "corrected")]
        assert sorted(p.name for p in d.iterdir()) == sorted(frames + ["contact_sheet.png", "story.json"])
        for name in frames:
            assert Image.open(d / name).size == (TOY_SIDE, TOY_SIDE)
        # Two rows of six frames, each upscaled 4x (nearest) under the sentence numbers.
        sheet = Image.open(d / "contact_sheet.png").convert("RGB")
        cell, pad = 4 * TOY_SIDE, G.SHEET_PAD
        assert sheet.size == (G.SHEET_LABEL_W + 6 * (cell + pad) + pad, G.SHEET_TITLE_H + 2 * (cell + pad) + pad)
        x0, y1 = G.SHEET_LABEL_W + pad + 2 * (cell + pad), G.SHEET_TITLE_H + pad + (cell + pad)
        shown = sheet.crop((x0, y1, x0 + cell, y1 + cell))
        want = Image.open(d / "frame_03_corrected.png").convert("RGB").resize((cell, cell), Image.NEAREST)
        assert np.array_equal(np.asarray(shown), np.asarray(want))
        rec = json.loads((d / "story.json").read_text())
        assert rec["sentences"] == s.sentences and rec["seed"] == story_seed(0, k) and rec["index"] == k
        assert rec["settings"]["strength"] == PAPER_STRENGTH
        assert rec["settings"]["guidance_scale"] == PAPER_GUIDANCE_SCALE
        assert rec["settings"]["num_inference_steps"] == STEPS and rec["settings"]["memory"] == "rules"
        assert rec["memory_source"] == "rules" and len(rec["prompts"]) == 6
        assert [f["prompt"] for f in rec["frames"]] == rec["prompts"]
        assert rec["steps_run"] == steps_run and all(f["steps_run"] == steps_run for f in rec["frames"])
        assert sorted(rec["files"]) == sorted(frames + ["contact_sheet.png"])
        assert "torch" in rec["versions"] and "batch_size" not in rec["settings"]


def test_second_call_computes_nothing(batch2, story_file, monkeypatch):
    before = {p: p.stat().st_mtime_ns for p in batch2.rglob("*")}

    def no_models(*a, **kw):
        raise AssertionError("a finished run must not build models")

    monkeypatch.setattr(G, "build", no_models)
    rc, stdout, err = _main(["--stories", story_file, "--steps", STEPS, "--batch-size", 1, "--out", batch2])
    assert rc == 0, err
    assert "0 stories done, 2 skipped" in stdout
    assert {p: p.stat().st_mtime_ns for p in batch2.rglob("*")} == before


def test_other_settings_are_refused(batch2, story_file):
    before = _files(batch2)
    rc, _, err = _main(["--stories", story_file, "--steps", STEPS + 1, "--out", batch2])
    assert rc == 2
    assert "num_inference_steps 4 -> 5" in err and "--force" in err
    assert _files(batch2) == before


def test_sentences_on_the_command_line(tmp_path, story_file):
    s = read_stories(story_file)[0]
    sid = G.sentence_story_id(s.sentences)
    rc, stdout, err = _main(["--steps", STEPS, "--correct", "none", "--out", tmp_path, *s.sentences])
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / sid).iterdir()) == \
        sorted([f"frame_{i:02d}_arm.png" for i in range(1, 7)] + ["contact_sheet.png", "story.json"])
    rec = json.loads((tmp_path / sid / "story.json").read_text())
    assert rec["sentences"] == s.sentences and rec["seed"] == story_seed(0, 0)
    assert rec["prompts"] is None and all(not f["corrected"] for f in rec["frames"])
    assert Image.open(tmp_path / sid / "contact_sheet.png").size[1] == G.SHEET_TITLE_H + 4 * TOY_SIDE + 2 * G.SHEET_PAD
    # --sentence gives the same story (same id, so it is already done).
    rc, stdout, _ = _main(["--steps", STEPS, "--correct", "none", "--out", tmp_path,
                           *[a for t in s.sentences for a in ("--sentence", t)]])
    assert rc == 0 and "0 stories done, 1 skipped" in stdout
    # --force recomputes under other settings and drops frames the new run does not write.
    rc, _, err = _main(["--steps", STEPS, "--correct", "2", "--memory", "none", "--out", tmp_path, *s.sentences])
    assert rc == 2 and "--force" in err
    rc, _, err = _main(["--steps", STEPS, "--correct", "2", "--memory", "none", "--out", tmp_path, "--force",
                        *s.sentences])
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / sid).glob("*_corrected.png")) == \
        ["frame_01_corrected.png", "frame_02_corrected.png"]
    rec = json.loads((tmp_path / sid / "story.json").read_text())
    assert rec["memory_source"] == "none" and rec["prompts"] == s.sentences


def test_killed_run_resumes_to_the_same_bytes(batch1, story_file, tmp_path):
    out = tmp_path / "killed"
    args = ["--stories", story_file, "--steps", STEPS, "--batch-size", 1, "--out", out]
    p = _cli(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(out.glob("*/story.json")):
        assert p.poll() is None and time.monotonic() < deadline, "the run ended before writing a story"
        time.sleep(0.01)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert len(list(out.glob("*/story.json"))) == 1  # killed before the second story finished
    rc, stdout, err = _main(args)
    assert rc == 0, err
    assert "1 story done, 1 skipped" in stdout
    assert _files(out) == _files(batch1)


def test_batch_size_changes_no_seed_prompt_or_token(batch1, batch2):
    # Batched float kernels round differently from single-row ones, so a decoded pixel that lies on a
    # rounding edge can land one grey level apart; every draw, prompt and setting is the same.
    one, two = _files(batch1), _files(batch2)
    assert one.keys() == two.keys()
    for name in one:
        if name.endswith(".json"):
            assert one[name] == two[name], name
        else:
            a, b = _pixels(one[name]), _pixels(two[name])
            assert a.shape == b.shape and np.abs(a - b).max() <= 1 and (a != b).mean() < 1e-3, name


@pytest.mark.network
def test_llm_memory_through_an_openai_compatible_server(tmp_path, monkeypatch):
    from fake_openai import FakeOpenAI

    sentences = ["Max the corgi was in the park at night.", "He jumped.", "Then he sat."]
    answer = "1. Max the corgi was in the park at night.\n2. Max the corgi jumps in the park.\n3. Max sits."
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeOpenAI(lambda body: answer) as srv:
        monkeypatch.setenv(G.LLM_BASE_URL_ENV, srv.url)
        rc, _, err = _main(["--memory", "llm", "--llm-cache", tmp_path / "llm.sqlite", "--steps", STEPS,
                            "--correct", "2", "--out", tmp_path / "out", *sentences])
        assert rc == 0, err
        assert srv.count == 1
    rec = json.loads((tmp_path / "out" / G.sentence_story_id(sentences) / "story.json").read_text())
    assert rec["memory_source"] == "llm" and rec["settings"]["llm_model"] == G.DEFAULT_LLM_MODEL
    assert rec["prompts"] == [sentences[0], "Max the corgi jumps in the park.", "Max sits."]
    assert [f["prompt"] for f in rec["frames"]] == rec["prompts"][:2] + [None]


@pytest.mark.parametrize("argv, named", [
    (["--arm", "bogus", "A."], "bogus"),
    (["--strength", "0", "A."], "t' = 0 "),
    (["--strength", "1.5", "A."], "t' = 1.5"),
    (["--correct", "bogus", "A."], "'bogus'"),
    (["--steps", "0", "A."], "0 is not allowed"),
    (["--stories", "no/such/file.jsonl"], "no/such/file.jsonl"),
    (["--stories", "STORY_FILE", "--ids", "g1-000000,g9-nope"], "g9-nope"),
    (["--stories", "STORY_FILE", "--first", "3"], "--first 3"),
    (["--stories", "STORY_FILE", "A."], "not both"),
    ([], "no story given"),
    (["--memory", "llm", "A."], "--llm-cache"),
    (["A.", "  "], "sentence 2"),
    (["--correct", "3", "A.", "B."], "--correct 3"),
])
def test_bad_input_is_refused_naming_the_value(argv, named, story_file, tmp_path, monkeypatch):
    for var in ("OPENAI_API_KEY", G.LLM_BASE_URL_ENV):  # so the LLM case has no way to get answers
        monkeypatch.delenv(var, raising=False)
    argv = [str(story_file) if a == "STORY_FILE" else a for a in argv]
    rc, _, err = _main([*argv, "--out", tmp_path / "out"])
    assert rc != 0 and named in err, err
    assert not (tmp_path / "out").exists()


def test_batches_group_stories_by_length_in_input_order():
    stories = [(k, Story(story_id=f"s{k}", sentences=["a."] * n)) for k, n in enumerate([6, 3, 6, 6, 3])]
    got = [[k for k, _ in b] for b in G.batches(stories, 2)]
    assert got == [[0, 2], [3], [1, 4]]


def test_generate_imports_no_toyworld_module():
    tree = ast.parse(Path(G.__file__).read_text())
    names = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    names += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert names and not [n for n in names if "toyworld" in n]
    assert "toyworld" not in Path(G.__file__).read_text()
