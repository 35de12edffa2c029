"""Video correctors: SDEdit over chunks of L frames (Eq. 5), jointly denoised by a motion-aware UNet.

`VideoPipelineCorrector` runs diffusers' AnimateDiffVideoToVideoPipeline (GPU nodes);
`UNetVideoCorrector` runs our own loop over a UNetMotionModel (the toy DM inflated with a MotionAdapter).
Both take (B, L, C, H, W) chunks in [0, 1].
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from acdc_lib.correctors.inputs import _resize, validate_videos
from acdc_lib.correctors.loading import ModelNotAvailableError, _load_or_explain
from acdc_lib.correctors.pipeline import _PipelineWrapper
from acdc_lib.correctors.schedule import (DEFAULT_GUIDANCE_SCALE, DEFAULT_NUM_INFERENCE_STEPS, DEFAULT_STRENGTH,
                                          _check_call)
from acdc_lib.correctors.unet import UNetCorrector

__all__ = ["VideoPipelineCorrector", "UNetVideoCorrector"]


class VideoPipelineCorrector(_PipelineWrapper):
    """Video SDEdit (Eq. 5) through diffusers' AnimateDiffVideoToVideoPipeline: a chunk of L frames
    is noised to t' and denoised jointly by a motion-aware UNet."""

    _auto_class_name = "AnimateDiffVideoToVideoPipeline"
    _has_safety_checker = False
    _example = (" (a saved AnimateDiff pipeline, or a Stable Diffusion v1.5 checkpoint together with "
                "`motion_adapter`)")

    @classmethod
    def from_pretrained(cls, model_id_or_path: str | os.PathLike, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, *, motion_adapter: str | os.PathLike | None = None,
                        resolution: int | tuple[int, int] | None = None, **kwargs):
        """Load an AnimateDiff video-to-video pipeline.

        Args:
            model_id_or_path: a saved AnimateDiff pipeline folder, or a Stable Diffusion v1.5 id/folder
                when `motion_adapter` is given.
            motion_adapter: id or folder of a diffusers MotionAdapter (None: the pipeline folder holds one).
            device, dtype, resolution, **kwargs: as in PipelineCorrector.from_pretrained.
        """
        if motion_adapter is not None:
            from diffusers import MotionAdapter

            kwargs["motion_adapter"] = _load_or_explain(
                MotionAdapter.from_pretrained, motion_adapter, "a diffusers MotionAdapter", "motion_adapter",
                " (an AnimateDiff v1.5 motion adapter)", dtype=dtype)
        return super().from_pretrained(model_id_or_path, device, dtype, resolution=resolution, **kwargs)

    def correct_video(self, videos: torch.Tensor, prompts: Sequence[str], *, strength: float = DEFAULT_STRENGTH,
                      guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
                      num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
                      generators: Sequence[torch.Generator] | None = None) -> torch.Tensor:
        """Correct B chunks of L frames (Eq. 5).

        Args:
            videos: (B, L, C, H, W) float in [0, 1].
            prompts: B text conditions, one per chunk.
            strength: t' in (0, 1] (the paper uses 0.4-0.6 for video).
            guidance_scale: CFG scale w (1 = no guidance, else > 1).
            num_inference_steps: N, the full DDIM schedule length.
            generators: B torch.Generators, one per chunk.
        Returns:
            (B, L, C, H, W) float in [0, 1].
        """
        # 1. Check inputs
        validate_videos(videos)
        self._check_channels(videos.shape[2])
        prompts, steps, guidance_scale, generators = _check_call(
            videos.shape[0], prompts, strength, guidance_scale, num_inference_steps, generators)
        self._check_guidance(guidance_scale)
        # 2. Resize every frame to the model's resolution (undone in 6)
        b, length, c, h_in, w_in = videos.shape
        h, w = self.model_size(h_in, w_in)
        x = _resize(videos.reshape(b * length, c, h_in, w_in), (h, w)).reshape(b, length, c, h, w)
        x = x.to(self.pipe.device, self.pipe.dtype)
        # 3-5. Inside the pipeline: prompts, last int(N t') DDIM timesteps, per-chunk noise from
        # generators[b], joint denoising of the L frames (Eq. 5)
        out = self.pipe(video=x, prompt=prompts, height=h, width=w, strength=strength,
                        num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, eta=self.eta,
                        generator=generators, output_type="pt").frames  # (B, L, C, h, w)
        self.last_steps_run = steps
        # 6. Back to the input's size, device and dtype
        out = _resize(out.float().reshape(b * length, c, h, w), (h_in, w_in))
        return out.reshape(b, length, c, h_in, w_in).to(videos.device, videos.dtype)


