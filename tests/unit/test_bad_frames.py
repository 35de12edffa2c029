"""A frame that went wrong (NaN, Inf, constant) is caught where it is made and never fed back silently.

The loop stops the story (or, asked to, goes on from the ARM's frame), the story's record says which frame
and why, and the table counts such stories. Correctors that return NaN and black frames stand in for a
half-precision overflow and a safety filter.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from acdc_lib import experiment as E
from acdc_lib.loop import MIN_FRAME_STD, BadFrameWarning, frame_faults, run_stories
from acdc_lib.types import LoopConfig, Story
from test_experiment import FakeEvaluator, FakeTruth, MarkingCorrector, VisibleARM, reference, stories as dummy_stories

N = 5


class PictureARM:
    """16x16 RGB frames: 4 tokens in 0..7, the grey levels of the quadrants over fixed stripes (never constant).

    `encode` refuses frames that are not finite, as a real VQ would silently not: nothing bad may reach it.
    `nan_decode` = (story row, frame): that decode returns NaN.
    """

    tokens_per_frame = 4

    def __init__(self, nan_decode: tuple[int, int] | None = None):
        self.nan_decode, self.frame, self.encoded = nan_decode, -1, []

    def generate(self, texts, prev_tokens, generators):
        self.frame = prev_tokens.shape[1]
        return torch.stack([torch.randint(0, 8, (4,), generator=g) for g in generators])

    def decode(self, tokens):
        grey = tokens.float().div(7).mul(0.8).view(-1, 1, 2, 2)
        x = F.interpolate(grey, size=(16, 16), mode="nearest").repeat(1, 3, 1, 1)
        x[..., ::2] += 0.2
        if self.nan_decode is not None and self.nan_decode[1] == self.frame:
            x[self.nan_decode[0]] = float("nan")
        return x

    def encode(self, images):
        assert torch.isfinite(images).all(), "a bad frame reached the ARM's encoder"
        self.encoded.append(images.shape[0])
        return (F.avg_pool2d(images.mean(1, keepdim=True), 8) - 0.1).div(0.8).mul(7).round().long().flatten(1)


class BreakingCorrector:
    """Returns each frame brightened a little; the frames whose prompt is in `bad` come back NaN or black."""

    def __init__(self, kind: str = "nan", bad: frozenset[str] = frozenset()):
        self.kind, self.bad = kind, bad

    def correct(self, images, prompts, *, strength=0.5, guidance_scale=7.5, num_inference_steps=50, generators=None):
        out = (images * 0.9 + 0.05).clone()
        for k, p in enumerate(prompts):
            if p in self.bad:
                out[k] = float("nan") if self.kind == "nan" else 0.0
        return out


def stories(k: int = 3) -> list[Story]:
    return [Story(story_id=f"s{j}", sentences=[f"story {j} sentence {i}" for i in range(N)]) for j in range(k)]


def loop(arm, corrector, **kw):
    return run_stories(stories(), arm, corrector, None, LoopConfig(correct_frames="all", use_memory=False),
                       seeds=[4, 5, 6], **kw)


@pytest.mark.parametrize("kind, why", [("nan", "768 NaN values"), ("black", "near constant: std 0.0000")])
def test_a_bad_corrected_frame_stops_its_story_and_leaves_the_others_as_they_were(kind, why):
    good = loop(PictureARM(), BreakingCorrector())
    arm = PictureARM()
    with pytest.warns(BadFrameWarning, match=r"story 's1', frame 3: the corrected frame went wrong"):
        out = loop(arm, BreakingCorrector(kind, frozenset({"story 1 sentence 2"})))
    s1 = out.stories[1]
    assert (s1.stopped.frame, s1.stopped.stage, s1.stopped.action) == (2, "correction", "stopped")
    assert s1.stopped.reason.startswith(why) and s1.stopped.image.shape == (3, 16, 16)
    assert [f.index for f in s1.frames] == [0, 1] and s1.faults() == [s1.stopped]
    assert torch.equal(s1.final_images(), good.stories[1].final_images()[:2])
    for b in (0, 2):  # the batch's other stories: every frame, exactly as without the fault
        assert out.stories[b].stopped is None and len(out.stories[b].frames) == N
        assert torch.equal(out.stories[b].final_images(), good.stories[b].final_images())
    assert arm.encoded == [3, 3, 2, 2, 2]  # frame 3 re-encoded two rows: the bad one never reached the ARM


@pytest.mark.parametrize("kind", ["nan", "black"])
def test_with_on_bad_frame_uncorrected_the_story_goes_on_from_the_arm_frame(kind):
    with pytest.warns(BadFrameWarning, match="it goes on from the ARM's frame, uncorrected"):
        out = loop(PictureARM(), BreakingCorrector(kind, frozenset({"story 1 sentence 2"})),
                   on_bad_frame="uncorrected")
    s1 = out.stories[1]
    assert s1.stopped is None and len(s1.frames) == N
    f2 = s1.frames[2]
    assert not f2.corrected and f2.corrected_image is None and f2.steps_run == 0
    assert (f2.fault.frame, f2.fault.stage, f2.fault.action) == (2, "correction", "uncorrected")
    assert torch.equal(f2.context_tokens, f2.arm_tokens)  # the ARM continued from its own frame
    assert torch.equal(f2.final_image, f2.arm_image) and torch.isfinite(s1.final_images()).all()
    assert all(f.corrected for k, f in enumerate(s1.frames) if k != 2) and s1.faults() == [f2.fault]


def test_a_bad_decoded_frame_stops_its_story_whatever_on_bad_frame_says():
    with pytest.warns(BadFrameWarning, match=r"story 's0', frame 2: the ARM's decoded frame went wrong \(768 NaN"):
        out = loop(PictureARM(nan_decode=(0, 1)), BreakingCorrector(), on_bad_frame="uncorrected")
    s0 = out.stories[0]
    assert (s0.stopped.frame, s0.stopped.stage, s0.stopped.action) == (1, "decode", "stopped")
    assert len(s0.frames) == 1 and all(len(s.frames) == N for s in out.stories[1:])


def test_on_bad_frame_takes_only_stop_or_uncorrected():
    with pytest.raises(ValueError, match=r"on_bad_frame must be one of \('stop', 'uncorrected'\), got 'skip'"):
        loop(PictureARM(), BreakingCorrector(), on_bad_frame="skip")


def test_frame_faults_flag_nan_inf_and_constant_frames_but_no_toy_frame():
    from acdc_lib.toyworld.render import render_states
    from acdc_lib.toyworld.splits import load_split

    rendered = render_states([s.states[0] for s in load_split("test", regenerate=False)]).images  # (1000, 3, 32, 32)
    assert frame_faults(rendered) == [None] * len(rendered)
    assert rendered.flatten(1).std(1, correction=0).min() > 10 * MIN_FRAME_STD  # the margin the threshold keeps
    grey = torch.full((3, 32, 32), 0.5) + 0.004 * torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(0))
    inf = rendered[0].clone()
    inf[0, 0, :3] = float("inf")
    found = frame_faults(torch.stack([torch.zeros(3, 32, 32), grey, inf, rendered[1]]))
    assert found[0].startswith("near constant: std 0.0000 < 0.01") and found[1].startswith("near constant: std 0.004")
    assert found[2] == "3 Inf values" and found[3] is None
    assert frame_faults(torch.zeros(2, 1, 2, 2)) == [None, None]  # 4 pixels are no picture: not judged constant


class NaNCorrector(MarkingCorrector):
    """test_experiment's MarkingCorrector; the frame of `bad` prompt comes back NaN."""

    bad = "story 1 sentence 2"

    def correct(self, images, prompts, **kw):
        out = super().correct(images, prompts, **kw)
        out[[k for k, p in enumerate(prompts) if p == self.bad]] = float("nan")
        return out


