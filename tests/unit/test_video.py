"""The video extension: toy clips and their physics, the video ARM's sampling phases, the motion-module
corrector (UNetVideoCorrector) and AnimateDiff parts through run_video, the video experiment's scores and claims."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from acdc_lib.experiment import video as V
from acdc_lib.loop import run_video
from acdc_lib.sdedit import ModelNotAvailableError, UNetCorrector, UNetVideoCorrector
from acdc_lib.toyworld import clips as C
from acdc_lib.toyworld import models as M
from acdc_lib.toyworld.world import X_POSITIONS
from tiny_diffusers import tiny_animatediff_v2v_pipeline, tiny_unet_corrector_parts

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- clips -----------------------------------------------------------------------------------
def test_clip_physics_moves_one_cell_and_turns_at_the_edges():
    assert C.step_motion(3, "right") == (4, "right")
    assert C.step_motion(0, "left") == (0, "right")
    assert C.step_motion(len(X_POSITIONS) - 1, "right") == (len(X_POSITIONS) - 1, "left")
    with pytest.raises(ValueError, match="facing must be one of"):
        C.step_motion(2, "up")
    clip = C.make_clips(1, "test", 40)[0]
    m = C.true_motion([clip])
    nxt_cell, nxt_facing = C.physics_next(m["x_cell"][:, :-1], m["facing"][:, :-1])
    assert torch.equal(nxt_cell, m["x_cell"][:, 1:]) and torch.equal(nxt_facing, m["facing"][:, 1:])
    assert {s.facing for s in clip.states} == {"left", "right"}  # 40 frames cross the 7 cells both ways
    fixed = {(s.place, s.time, s.species, s.marking, s.accessory, s.layout, s.action) for s in clip.states}
    assert len(fixed) == 1  # what the clip keeps stays; only position, facing and the hop move


def test_clips_are_reproducible_by_index_and_splits_are_disjoint():
    a = C.make_clips(5, "test", 8)
    b = C.make_clips(2, "test", 8, start=3)
    assert [c.to_dict() for c in a[3:]] == [c.to_dict() for c in b]
    train = C.make_clips(50, "train", 8)
    test = C.make_clips(50, "test", 8)
    assert not {c.states[0].to_dict().__repr__() for c in train} & {c.states[0].to_dict().__repr__() for c in test}
    assert C.Clip.from_dict(a[0].to_dict()).to_dict() == a[0].to_dict()
    with pytest.raises(ValueError, match="split must be one of"):
        C.make_clips(1, "dev")
    jump = next(c for c in C.make_clips(30, "train", 8) if c.states[0].action == "jump")
    assert [s.y for s in jump.states[:4]] == [C.JUMP_ARC[(jump.phase + j) % 4] for j in range(4)]


def test_clip_truth_labels_match_the_states():
    truth = C.ToyClipTruth.from_split(3, n_frames=5)
    assert truth.frames.shape == (3, 5, 3, 32, 32)
    assert torch.equal(truth.labels["x_cell"], C.true_motion(truth.clips)["x_cell"])
    assert truth.prompts[0] == truth.clips[0].prompt and "the" in truth.prompts[0]


# ---- the video ARM's sampling phases -----------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_arm_parts():
    from transformers import LlamaForCausalLM

    from acdc_lib.toyworld.text import build_tokenizer

    torch.manual_seed(0)
    tok = build_tokenizer()
    vq = M.build_vq(codebook_size=32, channels=(16, 16, 16), embed_dim=4).eval()
    layout = M.ARMLayout(n_text=len(tok), codebook_size=32)
    lm = LlamaForCausalLM(M.arm_config(layout.vocab_size, hidden=32, layers=1, heads=2, max_frames=3))
    return lm, vq, tok, layout


def test_guidance_and_first_frame_settings_change_only_their_phase(tiny_arm_parts):
    lm, vq, tok, layout = tiny_arm_parts
    plain = M.ToyARM(lm, vq, tok, layout)
    first_cfg = M.ToyARM(lm, vq, tok, layout, first_frame_guidance_scale=5.0, first_frame_top_k=8)
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    prompts = [["Max the corgi runs in the park during the day."], ["Luna the owl jumps on the beach at night."]]
    none = torch.empty(2, 0, 64, dtype=torch.long)
    a, b = plain.generate(prompts, none, gens([1, 2])), first_cfg.generate(prompts, none, gens([1, 2]))
    assert not torch.equal(a, b)  # the first frame samples differently ...
    prev = a[:, None]
    assert torch.equal(plain.generate(prompts, prev, gens([3, 4])), first_cfg.generate(prompts, prev, gens([3, 4])))
    # ... later frames not; and CFG keeps rows independent of their batch
    cfg = M.ToyARM(lm, vq, tok, layout, guidance_scale=3.0)
    both = cfg.generate(prompts, prev, gens([5, 6]))
    one = cfg.generate(prompts[1:], prev[1:], gens([6]))
    assert torch.equal(both[1:], one) and not torch.equal(both, plain.generate(prompts, prev, gens([5, 6])))
    for bad, msg in (({"first_frame_top_k": 99}, r"first_frame_top_k must be None or an int in \[0, 32\]"),
                     ({"first_frame_guidance_scale": -1.0}, "first_frame_guidance_scale must be a finite number >= 0")):
        with pytest.raises(ValueError, match=msg):
            M.ToyARM(lm, vq, tok, layout, **bad)
    with pytest.raises(ValueError, match="guidance_scale must be a finite number >= 0"):
        M.ToyARM(lm, vq, tok, layout, guidance_scale=float("nan"))


def test_video_arm_trains_on_clip_windows_and_saves_its_sampling(tmp_path, tiny_arm_parts):
    from acdc_lib.toyworld import train as T

    _, vq, _, _ = tiny_arm_parts
    vq.save_pretrained(tmp_path / "vq")
    cfg = T.TrainConfig(steps=20, batch_size=4, lr=3e-3, seed=0, warmup=3,
                        extra={"hidden": 32, "layers": 1, "n_clips": 6, "clip_frames": 5, "context_frames": 3,
                               "p_uncond": 0.5, "code_slots": True, "temporal_skip": True,
                               "sampling": {"top_k": 4, "first_frame_guidance_scale": 2.0}})
    arm, losses = T.train_video_arm(tmp_path, cfg, verbose=False)
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    again = M.ToyARM.from_pretrained(tmp_path / "video_arm", tmp_path / "vq")
    assert again.context_frames == 3 and again.top_k == 4 and again.first_frame_guidance_scale == 2.0
    out = run_video(["Max the corgi runs in the park during the day."], again, None, num_frames=5, chunk_length=2,
                    correct_chunks="none", seeds=[0])
    assert out.videos[0].arm_tokens.shape == (5, 64) and len(out.frame_seconds) == 5


# ---- the motion-module corrector and AnimateDiff parts --------------------------------------------
@pytest.fixture(scope="module")
def video_corrector(tmp_path_factory):
    from diffusers import UNetMotionModel

    parts = tiny_unet_corrector_parts("vq")
    torch.manual_seed(0)
    adapter = M.build_motion_adapter(parts["unet"], max_frames=8, heads_per=16)
    unet = UNetMotionModel.from_unet2d(parts["unet"], adapter)
    return UNetVideoCorrector(unet, parts["text_encoder"], parts["tokenizer"], parts["scheduler"], parts["vae"])


def _videos(B=2, L=4, seed=0):
    return torch.rand(B, L, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_unet_video_corrector_runs_sdedit_over_the_chunk(video_corrector):
    from acdc_lib.sdedit import count_unet_calls

    v = _videos()
    gens = lambda: [torch.Generator().manual_seed(s) for s in (1, 2)]  # noqa: E731
    shapes, handle = count_unet_calls(video_corrector.unet)
    out = video_corrector.correct_video(v, ["a cat", "a dog"], strength=0.5, guidance_scale=7.5,
                                        num_inference_steps=8, generators=gens())
    handle.remove()
    assert out.shape == v.shape and 0.0 <= out.min() and out.max() <= 1.0
    assert video_corrector.last_steps_run == 4 and len(shapes) == 4
    assert shapes[0] == (4, 4, 4, 8, 8)  # CFG: 2B videos in one forward, (B, C, L, h, w)
    again = video_corrector.correct_video(v, ["a cat", "a dog"], strength=0.5, num_inference_steps=8, generators=gens())
    assert torch.equal(out, again)
    one = video_corrector.correct_video(v[1:], ["a dog"], strength=0.5, num_inference_steps=8,
                                        generators=[torch.Generator().manual_seed(2)])
    assert torch.allclose(one[0], out[1], atol=1e-5)
    # zero-initialised motion modules: before training, the inflated UNet is the image UNet frame by frame
    image = UNetCorrector(tiny_unet_corrector_parts("vq")["unet"], video_corrector.text_encoder,
                          video_corrector.tokenizer, video_corrector.scheduler, video_corrector.vae)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    emb = video_corrector.encode_prompts(["a cat", "a dog"])
    assert torch.allclose(video_corrector._unet_call(x, torch.tensor(500), emb), image._unet_call(x, torch.tensor(500), emb),
                          atol=1e-5)
    with pytest.raises(ValueError, match="must be 5-D"):
        video_corrector.correct_video(v[0], ["a cat"])


def test_unet_video_corrector_loads_a_saved_adapter(tmp_path, video_corrector):
    from tiny_diffusers import save_unet_corrector_parts

    parts = tiny_unet_corrector_parts("vq")
    save_unet_corrector_parts(parts, tmp_path)
    with pytest.raises(ModelNotAvailableError, match="no MotionAdapter at"):
        UNetVideoCorrector.from_pretrained(tmp_path)
    video_corrector.unet.save_motion_modules(str(tmp_path / "motion_adapter"))
    loaded = UNetVideoCorrector.from_pretrained(tmp_path)
    out = loaded.correct_video(_videos(1, 3), ["a cat"], strength=0.5, num_inference_steps=4,
                               generators=[torch.Generator().manual_seed(0)])
    assert out.shape == (1, 3, 3, 16, 16)


class _QuadrantARM:
    """Four tokens in 0..7 per frame, each the grey level of one quadrant of a 16x16 RGB frame."""

    tokens_per_frame = 4

    def generate(self, texts, prev_tokens, generators):
        return torch.stack([torch.randint(0, 8, (4,), generator=g) for g in generators])

    def decode(self, tokens):
        grey = tokens.float().div(7).view(-1, 1, 2, 2)
        return torch.nn.functional.interpolate(grey, size=(16, 16), mode="nearest").repeat(1, 3, 1, 1)

    def encode(self, images):
        return torch.nn.functional.avg_pool2d(images.mean(1, keepdim=True), 8).mul(7).round().long().flatten(1)


@pytest.mark.parametrize("kind", ["unet", "animatediff"])
def test_run_video_corrects_chunks_with_tiny_animatediff_parts(kind, video_corrector):
    from acdc_lib.sdedit import VideoPipelineCorrector

    vc = video_corrector if kind == "unet" else VideoPipelineCorrector(tiny_animatediff_v2v_pipeline())
    arm = _QuadrantARM()
    out = run_video(["a cat runs", "a dog jumps"], arm, vc, num_frames=6, chunk_length=3, correct_chunks="all",
                    seeds=[0, 1], config=None)
    v = out.videos[0]
    assert v.corrected == [True] * 6 and v.final_frames.shape[0] == 6
    assert not torch.equal(v.final_frames[:3], v.arm_frames[:3])  # the chunk was corrected ...
    assert torch.equal(v.context_tokens[:3], arm.encode(v.final_frames[:3]))  # ... and re-encoded (Eq. 6)


def test_run_video_keeps_given_prefix_frames():
    from dummies import DummyARM

    arm = DummyARM()
    prefix = torch.randint(0, 8, (2, 2, arm.tokens_per_frame), generator=torch.Generator().manual_seed(0))
    out = run_video(["a", "b"], arm, None, num_frames=4, chunk_length=2, correct_chunks="none", seeds=[0, 1],
                    prefix_tokens=prefix)
    assert torch.equal(out.videos[1].arm_tokens[:2], prefix[1])
    with pytest.raises(ValueError, match="prefix_tokens must be an integer tensor"):
        run_video(["a", "b"], arm, None, num_frames=2, chunk_length=2, correct_chunks="none", prefix_tokens=prefix)


# ---- scores and claims -----------------------------------------------------------------------------
class _ReadTruth:
    """An evaluator that reads a synthetic video's true state from its pixels (for exact checks)."""

    def embed_images(self, x):
        return x.flatten(1)

    def embed_subject(self, x):
        return x.flatten(1)

    def read_motion(self, x):
        cell = x[:, 0, 0, 0].mul(10).round().long()
        return {"position": cell.double(), "cell": cell, "facing": x[:, 1, 0, 0].round().long()}

    def read_identity(self, x):
        return {"coat": x[:, 2, 0, 0].round().long()}


