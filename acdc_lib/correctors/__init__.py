"""SDEdit correction (Eq. 2) over diffusers, one module per kind of corrector.

t' follows diffusers' img2img `strength`: with N scheduler steps, the noise is added at the
timestep where int(N * t') steps remain, and exactly that many denoising steps run.

Correctors (all take images as float (B, C, H, W) tensors in [0, 1], one prompt and one
`torch.Generator` per row; defaults are the paper's: DDIM with eta = 0, CFG 7.5, t' = 0.5):

    pipeline.PipelineCorrector       any diffusers image-to-image pipeline (Stable Diffusion v1.5 img2img);
                                     also text-to-image through the same weights
    unet.UNetCorrector               any UNet2DConditionModel + text encoder + scheduler, pixel or latent space
                                     (also inpaints, by diffusers' method for UNets without mask channels)
    inpaint.InpaintCorrector         StableDiffusionInpaintPipeline (user masks, the paper's physical constraints)
    inpaint.RePaintInpainter         RePaint over a UNetCorrector, behind the same `inpaint` call
    video.VideoPipelineCorrector     AnimateDiffVideoToVideoPipeline on (B, L, C, H, W) chunks (Eq. 5)
    video.UNetVideoCorrector         any UNetMotionModel (a UNet inflated with a MotionAdapter) on such chunks

Shared by all: `schedule` (t' -> steps, the paper's defaults, counting UNet calls), `inputs` (checks of
images, prompts, generators, masks) and `loading` (one clear error when a model is not on this machine).
Each corrector records `last_steps_run`, the number of denoising steps (UNet calls) its last call ran.
Diffusers pipelines are loaded without Stable Diffusion's safety checker (see `pipeline`).
"""
from acdc_lib.correctors.inpaint import InpaintCorrector, RePaintInpainter
from acdc_lib.correctors.inputs import (grow_masks, validate_generators, validate_guidance_scale, validate_images,
                                        validate_masks, validate_prompts, validate_videos)
from acdc_lib.correctors.loading import ModelNotAvailableError
from acdc_lib.correctors.pipeline import PipelineCorrector
from acdc_lib.correctors.schedule import (DEFAULT_GUIDANCE_SCALE, DEFAULT_NUM_INFERENCE_STEPS, DEFAULT_STRENGTH,
                                          count_unet_calls, steps_for_strength)
from acdc_lib.correctors.unet import UNetCorrector, encode_text
from acdc_lib.correctors.video import UNetVideoCorrector, VideoPipelineCorrector

__all__ = [
    "DEFAULT_STRENGTH", "DEFAULT_GUIDANCE_SCALE", "DEFAULT_NUM_INFERENCE_STEPS",
    "ModelNotAvailableError", "steps_for_strength", "validate_images", "validate_videos",
    "validate_prompts", "validate_generators", "validate_guidance_scale", "validate_masks", "grow_masks",
    "PipelineCorrector", "UNetCorrector", "UNetVideoCorrector", "InpaintCorrector", "VideoPipelineCorrector",
    "RePaintInpainter",
    "count_unet_calls",
    "encode_text",
]