class UNetVideoCorrector(UNetCorrector):
    """SDEdit over chunks of L frames (Eq. 5) with a diffusers UNetMotionModel: AnimateDiff's inflated UNet.

    The sampler of `UNetCorrector` over videos: the chunk's frames go through the VAE (or not, in pixel
    space) one by one, are stacked to (B, C, L, h, w) latents, noised to t' with row b's noise from
    generators[b] only, and denoised jointly by the motion UNet, whose temporal attention sees all L
    frames; CFG is one batched forward of 2B videos. Written here because diffusers' AnimateDiff
    video-to-video pipeline assumes Stable Diffusion's AutoencoderKL and latent layout (the toy world's
    DM works in a VQ's latents); `VideoPipelineCorrector` runs that pipeline on GPU nodes.
    Single frames (`correct`, `inpaint`, `drift_score`, `generate`) run as one-frame videos.

    Args:
        unet: a diffusers UNetMotionModel (e.g. `UNetMotionModel.from_unet2d(unet, motion_adapter)`).
        text_encoder, tokenizer, scheduler, vae, device, dtype, eta: as in `UNetCorrector`.
    """

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, *, motion_adapter: str | os.PathLike | None = None,
                        scheduler: str = "ddim", **kwargs) -> "UNetVideoCorrector":
        """Load `UNetCorrector`'s parts from `path` and inflate its UNet with a saved MotionAdapter.

        Args:
            path: the folder of unet/, text_encoder/, tokenizer/, scheduler/ (+ vae/).
            motion_adapter: the folder of a diffusers MotionAdapter (default: path/motion_adapter).
            device, dtype, scheduler, kwargs: as in `UNetCorrector.from_pretrained`.
        Raises:
            ModelNotAvailableError naming the missing folder.
        """
        from diffusers import MotionAdapter, UNetMotionModel

        adapter_dir = Path(motion_adapter).expanduser() if motion_adapter is not None else Path(path) / "motion_adapter"
        if not (adapter_dir / "config.json").is_file():
            raise ModelNotAvailableError(
                f"no MotionAdapter at {str(adapter_dir)!r} (no config.json); pass `motion_adapter`, a folder written "
                "by MotionAdapter.save_pretrained or UNetMotionModel.save_motion_modules")
        image = UNetCorrector.from_pretrained(path, "cpu", torch.float32, scheduler=scheduler)
        unet = UNetMotionModel.from_unet2d(image.unet, MotionAdapter.from_pretrained(adapter_dir))
        return cls(unet, image.text_encoder, image.tokenizer, image.scheduler, image.vae, device=device, dtype=dtype,
                   **kwargs)

    def _unet_call(self, model_in: torch.Tensor, t, emb: torch.Tensor) -> torch.Tensor:
        frames = model_in.ndim == 4  # single frames: one-frame videos
        x = model_in[:, :, None] if frames else model_in                                # (B, C, L, h, w)
        # UNetMotionModel takes the text per frame (B*L rows), as diffusers' AnimateDiff pipelines repeat it
        out = self.unet(x, t, encoder_hidden_states=emb.repeat_interleave(x.shape[2], dim=0)).sample
        return out[:, :, 0] if frames else out

    @torch.no_grad()
    def correct_video(self, videos: torch.Tensor, prompts: Sequence[str], *, strength: float = DEFAULT_STRENGTH,
                      guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
                      num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
                      generators: Sequence[torch.Generator] | None = None) -> torch.Tensor:
        """Correct B chunks of L frames with SDEdit (Eq. 5): noise each chunk to t', denoise jointly with DDIM + CFG.

        Args:
            videos: (B, L, C, H, W) float in [0, 1].
            prompts: B text conditions, one per video.
            strength, guidance_scale, num_inference_steps: as in `UNetCorrector.correct`.
            generators: B torch.Generators; video b's VAE samples and noise come from generators[b] only.
        Returns:
            (B, L, C, H, W) float in [0, 1] on the input's device and dtype.
        """
        validate_videos(videos)
        B, L = videos.shape[:2]
        if videos.shape[2] != self.image_channels:
            raise ValueError(f"this corrector takes {self.image_channels}-channel frames, got C={videos.shape[2]}")
        self._check_size(*videos.shape[-2:])
        prompts, steps, guidance_scale, generators = _check_call(
            B, prompts, strength, guidance_scale, num_inference_steps, generators)
        cond = self.encode_prompts(prompts)
        timesteps = self._timesteps(num_inference_steps, steps)
        from diffusers.utils.torch_utils import randn_tensor

        frame_gens = None if generators is None else [g for g in generators for _ in range(L)]  # frames in order
        z = self._to_model_space(videos.flatten(0, 1), frame_gens)                      # (B*L, c, h, w)
        z = z.view(B, L, *z.shape[1:]).transpose(1, 2)                                  # (B, c, L, h, w)
        noise = randn_tensor(tuple(z.shape), generator=generators, device=self.device, dtype=z.dtype)
        x = self.scheduler.add_noise(z, noise, timesteps[:1].repeat(B))
        x = self._denoise(x, timesteps, cond, guidance_scale, generators)
        self.last_steps_run = len(timesteps)
        frames = self._to_images(x.transpose(1, 2).flatten(0, 1))                       # (B*L, C, H, W)
        return frames.view(B, L, *frames.shape[1:]).to(videos.device, videos.dtype)
