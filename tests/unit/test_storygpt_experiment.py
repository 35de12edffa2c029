"""StoryGPT-V-toy as a component and notebook 09's logic end to end, on tiny random StoryGPT-V checkpoints saved
into a temporary folder (the shipped toy ARM, DM and evaluator for the ACDC rows and the scores)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from acdc_lib import components
from acdc_lib.experiment import storygpt as XS
from acdc_lib.experiment.rows import ExperimentConfig, load_frames, run_experiment
from acdc_lib.experiment.scoring import summarise
from acdc_lib.memory import RuleMemory
from acdc_lib.toyworld.splits import load_split
from tiny_storygpt import save_tiny_storygpt

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return save_tiny_storygpt(tmp_path_factory.mktemp("storygpt_ckpt"))


def test_storygpt_is_a_component_and_missing_checkpoints_name_folder_and_command(root, tmp_path):
    assert components.available("story_generator") == {"storygpt_v": "acdc_lib.toyworld.components"}
    gens = XS.build_generators(model_id=root, num_inference_steps=2)
    assert set(gens) == set(XS.STORYGPT_ROWS)
    assert not gens["storygpt_v_caption"].lm.config.interleaved and gens["storygpt_v_text"].lm.config.target == "text"
    # the no-L_reg row pairs the no-L_reg Char-LDM with its own LM
    assert not torch.equal(gens["storygpt_v_noreg"].char_ldm.unet.conv_in.weight, gens["storygpt_v"].char_ldm.unet.conv_in.weight)
    with pytest.raises(FileNotFoundError, match=r"char_ldm', .*aligned_lm'\].*make train-toy.*acdc_lib.toyworld.train "
                                                 r"char_ldm aligned_lm --out"):
        components.build("story_generator", "storygpt_v", model_id=tmp_path)
    with pytest.raises(ValueError, match="unknown StoryGPT-V-toy variant 'nope'"):
        components.build("story_generator", "storygpt_v", model_id=root, variant="nope")
    with pytest.raises(ValueError, match="float32 only"):
        components.build("story_generator", "storygpt_v", model_id=root, dtype="float16")


def test_long_stories_cycle_sentences_and_states():
    s = load_split("test")[:1]
    (long,) = XS.long_stories(s, 14)
    assert len(long.sentences) == len(long.states) == 14 and long.story_id.endswith("-x14")
    assert long.sentences[6] == s[0].sentences[0] and long.states[13] == s[0].states[1]
    with pytest.raises(ValueError, match="n_frames must be >= 1"):
        XS.long_stories(s, 0)


def test_notebook09_logic_end_to_end(root, tmp_path):
    arm, dm = components.build("arm", "toy"), components.build("corrector", "toy")
    evaluator, truth = components.build("evaluator", "toy"), components.build("ground_truth", "toy")
    memory = RuleMemory(components.build("vocabulary", "toy"))
    gens = XS.build_generators(model_id=root, num_inference_steps=2)
    stories = load_split("test")[:3]
    cfg = ExperimentConfig(rows=XS.TABLE_ROWS, num_inference_steps=2, strength=0.5, batch_size=2, n_bootstrap=200,
                           n_bootstrap_set=20)
    parts = dict(arm=arm, corrector=dm, memory=memory, generator_rows=gens)
    with pytest.raises(ValueError, match="row 'storygpt_v' needs \\['generator_rows'\\]"):
        run_experiment(stories, tmp_path / "bad", arm=arm, corrector=dm, memory=memory, config=cfg, progress=False)
    done = run_experiment(stories, tmp_path / "rows", config=cfg, progress=False, **parts)
    assert all(len(done[r]) == 3 for r in XS.TABLE_ROWS)
    # a generator row's frames are the generator's, drawn from each story's own stream: batch size does not matter
    alone = run_experiment(stories, tmp_path / "alone", config=ExperimentConfig(
        rows=("storygpt_v",), num_inference_steps=2, batch_size=1), progress=False, generator_rows=gens)
    assert alone["storygpt_v"] == [s.story_id for s in stories]
    assert torch.allclose(load_frames(tmp_path / "alone", "storygpt_v", stories),
                          load_frames(tmp_path / "rows", "storygpt_v", stories), atol=1 / 255)
    assert not torch.equal(load_frames(tmp_path / "rows", "storygpt_v", stories),
                           load_frames(tmp_path / "rows", "storygpt_v_caption", stories))
    table = summarise(tmp_path / "rows", stories, evaluator, cfg, ground_truth=truth)
    assert set(XS.TABLE_ROWS) <= set(table.rows) and "identity_acc" in table.rows["storygpt_v"]
    claims = XS.storygpt_claims(table, None, n_resamples=200)
    assert [c["claim"] for c in claims] == list(XS.CLAIMS.values())
    d = np.mean(table.per_story["storygpt_v"]["char_acc"]) - np.mean(table.per_story["storygpt_v_text"]["char_acc"])
    assert claims[1]["parts"][0]["value"] == pytest.approx(d)
    assert claims[3]["verdict"] == "not testable here"  # no 48-frame run given
    h2h = XS.head_to_head(table, n_resamples=200)
    assert [r["metric"] for r in h2h] == ["char_acc", "bg_acc", "identity_acc", "fid"]
    assert h2h[0]["value"] == pytest.approx(np.mean(table.per_story["storygpt_v"]["char_acc"])
                                            - np.mean(table.per_story["acdc_rules"]["char_acc"]))
    assert len(XS.head_to_head_lines(h2h)) == 4
    # long stories: 6 and 48 frames, every method timed and scored per frame (the ARM windowed to 6 frames)
    parts = {**parts, "arm": components.build("arm", "toy", context_frames=6)}
    prof = XS.long_story_profile(stories[:2], tmp_path / "long", (6, 48), evaluator, truth,
                                 ExperimentConfig(num_inference_steps=2, batch_size=2, n_bootstrap=100,
                                                  n_bootstrap_set=10), **parts)
    assert all(len(v) == 2 and all(x > 0 for x in v) for v in prof["seconds_per_frame"].values())
    assert len(prof["curves"][48]["storygpt_v"]["char_acc"]["value"]) == 48
    assert len(prof["curves"][48]["arm"]["identity_acc"]["value"]) == 48
    claims = XS.storygpt_claims(table, json.loads(json.dumps(prof)), n_resamples=200)  # as read back from JSON
    per = np.asarray(prof["table"][48]["per_frame"]["storygpt_v"]["char_acc"], dtype=float)
    assert claims[3]["parts"][0]["value"] == pytest.approx(float((per[:, 42:].mean(1) - per[:, :6].mean(1)).mean()))
    # a rerun resumes: nothing is computed again, so no time is measured for it
    again = XS.long_story_profile(stories[:2], tmp_path / "long", (6,), evaluator, truth,
                                  ExperimentConfig(num_inference_steps=2, batch_size=2, n_bootstrap=100,
                                                   n_bootstrap_set=10), **parts)
    assert all(np.isnan(v[0]) for v in again["seconds_per_frame"].values())


def test_training_cost_reads_the_train_log():
    log = {"char_ldm": {"wall_s": 2310.0, "torch_threads": 1}, "aligned_lm": {"wall_s": 1380.0, "torch_threads": 1}}
    cost = XS.training_cost(log)
    assert cost["total"] == pytest.approx(61.5) and cost["char_ldm"] == pytest.approx(38.5)
    assert XS.training_cost({"char_ldm": log["char_ldm"]})["total"] is None


def test_generate_draws_stories_with_storygpt_and_names_missing_checkpoints(root, tmp_path, capsys):
    from acdc_lib import generate as G

    args = ["Max the corgi was in the park at night.", "He jumped.", "--generator", "storygpt_v", "--generator-id",
            str(root), "--generator-option", "num_inference_steps=2", "--out", str(tmp_path / "out")]
    assert G.main(args) == 0
    (story,) = [d for d in (tmp_path / "out").iterdir() if d.is_dir()]
    rec = json.loads((story / "story.json").read_text())
    assert rec["settings"]["generator"] == "storygpt_v" and rec["settings"]["generator_options"] == {
        "num_inference_steps": 2}
    assert sorted(p.name for p in story.glob("frame_*.png")) == ["frame_01_arm.png", "frame_02_arm.png"]
    assert [f["corrected"] for f in rec["frames"]] == [False, False]
    assert G.main(args) == 0 and "0 stories done, 1 skipped" in capsys.readouterr().out  # resumes
    bad = args[:5] + [str(tmp_path / "empty")] + args[6:9] + [str(tmp_path / "out2")]
    (tmp_path / "empty").mkdir()
    assert G.main(bad) == 2
    err = capsys.readouterr().err
    assert "--generator storygpt_v" in err and "char_ldm" in err and "make train-toy" in err


def test_notebook03_parts_take_a_story_generator_as_one_more_row(root):
    from acdc_lib.experiment.parts import build_parts

    parts = build_parts(evaluator=None, story_generator="storygpt_v", story_generator_id=str(root),
                        story_generator_options={"num_inference_steps": 2})
    assert parts.rows == ("dm_only", "arm", "acdc_rules", "acdc_nomem", "arm_true_ctx", "storygpt_v")
    assert list(parts.generator_rows) == ["storygpt_v"] and parts.names["story_generator"] == "storygpt_v"
    assert parts.generator_rows["storygpt_v"].num_inference_steps == 2
    assert build_parts(evaluator=None).generator_rows == {}
    with pytest.raises(FileNotFoundError, match="make train-toy"):
        build_parts(evaluator=None, story_generator="storygpt_v", story_generator_id=str(root / "char_ldm"))


def test_cpu_peak_memory_is_each_runs_own_after_an_earlier_run_freed_its_blocks():
    """A run that holds 48 MiB of small tensors reads about that rise, also when an earlier run of the same size
    freed its blocks just before (on glibc they would stay mapped, reused without a rise, unless handed back)."""
    def hold():
        xs = [torch.ones(24_000) for _ in range(512)]  # 512 blocks of 94 KiB, each under malloc's mmap threshold
        keep = torch.ones(1)  # a live block above them: the freed ones cannot go back from the heap's top alone
        return sum(float(x[0]) for x in xs) + float(keep[0])

    _, _, first = XS.measure(hold)
    out, seconds, again = XS.measure(hold)
    assert out == 513.0 and seconds > 0
    assert 40 < again < 80 and 40 < first < 80, (first, again)
