"""Ablation tools (acdc_lib.experiment.ablations) and the corrector's drift score, on tiny models built here."""
import dataclasses
import json

import numpy as np
import pytest
import torch

import tiny_diffusers as td
from acdc_lib import experiment as E
from acdc_lib.experiment import ablations as A
from acdc_lib.memory import RuleMemory, Vocabulary
from acdc_lib.sdedit import PipelineCorrector, RePaintInpainter, UNetCorrector
from acdc_lib.types import DriftScorer, LoopConfig, MemoryOutput
from dummies import DummyMemory
from test_experiment import FakeEvaluator, FakeTruth, MarkingCorrector, VisibleARM, reference, stories

PROMPTS = ["a red fox in a meadow", "a beagle on the beach", "an owl at night"]


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def frames(b=3, c=3, h=16, w=16, seed=7):
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def corrector():
    return UNetCorrector(**td.tiny_unet_corrector_parts(None))


# --------------------------------------------------------------------------------------------
# The drift score
# --------------------------------------------------------------------------------------------
def test_drift_score_is_the_conditional_minus_unconditional_denoising_error(corrector):
    x = frames(2)
    got = corrector.drift_score(x, PROMPTS[:2], strength=0.2, num_inference_steps=10, generators=gens(1, 2), draws=2)
    assert got.shape == (2,) and got.dtype == torch.float32
    # by hand: t' = 0.2 of 10 steps starts at timestep 101; noise drawn per row, twice
    abar = corrector.scheduler.alphas_cumprod[101]
    g = gens(1, 2)
    cond, uncond = corrector.encode_prompts(PROMPTS[:2]), corrector.encode_prompts([""]).expand(2, -1, -1)
    want = torch.zeros(2)
    with torch.no_grad():
        for _ in range(2):
            eps = torch.cat([torch.randn(1, 3, 16, 16, generator=gi) for gi in g])
            xt = abar.sqrt() * (2 * x - 1) + (1 - abar).sqrt() * eps
            err = lambda emb: ((corrector.unet(xt, 101, encoder_hidden_states=emb).sample - eps) ** 2).flatten(1).mean(1)  # noqa: E731
            want += err(cond) - err(uncond)
    torch.testing.assert_close(got, want / 2, atol=1e-5, rtol=1e-4)


def test_drift_score_rows_are_independent_and_reproducible(corrector):
    x = frames(3)
    batch = corrector.drift_score(x, PROMPTS, strength=0.5, num_inference_steps=10, generators=gens(4, 5, 6))
    again = corrector.drift_score(x, PROMPTS, strength=0.5, num_inference_steps=10, generators=gens(4, 5, 6))
    alone = corrector.drift_score(x[1:2], PROMPTS[1:2], strength=0.5, num_inference_steps=10, generators=gens(5))
    assert torch.equal(batch, again)
    torch.testing.assert_close(batch[1:2], alone, atol=1e-5, rtol=1e-4)
    other = corrector.drift_score(x, PROMPTS, strength=0.5, num_inference_steps=10, generators=gens(7, 8, 9))
    assert not torch.equal(batch, other)


@pytest.mark.parametrize("latent", ["kl", "vq"])
def test_drift_score_in_latent_space_and_v_prediction(latent):
    c = UNetCorrector(**td.tiny_unet_corrector_parts(latent))
    assert c.drift_score(frames(2), PROMPTS[:2], strength=0.5, num_inference_steps=10, generators=gens(1, 2)).shape == (2,)
    v = UNetCorrector(**td.tiny_unet_corrector_parts(None, prediction_type="v_prediction"))
    assert torch.isfinite(v.drift_score(frames(2), PROMPTS[:2], strength=0.5, num_inference_steps=10,
                                        generators=gens(1, 2))).all()


@pytest.mark.parametrize("kwargs, match", [({"draws": 0}, "draws"), ({"strength": 0.0}, "strength"),
                                           ({"generators": gens(1)}, "generator")])
def test_drift_score_refuses_bad_input(corrector, kwargs, match):
    args = {"strength": 0.5, "num_inference_steps": 10, "generators": gens(1, 2)} | kwargs
    with pytest.raises(ValueError, match=match):
        corrector.drift_score(frames(2), PROMPTS[:2], **args)


