"""SDEdit correctors (Eq. 2 / Eq. 5) on tiny random diffusers models, offline on CPU.

What a user relies on: int(N * t') denoiser calls run (counted on the real UNet), CFG is one
doubled-batch call per step, the same generators give the same frames, a row does not depend on
its batch neighbours, outputs are [0, 1] images of the input's size, and bad input fails loudly.
"""
from __future__ import annotations

import pytest
import torch

from acdc_lib import sdedit
from acdc_lib.sdedit import (
    InpaintCorrector,
    ModelNotAvailableError,
    PipelineCorrector,
    UNetCorrector,
    VideoPipelineCorrector,
    count_unet_calls,
)
from acdc_lib.types import Corrector, VideoCorrector

import tiny_diffusers as td  # tests/unit is on sys.path under pytest's default import mode

# (N, t') -> int(N * t') denoising steps, as diffusers' img2img strength defines them.
STEP_CASES = [(10, 0.5, 5), (10, 0.3, 3), (10, 0.55, 5), (4, 1.0, 4), (20, 0.45, 9)]
PROMPTS = ["a red fox in a meadow", "a beagle on the beach", "an owl at night"]
# A row computed alone vs inside a batch of 3: CPU BLAS may pick different kernels for different
# batch sizes and differ in the last float32 bits, so rows are compared with this tolerance.
BATCH_ATOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")


