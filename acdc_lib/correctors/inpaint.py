"""Inpainting correctors: masked repainting through diffusers' inpainting pipeline, and RePaint over a UNet.

Masks are (B, 1, H, W) with 1 where the model repaints and 0 where the frame is kept (the paper's
physical constraints, Sec. 3). `UNetCorrector.inpaint` is the third method, on the toy DM.
"""
from __future__ import annotations

from typing import Sequence

import torch

from acdc_lib.correctors.inputs import _resize, validate_images, validate_masks
from acdc_lib.correctors.pipeline import _PipelineWrapper
from acdc_lib.correctors.schedule import DEFAULT_GUIDANCE_SCALE, DEFAULT_NUM_INFERENCE_STEPS, _check_call
from acdc_lib.correctors.unet import UNetCorrector

__all__ = ["InpaintCorrector", "RePaintInpainter"]


class InpaintCorrector(_PipelineWrapper):
    """SDEdit restricted to a mask through StableDiffusionInpaintPipeline (user constraints, Sec. 3).

    Masks are (B, 1, H, W) with 1 where the model repaints and 0 where the frame is kept. Resizing
    as in PipelineCorrector (masks with nearest neighbour, so they stay 0/1).
    """

    _auto_class_name = "AutoPipelineForInpainting"
    _example = " (a Stable Diffusion v1.5 inpainting checkpoint on a GPU node)"

    def inpaint(self, images: torch.Tensor, masks: torch.Tensor, prompts: Sequence[str], *,
                strength: float = 1.0, guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
                num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
                generators: Sequence[torch.Generator] | None = None) -> torch.Tensor:
        """Repaint the masked region of each frame, conditioned on its prompt.

        Args:
            images: (B, C, H, W) float in [0, 1].
            masks: (B, 1, H, W) with values in {0, 1}; 1 = repaint.
            prompts: B text conditions.
            strength: t' in (0, 1]; 1.0 (diffusers' default for inpainting) repaints from pure noise.
            guidance_scale: CFG scale w (1 = no guidance, else > 1).
            num_inference_steps: N, the full DDIM schedule length.
            generators: B torch.Generators, one per row.
        Returns:
            (B, C, H, W) float in [0, 1].
        """
        # 1. Check inputs
        validate_images(images)
        self._check_channels(images.shape[1])
        validate_masks(masks, images)
        prompts, steps, guidance_scale, generators = _check_call(
            images.shape[0], prompts, strength, guidance_scale, num_inference_steps, generators)
        self._check_guidance(guidance_scale)
        # 2. Resize to the model's resolution (undone in 6)
        size_in = tuple(images.shape[-2:])
        h, w = self.model_size(*size_in)
        x = _resize(images, (h, w)).to(self.pipe.device, self.pipe.dtype)
        m = _resize(masks.float(), (h, w), nearest=True).to(self.pipe.device, self.pipe.dtype)
        # 3-5. Inside the pipeline: prompts, last int(N t') DDIM timesteps, masked denoising loop
        out = self.pipe(prompt=prompts, image=x, mask_image=m, height=h, width=w, strength=strength,
                        num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, eta=self.eta,
                        generator=generators, output_type="pt").images
        self.last_steps_run = steps
        # 6. Back to the input's size, device and dtype
        return _resize(out.float(), size_in).to(images.device, images.dtype)


class RePaintInpainter:
    """`InpaintCorrector`'s `inpaint` interface over `UNetCorrector.repaint` (RePaint), so an experiment can
    swap the inpainting method without knowing it. RePaint always starts from pure noise: t' must be 1.

    Args:
        corrector: a UNetCorrector; jump_length, jump_n_sample: RePaint's resampling schedule.
    """

    def __init__(self, corrector: UNetCorrector, jump_length: int = 3, jump_n_sample: int = 3):
        self.corrector, self.jump_length, self.jump_n_sample = corrector, jump_length, jump_n_sample

    def inpaint(self, images: torch.Tensor, masks: torch.Tensor, prompts: Sequence[str], *, strength: float = 1.0,
                guidance_scale: float = DEFAULT_GUIDANCE_SCALE, num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
                generators: Sequence[torch.Generator] | None = None) -> torch.Tensor:
        """As `UNetCorrector.inpaint`, by RePaint; `strength` must be 1.0."""
        if strength != 1.0:
            raise ValueError(f"RePaint repaints from pure noise: strength must be 1.0, got {strength!r}")
        return self.corrector.repaint(images, masks, prompts, guidance_scale=guidance_scale,
                                      num_inference_steps=num_inference_steps, jump_length=self.jump_length,
                                      jump_n_sample=self.jump_n_sample, generators=generators)
