"""Stable Diffusion's safety checker never touches a corrected frame.

diffusers' SD pipelines replace every frame their safety checker flags with a black one; in ACDC that
frame would be re-encoded into the ARM's context and scored. A checkpoint that ships a checker (SD v1.5
does) is here saved with a tiny checker that flags every image: through our loaders no frame comes out
black, and no pipeline we build holds the checker.
"""
from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from transformers import CLIPConfig, CLIPImageProcessor

from acdc_lib.backends.components import sd_corrector, sd_inpainter
from acdc_lib.correctors import InpaintCorrector, PipelineCorrector

import tiny_diffusers as td

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = ["a red fox in a meadow", "an owl at night"]


def flag_everything_checker() -> tuple[StableDiffusionSafetyChecker, CLIPImageProcessor]:
    """A tiny safety checker whose concept thresholds (-1, below any cosine) flag every image."""
    layer = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=1)
    torch.manual_seed(0)
    checker = StableDiffusionSafetyChecker(CLIPConfig(text_config=layer, projection_dim=32,
                                                      vision_config=dict(layer, image_size=32, patch_size=8)))
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(-1.0)
        checker.special_care_embeds_weights.fill_(-1.0)
    return checker.eval(), CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def _with_checker(pipe_cls, unet_in: int):
    checker, features = flag_everything_checker()
    parts = td._sd_parts(unet_in, 0)
    parts.update(safety_checker=checker, feature_extractor=features, requires_safety_checker=True)
    pipe = pipe_cls(**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def saved_with_checker(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd_with_checker")
    _with_checker(StableDiffusionImg2ImgPipeline, 4).save_pretrained(root / "img2img")
    _with_checker(StableDiffusionInpaintPipeline, 9).save_pretrained(root / "inpaint")
    return root


def _frames(b: int = 2) -> torch.Tensor:
    return torch.rand(b, 3, 16, 16, generator=torch.Generator().manual_seed(3))


def _gens(b: int = 2) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in range(b)]


def test_the_checker_here_blackens_every_frame_of_a_pipeline_that_keeps_it():
    pipe = _with_checker(StableDiffusionImg2ImgPipeline, 4)  # what diffusers does with it left on
    out = pipe(prompt=PROMPTS, image=_frames(), strength=0.5, num_inference_steps=4, guidance_scale=1.0,
               generator=_gens(), output_type="pt").images
    assert out.abs().amax().item() == 0.0


def test_img2img_and_text_to_image_load_without_the_safety_checker(saved_with_checker):
    for corrector in (PipelineCorrector.from_pretrained(saved_with_checker / "img2img"),
                      sd_corrector(str(saved_with_checker / "img2img"))):
        assert corrector.pipe.safety_checker is None
        assert corrector.pipe.config.requires_safety_checker is False
        assert corrector.text2image_pipe.safety_checker is None  # built by from_pipe from the img2img pipeline
        out = corrector.correct(_frames(), PROMPTS, strength=0.5, num_inference_steps=4, guidance_scale=1.0,
                                generators=_gens())
        assert out.std(dim=(1, 2, 3)).amin().item() > 0.01  # a frame, not the checker's black
        drawn = corrector.generate(PROMPTS, 16, 16, num_inference_steps=2, guidance_scale=1.0, generators=_gens())
        assert drawn.std(dim=(1, 2, 3)).amin().item() > 0.01


def test_inpainting_loads_without_the_safety_checker(saved_with_checker):
    masks = torch.zeros(2, 1, 16, 16)
    masks[:, :, 4:12, 4:12] = 1.0
    for inpainter in (InpaintCorrector.from_pretrained(saved_with_checker / "inpaint"),
                      sd_inpainter(str(saved_with_checker / "inpaint"))):
        assert inpainter.pipe.safety_checker is None
        out = inpainter.inpaint(_frames(), masks, PROMPTS, num_inference_steps=2, guidance_scale=1.0,
                                generators=_gens())
        assert out.std(dim=(1, 2, 3)).amin().item() > 0.01


def test_a_pipeline_built_with_the_checker_is_wrapped_without_it():
    corrector = PipelineCorrector.from_pipeline(_with_checker(StableDiffusionImg2ImgPipeline, 4))
    assert corrector.pipe.safety_checker is None
    out = corrector.correct(_frames(), PROMPTS, strength=0.5, num_inference_steps=4, guidance_scale=1.0,
                            generators=_gens())
    assert out.std(dim=(1, 2, 3)).amin().item() > 0.01
