"""Correctors over diffusers pipelines: the shared wrapper and SDEdit through Stable Diffusion img2img (Eq. 2).

`PipelineCorrector` runs any diffusers image-to-image pipeline (Stable Diffusion v1.5 img2img on GPU
nodes) and, through the same weights, text-to-image (the paper's DM-only row). The wrapper it shares
with `InpaintCorrector` and `VideoPipelineCorrector` sets DDIM (eta = 0), removes Stable Diffusion's
safety checker (it would turn a flagged frame black), resizes to the model's resolution and back, and
loads pipelines by id or folder.
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import torch

from acdc_lib.correctors.inputs import _resize, validate_images
from acdc_lib.correctors.loading import _load_or_explain
from acdc_lib.correctors.schedule import (DEFAULT_GUIDANCE_SCALE, DEFAULT_NUM_INFERENCE_STEPS, DEFAULT_STRENGTH,
                                          _check_call, _ddim_from)
from acdc_lib.correctors.unet import UNetCorrector

__all__ = ["PipelineCorrector"]


class _PipelineWrapper:
    """Shared by the pipeline correctors: DDIM scheduler, eta = 0, no safety checker, resolution handling, loading.

    Args:
        pipe: the diffusers pipeline; its scheduler is replaced by a DDIMScheduler built from its config,
            and its safety checker, if it has one, is removed.
        resolution: (H, W) (int: square) the model runs at, e.g. 512 for SD v1.5; None runs at the
            input's size rounded up to `size_multiple`. Inputs are resized there and back.
        eta: DDIM's eta; 0 (deterministic DDIM) is the paper's sampler.
        progress_bar: show diffusers' progress bar.
    """

    _auto_class_name = "AutoPipelineForImage2Image"
    _example = " (a Stable Diffusion v1.5 checkpoint on a GPU node)"
    # Stable Diffusion's image pipelines carry a safety checker; AnimateDiff's has none.
    _has_safety_checker = True

    def __init__(self, pipe, *, resolution: int | tuple[int, int] | None = None, eta: float = 0.0,
                 progress_bar: bool = False):
        # The paper samples with DDIM; eta = 0 makes the reverse process deterministic given x_t'.
        pipe.scheduler = _ddim_from(pipe.scheduler)
        # Stable Diffusion's safety checker replaces every frame it flags with a black one, which ACDC would
        # re-encode into the ARM's context and score as if a model had drawn it: no pipeline here keeps it.
        if getattr(pipe, "safety_checker", None) is not None:
            pipe.register_modules(safety_checker=None)
        if "requires_safety_checker" in getattr(pipe, "config", {}):
            pipe.register_to_config(requires_safety_checker=False)
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(disable=not progress_bar)
        self.pipe = pipe
        if isinstance(resolution, int):
            resolution = (resolution, resolution)
        self.resolution = resolution
        self.eta = eta
        self.last_steps_run = 0

    @classmethod
    def from_pipeline(cls, pipe, **kwargs):
        """Wrap an already built pipeline (its scheduler is replaced by a DDIMScheduler, its safety checker removed)."""
        return cls(pipe, **kwargs)

    @classmethod
    def _auto_class(cls):
        import diffusers

        return getattr(diffusers, cls._auto_class_name)

    @classmethod
    def from_pretrained(cls, model_id_or_path: str | os.PathLike, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, *, resolution: int | tuple[int, int] | None = None,
                        **kwargs):
        """Load the pipeline with diffusers' from_pretrained and wrap it.

        Args:
            model_id_or_path: a Hub id or a folder written by `save_pretrained`; never hard-coded.
            device: where the pipeline runs.
            dtype: its torch dtype (float16 on GPU nodes, float32 on CPU).
            resolution: run the model at this (H, W) (int: square); None keeps the input size.
            **kwargs: `eta` and `progress_bar` go to the constructor, the rest to diffusers'
                from_pretrained (e.g. `variant="fp16"`). The safety checker is never loaded.
        Raises:
            ModelNotAvailableError when the model cannot be found, saying what to pass.
        """
        own = {key: kwargs.pop(key) for key in ("eta", "progress_bar") if key in kwargs}
        if cls._has_safety_checker:  # not even loaded (SD v1.5's checker is a CLIP ViT-L, 1.2 GB)
            kwargs.update(safety_checker=None, requires_safety_checker=False)
        pipe = _load_or_explain(cls._auto_class().from_pretrained, model_id_or_path,
                                f"a diffusers {cls._auto_class_name} pipeline", "model_id_or_path",
                                cls._example, dtype=dtype, **kwargs)
        return cls(pipe.to(device), resolution=resolution, **own)

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: VAE factor x the UNet's downsampling."""
        levels = len(self.pipe.unet.config.block_out_channels)
        return int(self.pipe.vae_scale_factor) * 2 ** (levels - 1)

    def model_size(self, height: int, width: int) -> tuple[int, int]:
        """The (H, W) the model runs at: `resolution` if set, else the input rounded up to `size_multiple`."""
        m = self.size_multiple
        if self.resolution is not None:
            if any(side % m for side in self.resolution):
                raise ValueError(f"resolution sides must be multiples of {m} for this pipeline, got {self.resolution}")
            return tuple(self.resolution)
        return (math.ceil(height / m) * m, math.ceil(width / m) * m)

    def _check_channels(self, channels: int) -> None:
        want = self.pipe.vae.config.in_channels
        if channels != want:
            raise ValueError(f"this pipeline's VAE takes {want}-channel images, got C={channels}")

    def _check_guidance(self, guidance_scale: float) -> None:
        # diffusers pipelines apply CFG only for w > 1 and silently drop it below; refuse instead.
        if guidance_scale < 1:
            raise ValueError(f"pipeline correctors take guidance_scale == 1 (no guidance) or > 1, got "
                             f"{guidance_scale}; diffusers would ignore CFG here. Use UNetCorrector for w in [0, 1)")