def _synthetic(cells, facing, coat):
    B, N = cells.shape
    v = torch.full((B, N, 3, 4, 4), 0.5)
    v[:, :, 0, 0, 0] = cells / 10
    v[:, :, 1, 0, 0] = facing.float()
    v[:, :, 2, 0, 0] = coat.float()
    return v


def test_scores_follow_the_physics_and_the_identity():
    m = C.true_motion(C.make_clips(4, "test", 10))
    good = _synthetic(m["x_cell"], m["facing"], torch.ones(4, 10))
    bad_cells = m["x_cell"].clone()
    bad_cells[:, 5] = (bad_cells[:, 5] + 3) % 7
    coat = torch.ones(4, 10)
    coat[:, 6:] = 0
    bad = _synthetic(bad_cells, m["facing"], coat)
    ev = _ReadTruth()
    s_good = V.score_videos(good, ev, physics=C.physics_next, truth={"x_cell": m["x_cell"]})
    s_bad = V.score_videos(bad, ev, physics=C.physics_next, truth={"x_cell": m["x_cell"]})
    assert np.all(s_good["smoothness"] == 1.0) and np.all(s_good["identity_kept"] == 1.0)
    assert np.allclose(s_bad["smoothness"], 7 / 9)  # frame 6 leaves the physics and frame 7 comes back wrongly
    assert np.allclose(s_bad["identity_kept"], 5 / 9)
    assert np.all(s_bad["acc_x_cell_pf"][:, 5] == 0) and np.all(s_good["acc_x_cell_pf"] == 1)
    assert s_good["dynamic"].tolist() == [1.0] * 4
    with pytest.raises(ValueError, match="videos must be a"):
        V.score_videos(good[:, :1], ev)