def test_the_run_records_the_bad_frame_resumes_and_the_table_counts_the_story(tmp_path):
    sts = dummy_stories(3)
    n = len(sts[0])
    config = E.ExperimentConfig(rows=("arm", "acdc_nomem"), batch_size=2, num_inference_steps=10, n_bootstrap=50,
                                n_bootstrap_set=10)
    kw = dict(arm=VisibleARM(), corrector=NaNCorrector(), reference=reference, config=config, progress=False)
    with pytest.warns(BadFrameWarning, match="story 's1', frame 3"):
        E.run_experiment(sts, tmp_path, **kw)
    rec = json.loads((tmp_path / "acdc_nomem" / "s1.json").read_text())
    assert rec["bad_frames"] == [{"frame": 2, "stage": "correction", "reason": "4 NaN values", "action": "stopped"}]
    assert "bad_frames" not in json.loads((tmp_path / "acdc_nomem" / "s0.json").read_text())
    assert E.check_story_files(tmp_path / "acdc_nomem", sts[1]) == "done"  # 2 frames, as its record says
    assert E.run_experiment(sts, tmp_path, **kw) == {"arm": [], "acdc_nomem": []}  # nothing recomputed
    with pytest.raises(ValueError, match=r"1 of 3 stories were stopped .*s1: frame 3 \(correction\): 4 NaN values"):
        E.load_frames(tmp_path, "acdc_nomem", sts)
    assert E.load_frames(tmp_path, "acdc_nomem", [sts[0], sts[2]]).shape == (2, n, 1, 2, 2)

    table = E.summarise(tmp_path, sts, FakeEvaluator(), config, ground_truth=FakeTruth())
    assert table.n_stories == 2 and len(table.per_story["arm"]["frame_consistency"]) == 2  # s1 in no row
    assert table.bad_frames == {"acdc_nomem": {"s1": ["frame 3 (correction): 4 NaN values; stopped"]}}
    assert "ARM + ACDC, no memory: 1 (1 stopped)" in table.to_markdown() and "2 stories are scored" in table.to_markdown()
    assert E.ResultsTable.from_dict(json.loads(json.dumps(table.to_dict()))).bad_frames == table.bad_frames


