"""PipelineCorrector.generate: text-to-image for the Stable Diffusion (DM-only) row, on tiny random parts.

What a user relies on: it is a `TextToImage`, all N DDIM steps run (counted on the real UNet), CFG is
one doubled-batch call per step, a row depends only on its prompt and its generator (not on its
batch neighbours), outputs are [0, 1] images of the requested size, the img2img weights are shared
(no second copy), and bad input fails loudly.
"""
from __future__ import annotations

import pytest
import torch

from acdc_lib.sdedit import PipelineCorrector, count_unet_calls
from acdc_lib.types import Corrector, TextToImage

import tiny_diffusers as td  # tests/unit is on sys.path under pytest's default import mode
from test_sdedit import BATCH_ATOL, PROMPTS, gens  # the img2img tests' prompts, tolerance and generators

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corrector():
    return PipelineCorrector(td.tiny_sd_img2img_pipeline())


def test_is_a_text_to_image_and_still_a_corrector(corrector):
    assert isinstance(corrector, TextToImage) and isinstance(corrector, Corrector)


def test_runs_all_n_steps_with_cfg_and_shares_the_weights(corrector):
    shapes, handle = count_unet_calls(corrector.pipe.unet)
    try:
        out = corrector.generate(PROMPTS[:2], 16, 16, num_inference_steps=4, generators=gens(0, 1))
    finally:
        handle.remove()
    assert len(shapes) == 4 and corrector.last_steps_run == 4
    assert all(s == (4, 4, 8, 8) for s in shapes)  # CFG: 2B rows in one call, 16x16 pixels = 8x8 latents
    assert out.shape == (2, 3, 16, 16) and out.dtype == torch.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert (out[0] - out[1]).abs().max() > 1e-3
    t2i = corrector.text2image_pipe
    assert t2i is corrector.text2image_pipe  # built once
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert getattr(t2i, part) is getattr(corrector.pipe, part)  # the same objects: no second copy
    assert type(t2i.scheduler).__name__ == "DDIMScheduler"


def test_no_guidance_runs_one_row_per_prompt(corrector):
    shapes, handle = count_unet_calls(corrector.pipe.unet)
    try:
        corrector.generate(PROMPTS[:2], guidance_scale=1.0, num_inference_steps=3, generators=gens(0, 1))
    finally:
        handle.remove()
    assert [s[0] for s in shapes] == [2, 2, 2]


def test_same_generators_same_images_and_rows_do_not_depend_on_the_batch(corrector):
    batch = corrector.generate(PROMPTS, num_inference_steps=3, generators=gens(5, 6, 7))
    again = corrector.generate(PROMPTS, num_inference_steps=3, generators=gens(5, 6, 7))
    alone = corrector.generate(PROMPTS[1:2], num_inference_steps=3, generators=gens(6))
    assert torch.equal(batch, again)
    torch.testing.assert_close(alone[0], batch[1], atol=BATCH_ATOL, rtol=0)
    other_seed = corrector.generate(PROMPTS[1:2], num_inference_steps=3, generators=gens(99))
    assert (other_seed[0] - batch[1]).abs().max() > 1e-3


def test_default_size_and_resizing(corrector):
    default = corrector.generate(PROMPTS[:1], num_inference_steps=2, generators=gens(0))
    assert default.shape == (1, 3, 16, 16)  # the UNet's sample_size 8 x the VAE's factor 2
    shapes, handle = count_unet_calls(corrector.pipe.unet)
    try:
        odd = corrector.generate(PROMPTS[:1], 14, 10, num_inference_steps=2, generators=gens(0))
        corrector.resolution = (24, 24)
        fixed = corrector.generate(PROMPTS[:1], 16, 16, num_inference_steps=2, generators=gens(0))
        at_resolution = corrector.generate(PROMPTS[:1], num_inference_steps=2, generators=gens(0))
    finally:
        corrector.resolution = None
        handle.remove()
    assert odd.shape == (1, 3, 14, 10) and fixed.shape == (1, 3, 16, 16) and at_resolution.shape == (1, 3, 24, 24)
    assert shapes[0] == (2, 4, 8, 8)  # 14x10 rounded up to multiples of 8 (diffusers' text-to-image rule)
    assert shapes[2] == (2, 4, 12, 12) and shapes[-1] == (2, 4, 12, 12)  # resolution 24 -> 12x12 latents
    for x in (odd, fixed, at_resolution):
        assert 0.0 <= x.min() and x.max() <= 1.0


@pytest.mark.parametrize("kwargs, match", [
    (dict(prompts="a fox"), "non-empty list of strings"),
    (dict(prompts=[]), "non-empty list of strings"),
    (dict(prompts=["a fox", 3]), r"prompts must be strings; rows \[1\]"),
    (dict(generators=gens(0)), "got 1 generators for batch size 2"),
    (dict(generators=torch.Generator()), "single torch.Generator"),
    (dict(num_inference_steps=0), "num_inference_steps must be a positive int, got 0"),
    (dict(guidance_scale=0.5), "guidance_scale == 1 .* or > 1, got 0.5"),
    (dict(guidance_scale=float("nan")), "finite number"),
    (dict(height=0), "height must be a positive int"),
    (dict(width=12.0), "width must be a positive int"),
])
def test_bad_input_raises(corrector, kwargs, match):
    call = dict(prompts=PROMPTS[:2], num_inference_steps=2, generators=gens(0, 1))
    call.update(kwargs)
    with pytest.raises(ValueError, match=match):
        corrector.generate(call.pop("prompts"), **call)


def test_resolution_must_suit_text_to_image(corrector):
    with pytest.raises(ValueError, match=r"multiples of 8 for text-to-image .* got \(12, 12\)"):
        PipelineCorrector(corrector.pipe, resolution=12).generate(PROMPTS[:1], num_inference_steps=2,
                                                                 generators=gens(0))