def test_claims_compare_rows_on_the_same_videos():
    rng = np.random.default_rng(0)
    base = {k: rng.random(40) for k in ("subject", "background", "dynamic", "displacement", "sharpness_rel",
                                        "smoothness")}
    base["subject_to_first_pf"] = rng.random((40, 8))
    base["identity_kept_pf"] = rng.random((40, 8))
    better = {k: v + 0.2 for k, v in base.items()}
    claims = V.table3_claims({"arm": base, "acdc_first": better, "acdc_first_t04": base}, chunk_length=4)
    verdicts = {c["claim"]: c["verdict"] for c in claims}
    assert verdicts["ACDC raises subject and background consistency of ARM video"] == "reproduced"
    assert verdicts["frames after the corrected chunk stay aligned"] == "reproduced"
    assert verdicts["t' = 0.4 fixes local artefacts better than t' = 0.6"] == "opposite"
    worse = {k: v - 0.2 for k, v in base.items()}
    claims = V.table3_claims({"arm": base, "acdc_first": worse}, chunk_length=4)
    assert {c["verdict"] for c in claims} == {"opposite"}
    with pytest.raises(ValueError, match="paired rows must score the same videos"):
        V.paired_diff(np.zeros(3), np.zeros(4))


def test_real_path_scores_dynamics_from_flow_and_aesthetics_from_a_head():
    from acdc_lib.backends.video_metrics import AestheticScorer, FlowDynamics

    class _NoMotion:  # the real evaluator reads no motion: flow gives the dynamic degree
        def embed_images(self, x):
            return x.flatten(1)

    def shift_flow(f0, f1):  # the exact flow of a frame moved right by its index's step
        dx = (f1[:, 0].argmax(-1).float() - f0[:, 0].argmax(-1).float()).mean(-1)   # (M,)
        return dx[:, None, None, None].expand(-1, 2, 16, 16) * torch.tensor([1.0, 0.0])[None, :, None, None]

    B, N = 2, 8
    v = torch.zeros(B, N, 3, 16, 16)
    for j in range(N):
        v[0, j, :, :, j] = 1.0          # video 0 moves 1 px a frame ...
        v[1, j, :, :, 0] = 1.0          # ... video 1 stands still
    flow = FlowDynamics(shift_flow, fps=1.0)  # at 1 fps VBench's bar is 8 * 6 * 16 / 256 = 3 px: too high
    head = {"weight": torch.ones(1, 16 * 16 * 3), "bias": torch.zeros(1)}
    s = V.score_videos(v, _NoMotion(), flow=flow, aesthetic=AestheticScorer(lambda x: x.flatten(1), head))
    assert s["displacement"].tolist() == [1.0, 0.0] and s["dynamic"].tolist() == [0.0, 0.0]
    s = V.score_videos(v, _NoMotion(), flow=FlowDynamics(shift_flow, fps=16.0))  # bar 0.375 px
    assert s["dynamic"].tolist() == [1.0, 0.0] and "aesthetic" not in s
    scored = V.score_videos(v, _NoMotion(), aesthetic=AestheticScorer(lambda x: x.flatten(1), head))
    assert scored["aesthetic"].shape == (2,) and np.all(np.isfinite(scored["aesthetic"]))