def test_pipeline_corrector_scores_drift_with_its_own_modules():
    pc = PipelineCorrector(td.tiny_sd_img2img_pipeline())
    assert isinstance(pc, DriftScorer) and isinstance(UNetCorrector(**td.tiny_unet_corrector_parts(None)), DriftScorer)
    s = pc.drift_score(frames(2, h=12, w=12), PROMPTS[:2], strength=0.5, num_inference_steps=10, generators=gens(1, 2))
    assert s.shape == (2,) and torch.isfinite(s).all()
    assert pc.unet_corrector().unet is pc.pipe.unet  # no copy of the weights


# --------------------------------------------------------------------------------------------
# One SDEdit pass, measured
# --------------------------------------------------------------------------------------------
def test_measure_sdedit_returns_the_correction_and_what_theorem2_needs(corrector):
    x = frames(3)
    plain = corrector.correct(x, PROMPTS, strength=0.3, guidance_scale=7.5, num_inference_steps=10,
                              generators=gens(1, 2, 3))
    m = A.measure_sdedit(corrector, x, PROMPTS, strength=0.3, guidance_scale=7.5, num_inference_steps=10,
                         generators=gens(1, 2, 3))
    assert torch.equal(m.corrected, plain)  # the hook only watches
    np.testing.assert_allclose(m.deviation, ((2 * plain - 1) - (2 * x - 1)).flatten(1).norm(dim=1).numpy(), rtol=1e-5)
    np.testing.assert_allclose(m.start_norm, (2 * x - 1).flatten(1).norm(dim=1).numpy(), rtol=1e-5)
    assert m.steps == 3 and m.dim == 3 * 16 * 16
    assert m.alpha_bar == pytest.approx(float(corrector.scheduler.alphas_cumprod[201]))
    # C: the guided eps norm over sqrt(1 - abar_t), largest over the 3 steps (201, 101, 1); at t = 1 it dominates
    assert (m.score_max > 0).all()
    assert len(corrector.unet._forward_hooks) == 0  # the hook is removed
    np.testing.assert_allclose(A.model_space_distance(corrector, plain, x), m.deviation, rtol=1e-5)


def test_score_max_matches_a_hand_computed_path(corrector):
    x = frames(1)
    m = A.measure_sdedit(corrector, x, PROMPTS[:1], strength=0.1, guidance_scale=1.0, num_inference_steps=10,
                         generators=gens(3))
    # one step at t = 1 without CFG: ||eps_theta(x_1)|| / sqrt(1 - abar_1)
    abar = corrector.scheduler.alphas_cumprod[1]
    eps = torch.randn(1, 3, 16, 16, generator=gens(3)[0])
    xt = abar.sqrt() * (2 * x - 1) + (1 - abar).sqrt() * eps
    with torch.no_grad():
        out = corrector.unet(xt, 1, encoder_hidden_states=corrector.encode_prompts(PROMPTS[:1])).sample
    assert m.score_max[0] == pytest.approx(float(out.norm() / (1 - abar).sqrt()), rel=1e-4)


def test_measure_sdedit_through_a_pipeline_corrector_at_its_model_size():
    pc = PipelineCorrector(td.tiny_sd_img2img_pipeline(), resolution=16)
    m = A.measure_sdedit(pc, frames(2, h=12, w=12), PROMPTS[:2], strength=0.5, guidance_scale=7.5,
                         num_inference_steps=10, generators=gens(1, 2))
    assert m.corrected.shape == (2, 3, 12, 12) and m.dim == 4 * 8 * 8  # latents of the 16 px model size
    assert (m.deviation > 0).all() and (m.score_max > 0).all()


def test_prompt_distance(corrector):
    d = A.prompt_distance(corrector, PROMPTS, [PROMPTS[0], PROMPTS[0], PROMPTS[2]])
    assert d[0] == 0 and d[2] == 0 and d[1] > 0
    with pytest.raises(ValueError, match="pairs"):
        A.prompt_distance(corrector, PROMPTS, PROMPTS[:2])


def test_as_unet_corrector_refuses_other_correctors():
    with pytest.raises(ValueError, match="exposes no UNet"):
        A.as_unet_corrector(MarkingCorrector())