class BreakingVideoCorrector:
    """Brightens each chunk a little; at call `bad[1]` the second frame of the video with prompt `bad[0]` is NaN or black."""

    def __init__(self, kind: str = "nan", bad: tuple[str, int] | None = None):
        self.kind, self.bad, self.calls = kind, bad, 0

    def correct_video(self, videos, prompts, *, strength=0.5, guidance_scale=7.5, num_inference_steps=50,
                      generators=None):
        self.calls += 1
        out = (videos * 0.9 + 0.05).clone()
        for k, p in enumerate(prompts):
            if (p, self.calls) == self.bad:
                out[k, 1] = float("nan") if self.kind == "nan" else 0.0
        return out


def video(corrector, arm=None, **kw):
    from acdc_lib.loop import run_video

    return run_video(["a fox", "an owl", "a cat"], arm or PictureARM(), corrector, num_frames=6, chunk_length=2,
                     correct_chunks="all", config=LoopConfig(num_inference_steps=10), seeds=[4, 5, 6], **kw)


@pytest.mark.parametrize("kind", ["nan", "black"])
def test_a_bad_corrected_chunk_stops_its_video_before_the_chunk(kind):
    good = video(BreakingVideoCorrector())
    arm = PictureARM()
    with pytest.warns(BadFrameWarning, match=r"video 1, frame 4: the corrected frame went wrong"):
        out = video(BreakingVideoCorrector(kind, ("an owl", 2)), arm)
    v1 = out.videos[1]
    assert (v1.stopped.frame, v1.stopped.stage, v1.stopped.action) == (3, "correction", "stopped")
    assert v1.final_frames.shape[0] == v1.arm_tokens.shape[0] == 2 and v1.corrected == [True, True]
    assert torch.equal(v1.final_frames, good.videos[1].final_frames[:2])
    for b in (0, 2):
        assert out.videos[b].stopped is None
        assert torch.equal(out.videos[b].final_frames, good.videos[b].final_frames)
        assert torch.equal(out.videos[b].context_tokens, good.videos[b].context_tokens)
    assert arm.encoded == [6, 4, 4]  # chunk 2 re-encoded the two good videos only


def test_with_on_bad_frame_uncorrected_a_video_keeps_the_arm_chunk_and_goes_on():
    with pytest.warns(BadFrameWarning, match="video 1, frame 4: .*it goes on from the ARM's frame"):
        out = video(BreakingVideoCorrector("nan", ("an owl", 2)), on_bad_frame="uncorrected")
    v1 = out.videos[1]
    assert v1.stopped is None and v1.corrected == [True, True, False, False, True, True]
    assert [(f.frame, f.action) for f in v1.faults] == [(3, "uncorrected")]
    assert torch.equal(v1.final_frames[2:4], v1.arm_frames[2:4]) and torch.equal(v1.context_tokens[2:4], v1.arm_tokens[2:4])
    assert torch.isfinite(v1.final_frames).all() and v1.final_frames.shape[0] == 6


def test_a_story_stopped_at_its_first_frame_keeps_an_empty_frames_file(tmp_path):
    sts = dummy_stories(2)
    config = E.ExperimentConfig(rows=("acdc_nomem",), batch_size=2, num_inference_steps=10)

    class FirstFrameNaN(NaNCorrector):
        bad = "story 0 sentence 0"

    with pytest.warns(BadFrameWarning, match="story 's0', frame 1"):
        E.run_experiment(sts, tmp_path, arm=VisibleARM(), corrector=FirstFrameNaN(), config=config, progress=False)
    with np.load(tmp_path / "acdc_nomem" / "s0.npz") as z:
        assert z["frames"].shape == (0, 1, 2, 2)
    assert E.check_story_files(tmp_path / "acdc_nomem", sts[0]) == "done"
    assert E.stopped_stories(tmp_path, "acdc_nomem", sts) == {
        "s0": {"frame": 0, "stage": "correction", "reason": "4 NaN values", "action": "stopped"}}