class PipelineCorrector(_PipelineWrapper):
    """SDEdit (Eq. 2) through a diffusers image-to-image pipeline, e.g. Stable Diffusion v1.5 img2img.

    The pipeline adds noise to the encoded frame at t' and denoises the last int(N * t') DDIM steps
    with classifier-free guidance. Inputs whose sides are not multiples of `size_multiple` (or differ
    from `resolution` when set, e.g. 512 for SD v1.5) are resized bilinearly to the model's size and
    the result is resized back, so the output always has the input's (H, W).

    It is also a `acdc_lib.types.TextToImage` (`generate`): the same weights draw a frame from its
    prompt alone, the paper's Stable Diffusion v1.5 row.
    """

    # diffusers' text-to-image Stable Diffusion pipelines refuse sides that are not multiples of 8,
    # whatever the VAE's factor (img2img takes the size from the image and has no such check).
    _t2i_side_multiple = 8

    def correct(self, images: torch.Tensor, prompts: Sequence[str], *, strength: float = DEFAULT_STRENGTH,
                guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
                num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
                generators: Sequence[torch.Generator] | None = None) -> torch.Tensor:
        """Correct a batch of frames with SDEdit (Eq. 2).

        Args:
            images: (B, C, H, W) float in [0, 1], C equal to the VAE's input channels.
            prompts: B text conditions y.
            strength: t' in (0, 1]; int(num_inference_steps * strength) steps run.
            guidance_scale: CFG scale w (1 = no guidance, else > 1).
            num_inference_steps: N, the full DDIM schedule length.
            generators: B torch.Generators; row b's VAE sample and noise come from generators[b].
        Returns:
            (B, C, H, W) float in [0, 1] on the input's device and dtype.
        """
        # 1. Check inputs
        validate_images(images)
        self._check_channels(images.shape[1])
        prompts, steps, guidance_scale, generators = _check_call(
            images.shape[0], prompts, strength, guidance_scale, num_inference_steps, generators)
        self._check_guidance(guidance_scale)
        # 2. Resize to the model's resolution (undone in 6)
        size_in = tuple(images.shape[-2:])
        x = _resize(images, self.model_size(*size_in)).to(self.pipe.device, self.pipe.dtype)
        # 3-5. Inside the pipeline: encode prompts (+ "" for CFG), keep the last int(N t') DDIM
        # timesteps, noise the VAE latent to t' with generators[b], denoising loop (Eq. 2)
        out = self.pipe(prompt=prompts, image=x, strength=strength, num_inference_steps=num_inference_steps,
                        guidance_scale=guidance_scale, eta=self.eta, generator=generators, output_type="pt").images
        self.last_steps_run = steps
        # 6. Back to the input's size, device and dtype
        return _resize(out.float(), size_in).to(images.device, images.dtype)

    def drift_score(self, images: torch.Tensor, prompts: Sequence[str], *, strength: float = DEFAULT_STRENGTH,
                    num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
                    generators: Sequence[torch.Generator] | None = None, draws: int = 4) -> torch.Tensor:
        """`UNetCorrector.drift_score` over this pipeline's UNet, VAE and text encoder, at the model's resolution.

        The pipelines have no such call; the pipeline's own modules are reused (no copy of the weights).
        """
        validate_images(images)
        self._check_channels(images.shape[1])
        x = _resize(images, self.model_size(*images.shape[-2:])).clamp(0.0, 1.0)
        return self.unet_corrector().drift_score(x, prompts, strength=strength,
                                                 num_inference_steps=num_inference_steps, generators=generators,
                                                 draws=draws)

    def unet_corrector(self) -> "UNetCorrector":
        """A UNetCorrector over this pipeline's own UNet, VAE, text encoder and a DDIM scheduler (built once).

        For measurements the pipeline call does not expose (the drift score, score norms on the path).
        """
        if getattr(self, "_unet_corrector", None) is None:
            p = self.pipe
            self._unet_corrector = UNetCorrector(p.unet, p.text_encoder, p.tokenizer, _ddim_from(p.scheduler), p.vae,
                                                 device=p.device, dtype=p.dtype, eta=self.eta)
        return self._unet_corrector

    # ---- text-to-image (the DM-only row) ----------------------------------------------------
    @property
    def text2image_pipe(self):
        """The diffusers text-to-image pipeline over this corrector's loaded parts (built once, on first use).

        `AutoPipelineForText2Image.from_pipe` reuses the img2img pipeline's modules (UNet, VAE, text
        encoder, tokenizer), so no second copy of the weights is made.
        """
        if getattr(self, "_t2i", None) is None:
            from diffusers import AutoPipelineForText2Image

            self._t2i = AutoPipelineForText2Image.from_pipe(self.pipe, safety_checker=None,
                                                            requires_safety_checker=False)
            self._t2i.set_progress_bar_config(disable=True)
        # Follow the corrector's scheduler (DDIM, eta 0), also when someone swapped it after the first call.
        self._t2i.scheduler = self.pipe.scheduler
        return self._t2i

    def default_size(self) -> tuple[int, int]:
        """(H, W) of `generate` when no size is given: `resolution` if set, else the UNet's sample_size x VAE factor."""
        if self.resolution is not None:
            return tuple(self.resolution)
        side = int(self.pipe.unet.config.sample_size) * int(self.pipe.vae_scale_factor)
        return (side, side)

    def _text2image_size(self, height: int, width: int) -> tuple[int, int]:
        """The (H, W) the text-to-image pipeline runs at for a requested size (see `model_size`)."""
        m = math.lcm(self.size_multiple, self._t2i_side_multiple)
        if self.resolution is not None:
            if any(side % m for side in self.resolution):
                raise ValueError(f"resolution sides must be multiples of {m} for text-to-image with this pipeline "
                                 f"(the UNet/VAE need {self.size_multiple}, diffusers' text-to-image needs "
                                 f"{self._t2i_side_multiple}), got {self.resolution}")
            return tuple(self.resolution)
        return (math.ceil(height / m) * m, math.ceil(width / m) * m)

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], height: int | None = None, width: int | None = None, *,
                 guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
                 num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
                 generators: Sequence[torch.Generator] | None = None) -> torch.Tensor:
        """Text-to-image from pure noise: all N DDIM steps (eta as the corrector's) with CFG, one frame per prompt.

        Args:
            prompts: B text conditions (B >= 1).
            height, width: output size in pixels (default: `default_size()`). The model runs at
                `resolution` when set, else at the size rounded up to the pipeline's multiple, and the
                result is resized (bilinear, antialiased) to (height, width).
            guidance_scale: CFG scale w (1 = no guidance, else > 1), as in `correct`.
            num_inference_steps: N, the number of DDIM steps (= UNet calls) that run.
            generators: B torch.Generators; row b's initial noise comes from generators[b] only.
        Returns:
            (B, C, height, width) float32 in [0, 1] on the pipeline's device.
        """
        # 1. Check inputs
        if isinstance(prompts, str) or not isinstance(prompts, Sequence) or len(prompts) == 0:
            raise ValueError(f"prompts must be a non-empty list of strings (one per image), got "
                             f"{type(prompts).__name__} {prompts!r:.60}")
        prompts, steps, guidance_scale, generators = _check_call(
            len(prompts), prompts, 1.0, guidance_scale, num_inference_steps, generators)
        self._check_guidance(guidance_scale)
        default_h, default_w = self.default_size()
        height = default_h if height is None else height
        width = default_w if width is None else width
        for name, side in (("height", height), ("width", width)):
            if isinstance(side, bool) or not isinstance(side, int) or side < 1:
                raise ValueError(f"{name} must be a positive int (pixels) or None, got {side!r}")
        # 2. The model's size (undone in 4)
        h, w = self._text2image_size(height, width)
        # 3. Inside the pipeline: encode prompts (+ "" for CFG), x_T ~ N(0, I) with row b from
        # generators[b], N DDIM steps with classifier-free guidance, VAE decode
        out = self.text2image_pipe(prompt=prompts, height=h, width=w, num_inference_steps=num_inference_steps,
                                   guidance_scale=guidance_scale, eta=self.eta, generator=generators,
                                   output_type="pt").images                            # (B, C, h, w)
        self.last_steps_run = steps
        # 4. To the requested size
        return _resize(out.float(), (height, width))