# --------------------------------------------------------------------------------------------
# Wrong memory
# --------------------------------------------------------------------------------------------
VOCAB = Vocabulary(names={"Max": "male"}, species=("corgi", "fox", "owl"), places=("park", "snowy field", "field"),
                   place_phrases={"park": "in the park", "snowy field": "in the snowy field", "field": "in the field"},
                   times={"day": ("day",), "night": ("night",)},
                   time_phrases={"day": "during the day", "night": "at night"}, actions={"runs": ("runs", "ran")},
                   caption=lambda n, s, a, p, t: f"{n} the {s} {a} {p} {t}")


@pytest.mark.parametrize("kind, seed", [("species", 0), ("place", 1), ("time", 2)])
def test_corrupt_prompt_swaps_one_value_for_another(kind, seed):
    p = "Max the corgi runs in the snowy field at night."
    new = A.corrupt_prompt(p, kind, VOCAB, np.random.default_rng(seed))
    assert new != p
    changed = {"species": ("corgi", ("fox", "owl")), "place": ("in the snowy field", ("in the park", "in the field")),
               "time": ("at night", ("during the day",))}[kind]
    assert changed[0] not in new and any(o in new for o in changed[1])
    # everything else is kept
    rest = p.replace(changed[0], "")
    assert all(w in new for w in rest.split())


def test_corrupt_prompt_without_the_kind_and_bad_kind():
    assert A.corrupt_prompt("a beach at dawn", "species", VOCAB, np.random.default_rng(0)) is None
    with pytest.raises(ValueError, match="unknown kind"):
        A.corrupt_prompt("x", "colour", VOCAB, np.random.default_rng(0))


def test_corrupted_memory_rates_and_determinism():
    rules = RuleMemory(VOCAB)
    sentences = ["Max the corgi ran in the park at night.", "He ran.", "Max ran.", "He ran in the field.",
                 "He ran.", "Max ran during the day."]
    right = rules.refine(sentences).prompts
    none = A.CorruptedMemory(rules, VOCAB, 0.0, seed=3)
    assert none.refine(sentences).prompts == right and none.last_changes == [None] * 6
    every = A.CorruptedMemory(rules, VOCAB, 1.0, seed=3)
    out = every.refine(sentences)
    assert all(a != b for a, b in zip(out.prompts, right)) and all(k in A.CORRUPTIBLE for k in every.last_changes)
    assert "corrupted(1)" in out.source
    assert A.CorruptedMemory(rules, VOCAB, 1.0, seed=3).refine(sentences).prompts == out.prompts   # same draws
    half = A.CorruptedMemory(rules, VOCAB, 0.5, seed=3)
    changed = [sum(c is not None for c in (half.refine([s + f" {k}" for s in sentences]), half.last_changes)[1])
               for k in range(40)]
    assert 0.3 < np.mean(changed) / 6 < 0.7


@pytest.mark.parametrize("rate", [-0.1, 1.5, True, "0.5"])
def test_corrupted_memory_refuses_bad_rates(rate):
    with pytest.raises(ValueError, match="rate"):
        A.CorruptedMemory(RuleMemory(VOCAB), VOCAB, rate)


# --------------------------------------------------------------------------------------------
# Variants, policies, costs (fake 2x2 world of test_experiment)
# --------------------------------------------------------------------------------------------
def config(**kw):
    return E.ExperimentConfig(batch_size=2, num_inference_steps=10, n_bootstrap=100, n_bootstrap_set=10, **kw)