def test_correction_rows_start_from_the_arm_rows_first_chunk():
    from acdc_lib.components import build

    truth = C.ToyClipTruth.from_split(2, n_frames=4)
    arm = build("arm", "toy", subfolder="video_arm")
    vc = build("video_corrector", "toy")
    exp = V.VideoExperiment(num_frames=4, chunk_length=2, num_inference_steps=4)
    plain = V.generate_row("arm", truth.prompts, arm, None, exp)
    fresh = V.generate_row("acdc_first", truth.prompts, arm, vc, exp)
    reused = V.generate_row("acdc_first", truth.prompts, arm, vc, exp, arm_chunk=plain["tokens"][:, :2])
    # the same seed draws the same first chunk: reusing it changes nothing there, and the correction is the same
    assert torch.equal(fresh["tokens"][:, :2], plain["tokens"][:, :2])
    assert torch.equal(reused["tokens"][:, :2], plain["tokens"][:, :2])
    assert torch.equal(reused["frames"][:, :2], fresh["frames"][:, :2])
    with pytest.raises(ValueError, match="arm_chunk must hold the first L=2 tokens"):
        V.generate_row("acdc_first", truth.prompts, arm, vc, exp, arm_chunk=plain["tokens"][:, :1])


def test_first_chunk_row_read_off_every_chunk_row_equals_running_it():
    from acdc_lib.components import build

    truth = C.ToyClipTruth.from_split(2, n_frames=4)
    arm = build("arm", "toy", subfolder="video_arm")
    vc = build("video_corrector", "toy")
    exp = V.VideoExperiment(num_frames=4, chunk_length=2, num_inference_steps=4)
    chunk = V.generate_row("arm", truth.prompts, arm, None, exp)["tokens"][:, :2]
    every = V.generate_row("acdc_all", truth.prompts, arm, vc, exp, arm_chunk=chunk)
    first = V.generate_row("acdc_first", truth.prompts, arm, vc, exp, arm_chunk=chunk)
    read = V.first_chunk_from_every_chunk("acdc_first", "acdc_all", exp, every)
    assert torch.equal(read["frames"], first["frames"]) and torch.equal(read["tokens"], first["tokens"])
    assert not torch.equal(every["frames"][:, 2:], first["frames"][:, 2:])  # the second chunk is corrected in one only
    # not exact, so not read off: another t', a third chunk, or nothing run
    assert V.first_chunk_from_every_chunk("acdc_first_t04", "acdc_all", exp, every) is None
    assert V.first_chunk_from_every_chunk("acdc_first", "acdc_all", V.VideoExperiment(num_frames=6, chunk_length=2), every) is None
    assert V.first_chunk_from_every_chunk("acdc_first", "acdc_all", exp, None) is None