def gens(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def frames(b: int = 3, c: int = 3, h: int = 16, w: int = 16, seed: int = 7) -> torch.Tensor:
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Tiny pipelines and UNet parts written with save_pretrained, as a user would have them."""
    root = tmp_path_factory.mktemp("tiny_models")
    td.tiny_sd_img2img_pipeline().save_pretrained(root / "sd_img2img")
    td.tiny_sd_inpaint_pipeline().save_pretrained(root / "sd_inpaint")
    td.tiny_animatediff_v2v_pipeline().motion_adapter.save_pretrained(root / "motion_adapter")
    for name, latent in (("unet_pixel", None), ("unet_kl", "kl"), ("unet_vq", "vq")):
        td.save_unet_corrector_parts(td.tiny_unet_corrector_parts(latent), root / name)
    return root


@pytest.fixture(scope="module")
def img2img(saved):
    return PipelineCorrector.from_pretrained(saved / "sd_img2img")


@pytest.fixture(scope="module")
def inpainter(saved):
    return InpaintCorrector.from_pretrained(saved / "sd_inpaint")


@pytest.fixture(scope="module")
def video(saved):
    """AnimateDiff as on a GPU node: a Stable Diffusion checkpoint plus a separate motion adapter."""
    return VideoPipelineCorrector.from_pretrained(saved / "sd_img2img", motion_adapter=saved / "motion_adapter")


@pytest.fixture(scope="module")
def unet_correctors(saved):
    return {name: UNetCorrector.from_pretrained(saved / f"unet_{name}") for name in ("pixel", "kl", "vq")}


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
def test_reloaded_pipeline_uses_ddim_with_steps_offset(img2img, inpainter):
    from diffusers import DDIMScheduler

    for corrector in (img2img, inpainter):
        assert isinstance(corrector.pipe.scheduler, DDIMScheduler)
        assert corrector.pipe.scheduler.config.steps_offset == 1
    assert isinstance(img2img, Corrector)


def test_missing_model_gives_one_clear_error(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="no such folder; pass `model_id_or_path`"):
        PipelineCorrector.from_pretrained(tmp_path / "missing")
    with pytest.raises(ModelNotAvailableError, match="MotionAdapter .*no such folder; pass `motion_adapter`"):
        VideoPipelineCorrector.from_pretrained(tmp_path, motion_adapter=tmp_path / "no_adapter")
    (tmp_path / "half" / "unet").mkdir(parents=True)
    with pytest.raises(ModelNotAvailableError, match=r"missing subfolder\(s\) \['text_encoder', 'tokenizer'"):
        UNetCorrector.from_pretrained(tmp_path / "half")


def test_unet_corrector_from_pretrained_matches_parts(saved, unet_correctors):
    """Reloaded parts give exactly the frames the in-memory parts give."""
    fresh = UNetCorrector(**td.tiny_unet_corrector_parts("kl"))
    x = frames(2)
    a = fresh.correct(x, PROMPTS[:2], num_inference_steps=10, generators=gens(0, 1))
    b = unet_correctors["kl"].correct(x, PROMPTS[:2], num_inference_steps=10, generators=gens(0, 1))
    assert torch.equal(a, b)


# --------------------------------------------------------------------------------------------
# int(N * t') denoiser calls, CFG as one doubled batch
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, t_prime, expected", STEP_CASES)
def test_img2img_runs_int_n_t_unet_calls(img2img, n, t_prime, expected):
    shapes, handle = count_unet_calls(img2img.pipe.unet)
    try:
        out = img2img.correct(frames(2), PROMPTS[:2], strength=t_prime, num_inference_steps=n, generators=gens(0, 1))
    finally:
        handle.remove()
    assert len(shapes) == expected and img2img.last_steps_run == expected
    assert all(s[0] == 4 for s in shapes)  # CFG: 2B rows in each single call
    assert out.shape == (2, 3, 16, 16) and 0.0 <= out.min() and out.max() <= 1.0


@pytest.mark.parametrize("n, t_prime, expected", [(10, 0.5, 5), (10, 0.3, 3), (4, 1.0, 4)])
def test_inpaint_runs_int_n_t_unet_calls(inpainter, n, t_prime, expected):
    masks = torch.zeros(2, 1, 16, 16)
    masks[:, :, 4:12, 4:12] = 1.0
    shapes, handle = count_unet_calls(inpainter.pipe.unet)
    try:
        out = inpainter.inpaint(frames(2), masks, PROMPTS[:2], strength=t_prime, num_inference_steps=n,
                                generators=gens(0, 1))
    finally:
        handle.remove()
    assert len(shapes) == expected and inpainter.last_steps_run == expected
    assert all(s[:2] == (4, 9) for s in shapes)  # CFG doubled batch; latents + mask + masked image
    assert out.shape == (2, 3, 16, 16) and 0.0 <= out.min() and out.max() <= 1.0


@pytest.mark.parametrize("space", ["pixel", "kl"])
@pytest.mark.parametrize("n, t_prime, expected", STEP_CASES)
def test_unet_corrector_runs_int_n_t_unet_calls(unet_correctors, space, n, t_prime, expected):
    corrector = unet_correctors[space]
    shapes, handle = count_unet_calls(corrector.unet)
    try:
        out = corrector.correct(frames(2), PROMPTS[:2], strength=t_prime, num_inference_steps=n,
                                generators=gens(0, 1))
    finally:
        handle.remove()
    assert len(shapes) == expected and corrector.last_steps_run == expected
    model_shape = (4, 3, 16, 16) if space == "pixel" else (4, 4, 8, 8)  # pixels or 8x8x4 latents
    assert all(s == model_shape for s in shapes)
    assert out.shape == (2, 3, 16, 16) and 0.0 <= out.min() and out.max() <= 1.0


def test_cfg_changes_output_and_w1_skips_the_unconditional_half(unet_correctors, img2img):
    corrector, x = unet_correctors["pixel"], frames(2)
    shapes, handle = count_unet_calls(corrector.unet)
    try:
        guided = corrector.correct(x, PROMPTS[:2], guidance_scale=7.5, num_inference_steps=4, generators=gens(0, 1))
        plain = corrector.correct(x, PROMPTS[:2], guidance_scale=1.0, num_inference_steps=4, generators=gens(0, 1))
        weak = corrector.correct(x, PROMPTS[:2], guidance_scale=3.0, num_inference_steps=4, generators=gens(0, 1))
    finally:
        handle.remove()
    assert [s[0] for s in shapes] == [4, 4] + [2, 2] + [4, 4]
    assert (guided - plain).abs().max() > 1e-2 and (guided - weak).abs().max() > 1e-2
    a = img2img.correct(x, PROMPTS[:2], guidance_scale=7.5, num_inference_steps=4, generators=gens(0, 1))
    b = img2img.correct(x, PROMPTS[:2], guidance_scale=2.0, num_inference_steps=4, generators=gens(0, 1))
    assert (a - b).abs().max() > 1e-3


def test_guidance_zero_is_the_unconditional_model(unet_correctors):
    """w = 0 leaves eps_u alone: the same as conditioning every row on the empty prompt."""
    corrector, x = unet_correctors["pixel"], frames(2)
    w0 = corrector.correct(x, PROMPTS[:2], guidance_scale=0.0, num_inference_steps=4, generators=gens(0, 1))
    empty = corrector.correct(x, ["", ""], guidance_scale=1.0, num_inference_steps=4, generators=gens(0, 1))
    conditional = corrector.correct(x, PROMPTS[:2], guidance_scale=1.0, num_inference_steps=4, generators=gens(0, 1))
    torch.testing.assert_close(w0, empty, atol=BATCH_ATOL, rtol=0)
    assert (w0 - conditional).abs().max() > 1e-2


def test_larger_t_prime_moves_further_from_the_frame(unet_correctors):
    """SDEdit's trade-off (Theorem 2): the deviation from the input grows with t'."""
    corrector, x = unet_correctors["pixel"], frames(2)
    dev = [(corrector.correct(x, PROMPTS[:2], strength=t, num_inference_steps=10, generators=gens(0, 1)) - x)
           .abs().mean().item() for t in (0.1, 0.3, 0.6, 1.0)]
    assert dev == sorted(dev) and dev[0] < 0.05 < dev[-1]


def test_overlong_prompt_warns_and_is_cut(unet_correctors):
    corrector = unet_correctors["pixel"]
    long = "a fox " * 20  # 120 characters: far over the tiny tokenizer's 32 tokens
    with pytest.warns(UserWarning, match="exceed the text encoder's 32 tokens"):
        emb = corrector.encode_prompts([long, "a fox"])
    assert emb.shape == (2, td.MAX_TOKENS, td.TEXT_DIM)


def test_prompt_conditions_the_output(unet_correctors):
    corrector, x = unet_correctors["pixel"], frames(1)
    a = corrector.correct(x, ["a fox"], num_inference_steps=4, generators=gens(0))
    b = corrector.correct(x, ["a whale at sea"], num_inference_steps=4, generators=gens(0))
    assert (a - b).abs().max() > 1e-2


# --------------------------------------------------------------------------------------------
# Eq. 2 itself: x_t' = sqrt(abar) x_0 + sqrt(1 - abar) eps, then DDIM (eta = 0) with CFG
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_unet_corrector_matches_hand_written_ddim(prediction_type):
    parts = td.tiny_unet_corrector_parts(None, prediction_type=prediction_type)
    corrector = UNetCorrector(**parts)
    x, n, t_prime, w = frames(2), 10, 0.2, 7.5
    out = corrector.correct(x, PROMPTS[:2], strength=t_prime, guidance_scale=w, num_inference_steps=n,
                            generators=gens(3, 4))

    abar = parts["scheduler"].alphas_cumprod.double()
    timesteps = [101, 1]  # N = 10, steps_offset = 1: schedule 901, 801, ..., 1; t' = 0.2 keeps the last 2
    eps = torch.cat([torch.randn(1, 3, 16, 16, generator=g) for g in gens(3, 4)]).double()
    xt = abar[101].sqrt() * (2 * x.double() - 1) + (1 - abar[101]).sqrt() * eps
    cond = corrector.encode_prompts(PROMPTS[:2])
    uncond = corrector.encode_prompts([""]).expand(2, -1, -1)
    with torch.no_grad():
        for t in timesteps:
            model = lambda emb: corrector.unet(xt.float(), t, encoder_hidden_states=emb).sample.double()
            o_u, o_c = model(uncond), model(cond)
            o = o_u + w * (o_c - o_u)
            a_t = abar[t]
            a_prev = abar[t - 100] if t - 100 >= 0 else abar[0]  # set_alpha_to_one=False
            if prediction_type == "epsilon":
                x0_hat, eps_hat = (xt - (1 - a_t).sqrt() * o) / a_t.sqrt(), o
            else:
                x0_hat = a_t.sqrt() * xt - (1 - a_t).sqrt() * o
                eps_hat = a_t.sqrt() * o + (1 - a_t).sqrt() * xt
            xt = a_prev.sqrt() * x0_hat + (1 - a_prev).sqrt() * eps_hat
    expected = (xt / 2 + 0.5).clamp(0, 1).float()
    assert 0.05 < ((expected > 0) & (expected < 1)).float().mean()  # not all saturated: a real check
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)


# --------------------------------------------------------------------------------------------
# Randomness: per-row generators, batch independence
# --------------------------------------------------------------------------------------------
def _row_checks(correct):
    x = frames(3)
    first = correct(x, PROMPTS, gens(10, 11, 12))
    again = correct(x, PROMPTS, gens(10, 11, 12))
    assert torch.equal(first, again)  # same generators -> identical frames
    other = correct(x, PROMPTS, gens(20, 11, 12))
    assert (other[0] - first[0]).abs().max() > 1e-3  # row 0's seed drives row 0 ...
    torch.testing.assert_close(other[1:], first[1:], atol=BATCH_ATOL, rtol=0)  # ... and nothing else
    alone = correct(x[:1], PROMPTS[:1], gens(10))
    torch.testing.assert_close(alone, first[:1], atol=BATCH_ATOL, rtol=0)
    swapped = correct(x[[2, 0, 1]], [PROMPTS[2], PROMPTS[0], PROMPTS[1]], gens(12, 10, 11))
    torch.testing.assert_close(swapped[1:2], first[:1], atol=BATCH_ATOL, rtol=0)


def test_img2img_rows_are_reproducible_and_batch_independent(img2img):
    _row_checks(lambda x, p, g: img2img.correct(x, p, num_inference_steps=4, generators=g))


@pytest.mark.parametrize("space", ["pixel", "kl", "vq"])
def test_unet_corrector_rows_are_reproducible_and_batch_independent(unet_correctors, space):
    corrector = unet_correctors[space]
    _row_checks(lambda x, p, g: corrector.correct(x, p, num_inference_steps=4, generators=g))


def test_inpaint_rows_are_batch_independent_and_the_mask_matters(inpainter):
    masks = torch.zeros(3, 1, 16, 16)
    masks[:, :, :8] = 1.0
    _row_checks(lambda x, p, g: inpainter.inpaint(x, masks[: len(x)], p, num_inference_steps=4, generators=g))
    x = frames(1)
    top = inpainter.inpaint(x, masks[:1], PROMPTS[:1], num_inference_steps=4, generators=gens(0))
    left = inpainter.inpaint(x, masks[:1].transpose(-1, -2), PROMPTS[:1], num_inference_steps=4, generators=gens(0))
    assert (top - left).abs().max() > 1e-3


def test_the_sd_inpainter_component_runs_the_inpainting_pipeline_the_physical_experiment_calls(saved):
    from acdc_lib import components
    from acdc_lib.experiment import physical as PH

    inp = components.build("inpainter", "sd", model_id=str(saved / "sd_inpaint"))
    assert isinstance(inp, InpaintCorrector)
    masks = torch.zeros(2, 1, 16, 16)
    masks[0, :, :4, :4] = 1
    got = PH.compare_inpainters({"sd": inp}, frames(2), masks, PROMPTS[:2], lambda y: torch.zeros(len(y), dtype=torch.bool),
                                lambda y: torch.ones(len(y)), guidance_scale=7.5, num_inference_steps=4)
    assert set(got["sd"]) == {"wrong_after", "attributes", "change_outside", "change_outside_empty_mask", "seconds"}
    with pytest.raises(ValueError, match="needs model_id"):
        components.build("inpainter", "sd")


# --------------------------------------------------------------------------------------------
# Sizes
# --------------------------------------------------------------------------------------------
def test_pipeline_resizes_to_the_model_and_back(img2img):
    shapes, handle = count_unet_calls(img2img.pipe.unet)
    try:
        odd = img2img.correct(frames(1, h=14, w=10), PROMPTS[:1], num_inference_steps=2, generators=gens(0))
        img2img.resolution = (24, 24)
        fixed = img2img.correct(frames(1, h=16, w=16), PROMPTS[:1], num_inference_steps=2, generators=gens(0))
    finally:
        img2img.resolution = None
        handle.remove()
    assert odd.shape == (1, 3, 14, 10) and fixed.shape == (1, 3, 16, 16)
    assert shapes[0] == (2, 4, 8, 6)  # 14x10 rounded up to multiples of 4 = 16x12 pixels = 8x6 latents
    assert shapes[-1] == (2, 4, 12, 12)  # resolution 24 -> 12x12 latents
    assert 0.0 <= odd.min() and odd.max() <= 1.0 and 0.0 <= fixed.min() and fixed.max() <= 1.0
    with pytest.raises(ValueError, match=r"multiples of 4 for this pipeline, got \(18, 18\)"):
        PipelineCorrector(img2img.pipe, resolution=18).correct(frames(1), PROMPTS[:1], generators=gens(0))


def test_unet_corrector_generate_runs_all_steps(unet_correctors):
    corrector = unet_correctors["kl"]
    shapes, handle = count_unet_calls(corrector.unet)
    try:
        a = corrector.generate(PROMPTS[:2], 16, 16, num_inference_steps=6, generators=gens(0, 1))
        b = corrector.generate(PROMPTS[:2], 16, 16, num_inference_steps=6, generators=gens(0, 1))
    finally:
        handle.remove()
    assert len(shapes) == 12 and corrector.last_steps_run == 6
    assert a.shape == (2, 3, 16, 16) and torch.equal(a, b)
    assert 0.0 <= a.min() and a.max() <= 1.0
    assert (a[0] - a[1]).abs().max() > 1e-3


# diffusers' Euler scheduler calls np.array on a torch tensor in a way numpy 2 flags; not ours.
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
@pytest.mark.parametrize("scheduler", ["EulerDiscreteScheduler", "DPMSolverMultistepScheduler", "DDPMScheduler"])
def test_unet_corrector_takes_other_diffusers_schedulers(scheduler):
    import diffusers

    parts = td.tiny_unet_corrector_parts("kl")
    parts["scheduler"] = getattr(diffusers, scheduler).from_config(parts["scheduler"].config)
    corrector = UNetCorrector(**parts)
    shapes, handle = count_unet_calls(corrector.unet)
    try:
        _row_checks(lambda x, p, g: corrector.correct(x, p, num_inference_steps=10, strength=0.3, generators=g))
    finally:
        handle.remove()
    assert corrector.last_steps_run == 3 and len(shapes) == 5 * 3  # 5 corrections of int(10 * 0.3) calls


def test_grayscale_pixel_model():
    corrector = UNetCorrector(**td.tiny_unet_corrector_parts(None, channels=1))
    out = corrector.correct(frames(2, c=1), PROMPTS[:2], num_inference_steps=4, generators=gens(0, 1))
    assert out.shape == (2, 1, 16, 16) and 0.0 <= out.min() and out.max() <= 1.0


# --------------------------------------------------------------------------------------------
# Video (Eq. 5)
# --------------------------------------------------------------------------------------------
def test_video_corrector_counts_steps_and_keeps_shape(video):
    corrector = video
    assert isinstance(corrector, VideoCorrector)
    videos = torch.rand(2, 3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    shapes, handle = count_unet_calls(corrector.pipe.unet)
    try:
        a = corrector.correct_video(videos, PROMPTS[:2], strength=0.5, num_inference_steps=6, generators=gens(0, 1))
        alone = corrector.correct_video(videos[1:], PROMPTS[1:2], strength=0.5, num_inference_steps=6,
                                        generators=gens(1))
    finally:
        handle.remove()
    assert len(shapes) == 3 + 3 and corrector.last_steps_run == 3
    assert shapes[0] == (4, 4, 3, 8, 8)  # (2B, C, L, h, w): CFG doubles the batch of chunks
    assert a.shape == videos.shape and 0.0 <= a.min() and a.max() <= 1.0
    torch.testing.assert_close(alone, a[1:], atol=BATCH_ATOL, rtol=0)


# --------------------------------------------------------------------------------------------
# Validation: every bad input fails with a message naming the bad value
# --------------------------------------------------------------------------------------------
BAD_CALLS = [
    (dict(strength=0.0), r"strength t' must be in \(0, 1\], got 0.0"),
    (dict(strength=1.2), r"strength t' must be in \(0, 1\], got 1.2"),
    (dict(strength=0.05, num_inference_steps=10), r"int\(N\*t'\)=0"),
    (dict(images=frames(3) + 0.5), r"values must lie in \[0, 1\].*max=1\.\d+"),
    (dict(images=frames(3) - 0.5), r"values must lie in \[0, 1\].*min=-0\.\d+"),
    (dict(images=frames(3)[0]), r"must be 4-D \(B, C, H, W\), got 3-D shape \(3, 16, 16\)"),
    (dict(images=frames(3, c=2)), r"C in \{1, 3\}.*got C=2"),
    (dict(images=frames(3, c=1)), r"takes 3-channel images, got C=1"),
    (dict(images=(frames(3) * 255).to(torch.uint8)), r"float tensor.*torch.uint8"),
    (dict(prompts=PROMPTS[:2]), r"got 2 prompts for 3 images"),
    (dict(prompts="a fox"), r"list of 3 strings"),
    (dict(generators=gens(0, 1)), r"got 2 generators for batch size 3"),
    (dict(guidance_scale=-1.0), r"guidance_scale must be a finite number >= 0, got -1.0"),
]


def _call(corrector, images=None, prompts=None, **kwargs):
    images = frames(3) if images is None else images
    prompts = PROMPTS if prompts is None else prompts
    kwargs = {"num_inference_steps": 10, "generators": gens(0, 1, 2), **kwargs}
    return corrector.correct(images, prompts, **kwargs)


@pytest.mark.parametrize("bad, match", BAD_CALLS, ids=[m[:24] for _, m in BAD_CALLS])
@pytest.mark.parametrize("kind", ["unet", "pipeline"])
def test_bad_input_is_refused(unet_correctors, img2img, kind, bad, match):
    corrector = unet_correctors["kl"] if kind == "unet" else img2img
    shapes, handle = count_unet_calls(corrector.unet if kind == "unet" else corrector.pipe.unet)
    try:
        with pytest.raises(ValueError, match=match):
            _call(corrector, **bad)
    finally:
        handle.remove()
    assert shapes == []  # refused before any denoising


def test_pipeline_refuses_guidance_it_would_ignore(img2img):
    with pytest.raises(ValueError, match=r"guidance_scale == 1 \(no guidance\) or > 1, got 0.5"):
        _call(img2img, guidance_scale=0.5)


@pytest.mark.parametrize("masks, match", [
    (torch.ones(3, 1, 16, 16) * 0.5, r"only 0 \(keep\) and 1 \(repaint\), found values \[0.5\]"),
    (torch.ones(3, 3, 16, 16), r"\(3, 1, 16, 16\).*got \(3, 3, 16, 16\)"),
    (torch.ones(2, 1, 16, 16), r"got \(2, 1, 16, 16\)"),
])
def test_bad_masks_are_refused(inpainter, masks, match):
    with pytest.raises(ValueError, match=match):
        inpainter.inpaint(frames(3), masks, PROMPTS, num_inference_steps=10, generators=gens(0, 1, 2))


def test_bad_videos_are_refused(video):
    corrector = video
    with pytest.raises(ValueError, match=r"5-D \(B, L, C, H, W\), got 4-D"):
        corrector.correct_video(frames(2), PROMPTS[:2])
    with pytest.raises(ValueError, match=r"values must lie in \[0, 1\].*max=2"):
        corrector.correct_video(torch.full((1, 2, 3, 16, 16), 2.0), PROMPTS[:1])


def test_unet_corrector_refuses_sizes_the_unet_cannot_take(unet_correctors):
    with pytest.raises(ValueError, match="multiples of 4 for this UNet/VAE, got 14x16"):
        unet_correctors["kl"].correct(frames(1, h=14), PROMPTS[:1], generators=gens(0))


def test_steps_for_strength_values():
    assert [sdedit.steps_for_strength(n, t) for n, t, _ in STEP_CASES] == [e for _, _, e in STEP_CASES]