def test_run_and_summarise_variants(tmp_path):
    sts = stories(3)
    variants = {"t0.3": A.Variant("acdc_rules", "t'=0.3", {"strength": 0.3}),
                "first2": A.Variant("acdc2_rules", "ACDC #2"),
                "every3": A.Variant("acdc_every3_rules", "every 3rd", memory=DummyMemory())}
    dirs = A.run_variants(sts, tmp_path, variants, arm=VisibleARM(), corrector=MarkingCorrector(),
                          memory=DummyMemory(), config=config(), progress=False)
    assert json.loads((dirs["t0.3"] / "config.json").read_text())["strength"] == 0.3
    np.testing.assert_array_equal(A.corrections_per_story(dirs["first2"], "acdc2_rules", sts), [2, 2, 2])
    np.testing.assert_array_equal(A.corrections_per_story(dirs["every3"], "acdc_every3_rules", sts), [2, 2, 2])
    assert A.row_prompts(dirs["first2"], "acdc2_rules", sts)[0][2:] == [None] * 4
    t = A.summarise_variants(dirs, variants, sts, FakeEvaluator(), config(), ground_truth=FakeTruth())
    assert list(t.rows) == list(variants) and t.labels["first2"] == "ACDC #2"
    assert t.per_story["every3"]["char_acc"] == pytest.approx([2 / 6] * 3)  # the marker pixel = corrected
    # a rerun computes nothing; other settings in the same folder are refused
    A.run_variants(sts, tmp_path, variants, arm=VisibleARM(), corrector=MarkingCorrector(), memory=DummyMemory(),
                   config=config(), progress=False)
    with pytest.raises(ValueError, match="other settings"):
        A.run_variants(sts, tmp_path, {"t0.3": A.Variant("acdc_rules", "x", {"strength": 0.4})}, arm=VisibleARM(),
                       corrector=MarkingCorrector(), memory=DummyMemory(), config=config(), progress=False)


@pytest.mark.parametrize("args, match", [(("nope", "x"), "unknown row"), (("arm", "x", {"seed": 1}), "not allowed")])
def test_variant_validation(args, match):
    with pytest.raises(ValueError, match=match):
        A.Variant(*args)


def test_variant_names_must_be_folder_names(tmp_path):
    with pytest.raises(ValueError, match="names a folder"):
        A.run_variants(stories(1), tmp_path, {"../x": A.Variant("arm", "x")}, arm=VisibleARM())


def test_adaptive_row_needs_a_threshold(tmp_path):
    with pytest.raises(ValueError, match="drift_threshold"):
        E.run_experiment(stories(2), tmp_path, arm=VisibleARM(), corrector=MarkingCorrector(), memory=DummyMemory(),
                         config=config(rows=("acdc_adaptive_rules",)), progress=False)


def test_versus_fixed_frontier_interpolates_per_story():
    q = {"arm": np.array([0.5, 0.5]), "k2": np.array([0.7, 0.7]), "k2b": np.array([0.6, 0.6]),
         "k4": np.array([0.8, 0.9]), "ad": np.array([0.9, 0.9])}
    c = {"arm": np.zeros(2), "k2": np.full(2, 2.0), "k2b": np.full(2, 2.0), "k4": np.full(2, 4.0), "ad": np.full(2, 3.0)}
    r = A.versus_fixed_frontier(q, c, ["arm", "k2", "k2b", "k4"], "ad", n_resamples=200)
    assert r["between"] == ["k2", "k4"] and r["weight_hi"] == pytest.approx(0.5)  # k2 beats k2b at 2 corrections
    assert r["frontier_quality"] == pytest.approx((0.75 + 0.8) / 2)
    assert r["beats"] and not r["loses"]
    with pytest.raises(ValueError, match="outside"):
        A.versus_fixed_frontier(q, {**c, "ad": np.full(2, 5.0)}, ["arm", "k4"], "ad")


def test_story_quality_and_merge(tmp_path):
    sts = stories(2)
    E.run_experiment(sts, tmp_path, arm=VisibleARM(), corrector=MarkingCorrector(), memory=DummyMemory(),
                     reference=reference, config=config(rows=("arm", "acdc_rules")), progress=False)
    t = E.summarise(tmp_path, sts, FakeEvaluator(), config(rows=("arm", "acdc_rules")), ground_truth=FakeTruth())
    np.testing.assert_allclose(A.story_quality(t, "acdc_rules", ["char_acc", "bg_acc"]), [0.75, 0.75])
    with pytest.raises(ValueError, match="no per-story"):
        A.story_quality(t, "arm", ["nope"])
    merged = A.merge_tables([t, t])
    assert list(merged.rows) == list(t.rows)


def test_policy_costs_ratio_and_shares():
    sts = stories(2)
    costs = A.policy_costs(sts, VisibleARM(), MarkingCorrector(), DummyMemory(),
                           {"none": LoopConfig(correct_frames="none"), "first 2": LoopConfig(correct_frames=2)},
                           seeds=[1, 2], repeats=2)
    assert costs["none"]["ratio_to_arm_alone"] == 1.0 and costs["first 2"]["corrected_share"] == pytest.approx(2 / 6)
    assert set(costs["none"]["seconds_per_frame"]) >= {"arm", "correction", "drift"}
    with pytest.raises(ValueError, match="'none'"):
        A.policy_costs(sts, VisibleARM(), MarkingCorrector(), None, {"all": LoopConfig()})


# --------------------------------------------------------------------------------------------
# Inpainting with a UNet without mask channels (InpaintCorrector's interface)
# --------------------------------------------------------------------------------------------
def test_unet_inpaint_keeps_what_the_mask_keeps_in_pixel_space(corrector):
    x = frames(2)
    masks = torch.zeros(2, 1, 16, 16)
    masks[0, :, 4:8, 4:12] = 1
    masks[1, :, 10:16, 0:6] = 1
    out = corrector.inpaint(x, masks, PROMPTS[:2], strength=1.0, guidance_scale=7.5, num_inference_steps=10,
                            generators=gens(1, 2))
    assert out.shape == x.shape and corrector.last_steps_run == 10
    keep = masks == 0
    # pixel space: the kept region is the original exactly (up to the [-1, 1] round trip)
    torch.testing.assert_close(out[keep.expand_as(out)], x[keep.expand_as(x)], atol=1e-6, rtol=0)
    assert (out - x)[~keep.expand_as(out)].abs().mean() > 0.05  # the masked region was repainted
    again = corrector.inpaint(x, masks, PROMPTS[:2], strength=1.0, guidance_scale=7.5, num_inference_steps=10,
                              generators=gens(1, 2))
    assert torch.equal(out, again)


def test_unet_inpaint_with_an_empty_mask_is_the_round_trip_and_a_full_mask_is_sdedit(corrector):
    x = frames(1)
    none = corrector.inpaint(x, torch.zeros(1, 1, 16, 16), PROMPTS[:1], strength=0.5, num_inference_steps=10,
                             generators=gens(3))
    torch.testing.assert_close(none, x, atol=1e-6, rtol=0)
    full = corrector.inpaint(x, torch.ones(1, 1, 16, 16), PROMPTS[:1], strength=0.5, num_inference_steps=10,
                             generators=gens(3))
    sdedit = corrector.correct(x, PROMPTS[:1], strength=0.5, num_inference_steps=10, generators=gens(3))
    torch.testing.assert_close(full, sdedit, atol=1e-5, rtol=0)


def test_unet_inpaint_in_latent_space_is_the_vae_round_trip_outside_the_mask():
    c = UNetCorrector(**td.tiny_unet_corrector_parts("kl"))
    x = frames(1)
    masks = torch.zeros(1, 1, 16, 16)
    masks[0, :, 0:3, 0:3] = 1  # max-pooled to latent cells (0, 0), (0, 1), (1, 0), (1, 1) of the 8x8 grid
    out = c.inpaint(x, masks, PROMPTS[:1], strength=1.0, num_inference_steps=10, generators=gens(4))
    with torch.no_grad():
        roundtrip = c._to_images(c._to_model_space(x, gens(4)))  # what an empty mask leaves: decode(encode(x))
    empty = c.inpaint(x, torch.zeros_like(masks), PROMPTS[:1], strength=1.0, num_inference_steps=10,
                      generators=gens(4))
    torch.testing.assert_close(empty, roundtrip, atol=1e-5, rtol=0)
    # in latent space (decoding left out): the cells the mask touches are repainted, every other cell
    # is the encoded original exactly (the tiny VAE's decoder attends over all cells, so in pixels no
    # region is untouched)
    with torch.no_grad():
        x0 = c._to_model_space(x, gens(4))[0]
    c._to_images = lambda z: z  # noqa: E731  (the latents themselves come back)
    z = c.inpaint(x, masks, PROMPTS[:1], strength=1.0, num_inference_steps=10, generators=gens(4))[0]
    cells = torch.zeros(8, 8, dtype=torch.bool)
    cells[:2, :2] = True
    torch.testing.assert_close(z[:, ~cells], x0[:, ~cells], atol=1e-6, rtol=0)
    assert (z[:, cells] - x0[:, cells]).abs().mean() > 0.1
    assert not torch.allclose(out, roundtrip, atol=1e-3)


def test_repaint_keeps_the_kept_region_and_resamples_the_masked_one(corrector):
    x = frames(2)
    masks = torch.zeros(2, 1, 16, 16)
    masks[0, :, 4:8, 4:12] = 1
    masks[1, :, 10:16, 0:6] = 1
    inp = RePaintInpainter(corrector, jump_length=2, jump_n_sample=2)
    out = inp.inpaint(x, masks, PROMPTS[:2], strength=1.0, guidance_scale=7.5, num_inference_steps=10,
                      generators=gens(1, 2))
    keep = (masks == 0).expand_as(out)
    torch.testing.assert_close(out[keep], x[keep], atol=1e-5, rtol=0)  # pixel space: the original at t = 0
    assert (out - x)[~keep].abs().mean() > 0.05
    assert corrector.last_steps_run > 10  # the jumps back add denoising steps
    again = inp.inpaint(x, masks, PROMPTS[:2], strength=1.0, guidance_scale=7.5, num_inference_steps=10,
                        generators=gens(1, 2))
    assert torch.equal(out, again)
    with pytest.raises(ValueError, match="strength must be 1.0"):
        inp.inpaint(x, masks, PROMPTS[:2], strength=0.5, generators=gens(1, 2))
    with pytest.raises(ValueError, match="jump_length must be a positive int"):
        corrector.repaint(x, masks, PROMPTS[:2], jump_length=0, generators=gens(1, 2))


@pytest.mark.parametrize("masks, match", [(torch.zeros(1, 1, 8, 8), "shape"), (torch.full((1, 1, 16, 16), 0.5), "only 0")])
def test_unet_inpaint_refuses_bad_masks(corrector, masks, match):
    with pytest.raises(ValueError, match=match):
        corrector.inpaint(frames(1), masks, PROMPTS[:1], generators=gens(1))


def test_variants_at_a_known_folders_settings_read_it(tmp_path):
    sts = stories(3)
    sweep = E.strength_sweep(sts, tmp_path / "sweep", [0.3, 0.5], arm=VisibleARM(), corrector=MarkingCorrector(),
                             memory=DummyMemory(), config=config(), progress=False)
    known = {d: dataclasses.replace(config(), rows=("acdc_rules",), strength=t) for t, d in sweep.items()}
    variants = {"same": A.Variant("acdc_rules", "at t'=0.5 itself", {"strength": 0.5}),
                "other_cfg": A.Variant("acdc_rules", "CFG 3", {"strength": 0.5, "guidance_scale": 3.0}),
                "own_memory": A.Variant("acdc_rules", "its own memory", {"strength": 0.5}, memory=DummyMemory()),
                "other_row": A.Variant("acdc2_rules", "ACDC #2", {"strength": 0.5})}
    dirs = A.run_variants(sts, tmp_path / "variants", variants, arm=VisibleARM(), corrector=MarkingCorrector(),
                          memory=DummyMemory(), config=config(), progress=False, known=known)
    assert dirs["same"] == sweep[0.5]
    assert not (tmp_path / "variants" / "same").exists()
    # other settings, a memory of its own, or a row the folder does not hold: run in their own folders
    assert [dirs[n] for n in ("other_cfg", "own_memory", "other_row")] == \
        [tmp_path / "variants" / n for n in ("other_cfg", "own_memory", "other_row")]
    # another batch size may round differently, so it is run too
    other = A.run_variants(sts, tmp_path / "b1", {"same": variants["same"]}, arm=VisibleARM(), corrector=MarkingCorrector(),
                           memory=DummyMemory(), config=dataclasses.replace(config(), batch_size=1), progress=False,
                           known=known)
    assert other["same"] == tmp_path / "b1" / "same"
    t = A.summarise_variants(dirs, variants, sts, FakeEvaluator(), config(), ground_truth=FakeTruth())
    assert t.per_story["same"]["char_acc"] == t.per_story["own_memory"]["char_acc"]
