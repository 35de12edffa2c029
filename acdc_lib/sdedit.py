"""SDEdit correction (Eq. 2) over diffusers: t' -> int(N * t') DDIM steps, CFG, inpainting.

t' follows diffusers' img2img `strength`: with N scheduler steps, the noise is added at the
timestep where int(N * t') steps remain, and exactly that many denoising steps run.

Correctors (all take images as float (B, C, H, W) tensors in [0, 1], one prompt and one
`torch.Generator` per row; defaults are the paper's: DDIM with eta = 0, CFG 7.5, t' = 0.5):

    PipelineCorrector       any diffusers image-to-image pipeline (Stable Diffusion v1.5 img2img)
    UNetCorrector           any UNet2DConditionModel + text encoder + scheduler, pixel or latent space
                            (also inpaints, by diffusers' method for UNets without mask channels)
    InpaintCorrector        StableDiffusionInpaintPipeline (user masks, the paper's physical constraints)
    VideoPipelineCorrector  AnimateDiffVideoToVideoPipeline on (B, L, C, H, W) chunks (Eq. 5)
    UNetVideoCorrector      any UNetMotionModel (a UNet inflated with a MotionAdapter) on such chunks

Each records `last_steps_run`, the number of denoising steps (UNet calls) its last call ran.
"""
from __future__ import annotations

import inspect
import math
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from acdc_lib.defaults import PAPER_GUIDANCE_SCALE, PAPER_NUM_INFERENCE_STEPS, PAPER_STRENGTH

__all__ = [
    "DEFAULT_STRENGTH", "DEFAULT_GUIDANCE_SCALE", "DEFAULT_NUM_INFERENCE_STEPS",
    "ModelNotAvailableError", "steps_for_strength", "validate_images", "validate_videos",
    "validate_prompts", "validate_generators", "validate_guidance_scale", "validate_masks", "grow_masks",
    "PipelineCorrector", "UNetCorrector", "UNetVideoCorrector", "InpaintCorrector", "VideoPipelineCorrector",
    "RePaintInpainter",
    "count_unet_calls",
    "encode_text",
]

# The paper's correction settings (DDIM, CFG 7.5, t' = 0.5, N = 50), under this module's older names.
DEFAULT_STRENGTH = PAPER_STRENGTH
DEFAULT_GUIDANCE_SCALE = PAPER_GUIDANCE_SCALE
DEFAULT_NUM_INFERENCE_STEPS = PAPER_NUM_INFERENCE_STEPS


class ModelNotAvailableError(OSError):
    """A model id or folder could not be loaded (no weights on this machine, wrong path or layout)."""


# --------------------------------------------------------------------------------------------
# Validation shared by every corrector
# --------------------------------------------------------------------------------------------
def steps_for_strength(num_inference_steps: int, strength: float) -> int:
    """Denoising steps SDEdit runs for t' = `strength` out of N = `num_inference_steps`.

    Mirrors diffusers' img2img: init_timestep = min(int(N * strength), N). Raises ValueError for
    t' outside (0, 1], N < 1, or a combination where no step would run (diffusers itself then fails
    with an obscure reshape error).
    """
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be a positive int, got {num_inference_steps!r}")
    if not (0.0 < float(strength) <= 1.0):
        raise ValueError(f"strength t' must be in (0, 1], got {strength!r}")
    steps = min(int(num_inference_steps * strength), num_inference_steps)
    if steps == 0:
        raise ValueError(
            f"strength t'={strength} with num_inference_steps={num_inference_steps} runs int(N*t')=0 "
            f"denoising steps; raise t' to at least {1.0 / num_inference_steps:.4g} or use more steps")
    return steps


def _check_pixels(x: torch.Tensor, name: str, shape_text: str) -> None:
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a float tensor with values in [0, 1], got dtype {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")
    lo, hi = x.min().item(), x.max().item()
    if not (math.isfinite(lo) and math.isfinite(hi)) or torch.isnan(x).any():
        raise ValueError(f"{name} must be finite, found min={lo} max={hi} (NaN or inf present)")
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{name} values must lie in [0, 1] (no clamping is done here), "
                         f"found min={lo:.6g} max={hi:.6g} in shape {tuple(x.shape)} {shape_text}")


def validate_images(images: torch.Tensor, *, name: str = "images") -> None:
    """Check a (B, C, H, W) float image batch with C in {1, 3} and values in [0, 1].

    Args:
        images: the tensor to check.
        name: how the error message calls it.
    Raises:
        ValueError naming the shape, dtype, min or max found.
    """
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (B, C, H, W), got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"{name} must be 4-D (B, C, H, W), got {images.ndim}-D shape {tuple(images.shape)}")
    if images.shape[1] not in (1, 3):
        raise ValueError(f"{name} must have C in {{1, 3}} channels (B, C, H, W), "
                         f"got C={images.shape[1]} in shape {tuple(images.shape)}")
    _check_pixels(images, name, "(B, C, H, W)")


def validate_videos(videos: torch.Tensor, *, name: str = "videos") -> None:
    """Check a (B, L, C, H, W) float video batch with C in {1, 3} and values in [0, 1]."""
    if not isinstance(videos, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (B, L, C, H, W), got {type(videos).__name__}")
    if videos.ndim != 5:
        raise ValueError(f"{name} must be 5-D (B, L, C, H, W), got {videos.ndim}-D shape {tuple(videos.shape)}")
    if videos.shape[2] not in (1, 3):
        raise ValueError(f"{name} must have C in {{1, 3}} channels (B, L, C, H, W), "
                         f"got C={videos.shape[2]} in shape {tuple(videos.shape)}")
    _check_pixels(videos, name, "(B, L, C, H, W)")


def validate_prompts(prompts: Sequence[str], batch_size: int) -> list[str]:
    """Check there is one prompt string per batch row; return them as a list."""
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise ValueError(f"prompts must be a list of {batch_size} strings (one per image), "
                         f"got {type(prompts).__name__} {prompts!r:.60}")
    prompts = list(prompts)
    if len(prompts) != batch_size:
        raise ValueError(f"got {len(prompts)} prompts for {batch_size} images; pass exactly one prompt per image")
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
    if bad:
        raise ValueError(f"prompts must be strings; rows {bad} are {[type(prompts[i]).__name__ for i in bad]}")
    return prompts


def validate_generators(generators: Sequence[torch.Generator] | None,
                        batch_size: int) -> list[torch.Generator] | None:
    """Check there is one torch.Generator per batch row (None: torch's global RNG, not reproducible)."""
    if generators is None:
        return None
    if isinstance(generators, torch.Generator):
        raise ValueError(f"generators must be a list of {batch_size} torch.Generator (one per row), "
                         "got a single torch.Generator")
    generators = list(generators)
    if len(generators) != batch_size:
        raise ValueError(f"got {len(generators)} generators for batch size {batch_size}; pass one per row")
    bad = [i for i, g in enumerate(generators) if not isinstance(g, torch.Generator)]
    if bad:
        raise ValueError(f"generators must be torch.Generator; rows {bad} are not")
    return generators


def validate_guidance_scale(guidance_scale: float) -> float:
    """Check the CFG scale w is a finite number >= 0."""
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) \
            or not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise ValueError(f"guidance_scale must be a finite number >= 0, got {guidance_scale!r}")
    return float(guidance_scale)


def validate_masks(masks: torch.Tensor, images: torch.Tensor) -> None:
    """Check inpainting masks: (B, 1, H, W) like `images`, values exactly 0 (keep) or 1 (repaint)."""
    b, _, h, w = images.shape
    if not isinstance(masks, torch.Tensor):
        raise ValueError(f"masks must be a torch.Tensor of shape ({b}, 1, {h}, {w}), got {type(masks).__name__}")
    if tuple(masks.shape) != (b, 1, h, w):
        raise ValueError(f"masks must have shape (B, 1, H, W) = ({b}, 1, {h}, {w}) to match the images, "
                         f"got {tuple(masks.shape)}")
    values = torch.unique(masks.float())
    if not bool(((values == 0) | (values == 1)).all()):
        raise ValueError(f"masks must hold only 0 (keep) and 1 (repaint), found values "
                         f"{[round(v, 6) for v in values[:8].tolist()]}{' ...' if len(values) > 8 else ''}")


def grow_masks(masks: torch.Tensor, pixels: int = 1) -> torch.Tensor:
    """(B, 1, H, W) 0/1 masks grown by `pixels` in every direction (8-neighbourhood), as float."""
    if isinstance(pixels, bool) or not isinstance(pixels, int) or pixels < 0:
        raise ValueError(f"pixels must be an int >= 0, got {pixels!r}")
    m = masks.float()
    return F.max_pool2d(m, 2 * pixels + 1, stride=1, padding=pixels) if pixels else m


def _check_call(batch_size: int, prompts, strength, guidance_scale, num_inference_steps, generators):
    """Shared argument checks; returns (prompts, steps, guidance_scale, generators)."""
    prompts = validate_prompts(prompts, batch_size)
    steps = steps_for_strength(num_inference_steps, strength)
    guidance_scale = validate_guidance_scale(guidance_scale)
    generators = validate_generators(generators, batch_size)
    return prompts, steps, guidance_scale, generators


def _step_kwargs(scheduler, eta: float, generators) -> dict:
    """Keyword args scheduler.step accepts: eta (DDIM) and per-row generators (stochastic samplers)."""
    accepted = set(inspect.signature(scheduler.step).parameters)
    kwargs = {}
    if "eta" in accepted:
        kwargs["eta"] = eta
    if "generator" in accepted:
        kwargs["generator"] = generators
    return kwargs


def _ddim_from(scheduler):
    """A DDIMScheduler built from another scheduler's config with steps_offset=1 (SD v1.5 setting)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(scheduler.config, steps_offset=1)


def _looks_like_local_path(name: str | os.PathLike) -> bool:
    text = str(name)
    return isinstance(name, Path) or os.path.isabs(text) or text.startswith(("./", "../", "~", ".\\"))


def _load_or_explain(loader, model_id_or_path, what: str, param: str, example: str = "", **kwargs):
    """Call loader(model_id_or_path, **kwargs); turn a missing model into ONE clear error.

    Args:
        loader: e.g. `AutoPipelineForImage2Image.from_pretrained`.
        model_id_or_path: what the user passed.
        what: the thing being loaded, for the message ("a diffusers MotionAdapter").
        param: the argument the user should change.
        example: an example of a valid value, appended to the message.
    """
    hint = (f"pass `{param}`: a local folder written by save_pretrained, or a Hugging Face Hub id whose "
            f"weights are in the local cache or reachable from this machine{example}; "
            "set HF_HUB_OFFLINE=1 to fail fast without a network")
    if _looks_like_local_path(model_id_or_path) and not Path(model_id_or_path).expanduser().exists():
        raise ModelNotAvailableError(f"cannot load {what} from {str(model_id_or_path)!r}: no such folder; {hint}")
    try:
        return loader(str(model_id_or_path), **kwargs)
    except (OSError, EnvironmentError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelNotAvailableError(
            f"cannot load {what} from {str(model_id_or_path)!r} ({first}); {hint}") from None


def _resize(x: torch.Tensor, size: tuple[int, int], *, nearest: bool = False) -> torch.Tensor:
    """Resize (N, C, H, W) to `size`; bilinear (antialiased) for images, nearest for 0/1 masks."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if nearest:
        return F.interpolate(x, size=size, mode="nearest-exact")
    # Bilinear weights are a convex combination, so [0, 1] stays [0, 1] up to float rounding,
    # which the clamp removes (it never changes a value by more than ~1e-7).
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0.0, 1.0)


# --------------------------------------------------------------------------------------------
# Correctors over diffusers pipelines (Stable Diffusion img2img, inpainting, AnimateDiff)
# --------------------------------------------------------------------------------------------
class _PipelineWrapper:
    """Shared by the pipeline correctors: DDIM scheduler, eta = 0, resolution handling, loading.

    Args:
        pipe: the diffusers pipeline; its scheduler is replaced by a DDIMScheduler built from its config.
        resolution: (H, W) (int: square) the model runs at, e.g. 512 for SD v1.5; None runs at the
            input's size rounded up to `size_multiple`. Inputs are resized there and back.
        eta: DDIM's eta; 0 (deterministic DDIM) is the paper's sampler.
        progress_bar: show diffusers' progress bar.
    """

    _auto_class_name = "AutoPipelineForImage2Image"
    _example = " (a Stable Diffusion v1.5 checkpoint on a GPU node)"

    def __init__(self, pipe, *, resolution: int | tuple[int, int] | None = None, eta: float = 0.0,
                 progress_bar: bool = False):
        # The paper samples with DDIM; eta = 0 makes the reverse process deterministic given x_t'.
        pipe.scheduler = _ddim_from(pipe.scheduler)
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
        """Wrap an already built pipeline (its scheduler is replaced by a DDIMScheduler)."""
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
                from_pretrained (e.g. `safety_checker=None`, `variant="fp16"`).
        Raises:
            ModelNotAvailableError when the model cannot be found, saying what to pass.
        """
        own = {key: kwargs.pop(key) for key in ("eta", "progress_bar") if key in kwargs}
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

            self._t2i = AutoPipelineForText2Image.from_pipe(self.pipe)
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


class VideoPipelineCorrector(_PipelineWrapper):
    """Video SDEdit (Eq. 5) through diffusers' AnimateDiffVideoToVideoPipeline: a chunk of L frames
    is noised to t' and denoised jointly by a motion-aware UNet."""

    _auto_class_name = "AnimateDiffVideoToVideoPipeline"
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


# --------------------------------------------------------------------------------------------
# Our own SDEdit loop over any UNet2DConditionModel
# --------------------------------------------------------------------------------------------
def encode_text(tokenizer, text_encoder, prompts: Sequence[str], device: str | torch.device | None = None) -> torch.Tensor:
    """(B, T, D) conditioning of a UNet: the text encoder's last hidden state, as Stable Diffusion does it.

    Token ids are padded to `tokenizer.model_max_length` (T) and no attention mask is passed, so a model
    trained with this function (gradients flow; wrap it in no_grad for inference) sees at sampling
    exactly what it saw in training. The unconditional input of CFG is the empty prompt "".
    Prompts longer than T tokens are cut to T, with a warning naming them (CLIP's hard limit).

    Args:
        tokenizer: a transformers tokenizer with a pad token and `model_max_length`.
        text_encoder: a transformers text model whose first output is (B, T, D).
        prompts: B strings.
        device: where the ids go (default: the text encoder's device).
    """
    prompts = list(prompts)
    max_len = tokenizer.model_max_length
    ids = tokenizer(prompts, padding="max_length", max_length=max_len, truncation=True,
                    return_overflowing_tokens=False, return_length=False, return_tensors="pt").input_ids
    too_long = [p for p in prompts if len(tokenizer(p).input_ids) > max_len]
    if too_long:
        warnings.warn(f"{len(too_long)} prompt(s) exceed the text encoder's {max_len} tokens and were cut: "
                      f"{[p[:80] for p in too_long[:3]]}", stacklevel=2)
    device = device if device is not None else next(text_encoder.parameters()).device
    return text_encoder(ids.to(device))[0]


class UNetCorrector:
    """SDEdit (Eq. 2) for any UNet2DConditionModel + text encoder + tokenizer + diffusers scheduler.

    Written here rather than taken from a diffusers pipeline because those pipelines assume a VAE and
    Stable Diffusion's layouts, while the toy world's DM works in pixel space. Without `vae` the
    UNet sees images mapped to [-1, 1]; with an AutoencoderKL or VQModel it sees latents scaled by
    the VAE's `scaling_factor`. `prediction_type` (epsilon, v_prediction, sample) is whatever the
    scheduler's config says; the scheduler turns the guided model output into x_{t-1}.

    Args:
        unet: a diffusers UNet2DConditionModel whose cross-attention width is the text encoder's.
        text_encoder: a transformers text model; its first output (last hidden state) conditions the UNet.
        tokenizer: the matching tokenizer (prompts padded/truncated to `model_max_length`).
        scheduler: any diffusers scheduler with set_timesteps / add_noise / step (DDIM for the paper).
        vae: optional AutoencoderKL or VQModel (latent space); None for pixel space.
        device, dtype: where and in which precision the models run.
        eta: DDIM's eta (0: deterministic DDIM, the paper's sampler); ignored by schedulers without it.
    """

    def __init__(self, unet, text_encoder, tokenizer, scheduler, vae=None, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, eta: float = 0.0):
        self.device, self.dtype = torch.device(device), dtype

        def place(module):  # cast only when needed: diffusers warns on every dtype cast
            module = module.to(self.device)
            return (module if module.dtype == dtype else module.to(dtype)).eval()

        self.unet = place(unet)
        self.text_encoder = place(text_encoder)
        self.vae = place(vae) if vae is not None else None
        self.tokenizer, self.scheduler, self.eta = tokenizer, scheduler, eta
        self.last_steps_run = 0
        unet_in = unet.config.in_channels
        if vae is not None and vae.config.latent_channels != unet_in:
            raise ValueError(f"the UNet takes {unet_in} channels but the VAE has "
                             f"{vae.config.latent_channels} latent channels")

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, *, scheduler: str = "ddim", **kwargs) -> "UNetCorrector":
        """Load parts saved with save_pretrained in subfolders unet/, text_encoder/, tokenizer/, scheduler/ (+ vae/).

        Args:
            path: the folder.
            device, dtype: where and in which precision the models run.
            scheduler: "ddim" (the paper's sampler: DDIMScheduler from the saved config, steps_offset=1)
                or "saved" (the scheduler class saved in scheduler/).
            **kwargs: passed to the constructor (e.g. eta).
        Raises:
            ModelNotAvailableError naming the missing folder or subfolder.
        """
        import diffusers
        from transformers import AutoModel, AutoTokenizer

        root = Path(path).expanduser()
        required = ("unet", "text_encoder", "tokenizer", "scheduler")
        missing = [name for name in required if not (root / name).is_dir()]
        if missing:
            raise ModelNotAvailableError(
                f"cannot load a UNetCorrector from {str(path)!r}: missing subfolder(s) {missing}; pass a folder "
                "holding unet/, text_encoder/, tokenizer/, scheduler/ (and optionally vae/), each written by "
                "save_pretrained (e.g. the toy world's trained DM)")
        if scheduler not in ("ddim", "saved"):
            raise ValueError(f"scheduler must be 'ddim' or 'saved', got {scheduler!r}")
        unet = diffusers.UNet2DConditionModel.from_pretrained(root / "unet", dtype=dtype)
        text_encoder = AutoModel.from_pretrained(root / "text_encoder", dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
        config = diffusers.DDIMScheduler.load_config(root / "scheduler")
        sched_cls = diffusers.DDIMScheduler if scheduler == "ddim" else getattr(diffusers, config["_class_name"])
        sched = sched_cls.from_config(config, **({"steps_offset": 1} if scheduler == "ddim" else {}))
        vae = None
        if (root / "vae").is_dir():
            vae_config = diffusers.AutoencoderKL.load_config(root / "vae")
            vae = getattr(diffusers, vae_config["_class_name"]).from_pretrained(root / "vae", dtype=dtype)
        return cls(unet, text_encoder, tokenizer, sched, vae, device=device, dtype=dtype, **kwargs)

    # ---- shapes and spaces ----------------------------------------------------------------
    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent pixel (1 in pixel space)."""
        return 1 if self.vae is None else 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def image_channels(self) -> int:
        """Channels of the images this corrector takes."""
        return self.unet.config.in_channels if self.vae is None else self.vae.config.in_channels

    def _check_size(self, height: int, width: int) -> None:
        m = self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)
        if height % m or width % m:
            raise ValueError(f"image height and width must be multiples of {m} for this UNet/VAE, "
                             f"got {height}x{width}")

    def _to_model_space(self, images: torch.Tensor, generators) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> x_0 in the UNet's space: [-1, 1] pixels or scaled VAE latents."""
        x = images.to(self.device, self.dtype) * 2.0 - 1.0
        if self.vae is None:
            return x
        latents = []
        for b in range(x.shape[0]):  # one row at a time, so row b's posterior sample uses generators[b] only
            enc = self.vae.encode(x[b:b + 1])
            if hasattr(enc, "latent_dist"):
                latents.append(enc.latent_dist.sample(generators[b] if generators is not None else None))
            else:  # VQModel: continuous pre-quantisation latents
                latents.append(enc.latents)
        z = torch.cat(latents)
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return (z - shift) * self.vae.config.scaling_factor

    def _to_images(self, x: torch.Tensor) -> torch.Tensor:
        """Model space -> (B, C, H, W) in [0, 1]; out-of-range decodes are clamped, as diffusers' postprocess does."""
        if self.vae is not None:
            shift = getattr(self.vae.config, "shift_factor", None) or 0.0
            x = self.vae.decode(x / self.vae.config.scaling_factor + shift).sample
        return (x.float() / 2.0 + 0.5).clamp(0.0, 1.0)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """(B, T, D) text embeddings of `prompts` (see `encode_text`)."""
        return encode_text(self.tokenizer, self.text_encoder, prompts, self.device).to(self.dtype)

    # ---- the sampler -----------------------------------------------------------------------
    def _unet_call(self, model_in: torch.Tensor, t, emb: torch.Tensor) -> torch.Tensor:
        """The denoiser's prediction for a batch in model space (one row of `emb` per row of `model_in`)."""
        return self.unet(model_in, t, encoder_hidden_states=emb).sample

    def _denoise(self, x: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor, guidance_scale: float,
                 generators, after_step=None) -> torch.Tensor:
        """DDIM (or the given scheduler) from x_t' over `timesteps` with classifier-free guidance.

        `after_step(k, x)`, when given, returns the sample to continue from after step k (inpainting
        resets the kept region there).
        """
        use_cfg = guidance_scale != 1.0  # w = 1 is exactly the conditional model: skip the uncond half
        if use_cfg:
            uncond = self.encode_prompts([""]).expand(x.shape[0], -1, -1)
            emb = torch.cat([uncond, cond])  # (2B, T, D): CFG as ONE batched forward
        else:
            emb = cond
        step_kwargs = _step_kwargs(self.scheduler, self.eta, generators)
        for k, t in enumerate(timesteps):
            model_in = torch.cat([x, x]) if use_cfg else x  # (2B, C, h, w)
            model_in = self.scheduler.scale_model_input(model_in, t)
            out = self._unet_call(model_in, t, emb)
            if out.shape[1] == 2 * x.shape[1]:  # learned variance: keep the mean prediction
                out = out[:, :x.shape[1]]
            if use_cfg:
                out_u, out_c = out.chunk(2)
                out = out_u + guidance_scale * (out_c - out_u)  # eps~ = eps_u + w (eps_c - eps_u)
            x = self.scheduler.step(out, t, x, **step_kwargs).prev_sample
            if after_step is not None:
                x = after_step(k, x)
        return x

    def _timesteps(self, num_inference_steps: int, steps: int) -> torch.Tensor:
        """The last `steps` of the scheduler's `num_inference_steps` timesteps, as diffusers' get_timesteps keeps them."""
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        start = (num_inference_steps - steps) * self.scheduler.order
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(start)
        return self.scheduler.timesteps[start:]

    def _start(self, images, prompts, strength, guidance_scale, num_inference_steps, generators):
        """Shared start of `correct` and `inpaint`: checks, prompt embeddings, the last int(N t') timesteps
        (as diffusers' get_timesteps keeps them), x_0 in model space and x_t' = sqrt(abar) x_0 + sqrt(1 - abar) eps
        with eps of row b from generators[b]. Returns (cond, timesteps, x0, noise, x_t', w, generators)."""
        validate_images(images)
        if images.shape[1] != self.image_channels:
            raise ValueError(f"this corrector takes {self.image_channels}-channel images, got C={images.shape[1]}")
        self._check_size(*images.shape[-2:])
        prompts, steps, guidance_scale, generators = _check_call(
            images.shape[0], prompts, strength, guidance_scale, num_inference_steps, generators)
        cond = self.encode_prompts(prompts)  # the unconditional "" embedding is added in the loop when w != 1
        timesteps = self._timesteps(num_inference_steps, steps)
        from diffusers.utils.torch_utils import randn_tensor

        x0 = self._to_model_space(images, generators)
        noise = randn_tensor(tuple(x0.shape), generator=generators, device=self.device, dtype=x0.dtype)
        x = self.scheduler.add_noise(x0, noise, timesteps[:1].repeat(x0.shape[0]))
        return cond, timesteps, x0, noise, x, guidance_scale, generators

    @torch.no_grad()
    def correct(self, images: torch.Tensor, prompts: Sequence[str], *, strength: float = DEFAULT_STRENGTH,
                guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
                num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
                generators: Sequence[torch.Generator] | None = None) -> torch.Tensor:
        """Correct a batch of frames with SDEdit (Eq. 2): noise each to t', then denoise with DDIM + CFG.

        Args:
            images: (B, C, H, W) float in [0, 1], C = `image_channels`, sides multiples of the UNet's
                (and VAE's) downsampling.
            prompts: B text conditions y.
            strength: t' in (0, 1]; the last int(num_inference_steps * strength) timesteps run.
            guidance_scale: CFG scale w >= 0 (0: unconditional, 1: conditional only).
            num_inference_steps: N, the scheduler's full number of steps.
            generators: B torch.Generators; row b's VAE sample and noise come from generators[b] only.
        Returns:
            (B, C, H, W) float in [0, 1] on the input's device and dtype.
        """
        # 1-4. Check inputs, encode prompts, keep the last int(N t') timesteps, noise x_0 to t' per row
        cond, timesteps, x0, noise, x, guidance_scale, generators = self._start(
            images, prompts, strength, guidance_scale, num_inference_steps, generators)
        # 5. Denoising loop (Eq. 2): x~_0 ~ p_theta(x_0 | x_t', y), DDIM eta = 0 with CFG
        x = self._denoise(x, timesteps, cond, guidance_scale, generators)
        # UNet calls that ran: int(N t') for first-order samplers such as DDIM (Heun-type samplers
        # with order 2, or PNDM's Runge-Kutta warm-up, call the UNet more often per step)
        self.last_steps_run = len(timesteps)
        # 6. Back to [0, 1] images
        return self._to_images(x).to(images.device, images.dtype)

    @torch.no_grad()
    def drift_score(self, images: torch.Tensor, prompts: Sequence[str], *, strength: float = DEFAULT_STRENGTH,
                    num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
                    generators: Sequence[torch.Generator] | None = None, draws: int = 4) -> torch.Tensor:
        """How badly each frame fits its prompt, by the DM's own denoising error at t' (a run-time drift score).

        Each frame is noised to the timestep SDEdit at t' starts from, `draws` times with fresh noise;
        the score is the mean over draws of ||eps_cond - eps||^2 - ||eps_uncond - eps||^2 per element:
        how much worse the prompt-conditioned prediction does than the unconditional one. The
        conditional error estimates -log p(x | y) up to constants and the unconditional one -log p(x),
        so their difference estimates -log p(y | x): high when the frame contradicts its prompt, not
        merely when it is unusual. It needs no model but the corrector's, so an adaptive policy can
        use it at run time. Both predictions come from one batched UNet call per draw.

        Args:
            images: (B, C, H, W) float in [0, 1]; prompts: B text conditions y.
            strength, num_inference_steps: t' and N as in `correct` (they fix the timestep).
            generators: B torch.Generators, one per row (the noise of row b comes from generators[b] only).
            draws: noise draws averaged per frame (>= 1).
        Returns:
            (B,) float32 scores on the CPU; higher means the frame fits its prompt worse.
        """
        validate_images(images)
        if images.shape[1] != self.image_channels:
            raise ValueError(f"this corrector takes {self.image_channels}-channel images, got C={images.shape[1]}")
        self._check_size(*images.shape[-2:])
        if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
            raise ValueError(f"draws must be a positive int, got {draws!r}")
        prompts, steps, _, generators = _check_call(images.shape[0], prompts, strength, 1.0, num_inference_steps,
                                                    generators)
        pred = self.scheduler.config.get("prediction_type", "epsilon")
        if pred not in ("epsilon", "v_prediction"):
            raise ValueError(f"drift_score needs an epsilon or v_prediction model, this scheduler says {pred!r}")
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        t = self.scheduler.timesteps[(num_inference_steps - steps) * self.scheduler.order]
        from diffusers.utils.torch_utils import randn_tensor

        x0 = self._to_model_space(images, generators)
        B = x0.shape[0]
        emb = torch.cat([self.encode_prompts([""]).expand(B, -1, -1), self.encode_prompts(prompts)])  # (2B, T, D)
        tt = t.repeat(B)
        total = torch.zeros(B, dtype=torch.float32, device=self.device)
        for _ in range(draws):
            noise = randn_tensor(tuple(x0.shape), generator=generators, device=self.device, dtype=x0.dtype)
            xt = self.scheduler.add_noise(x0, noise, tt)
            target = noise if pred == "epsilon" else self.scheduler.get_velocity(x0, noise, tt)
            model_in = self.scheduler.scale_model_input(torch.cat([xt, xt]), t)
            out = self._unet_call(model_in, t, emb)
            out = out[:, :x0.shape[1]]  # learned variance: keep the mean prediction
            err = ((out.float() - torch.cat([target, target]).float()) ** 2).flatten(1).mean(1)   # (2B,)
            total += err[B:] - err[:B]
        return (total / draws).cpu()

    @torch.no_grad()
    def inpaint(self, images: torch.Tensor, masks: torch.Tensor, prompts: Sequence[str], *,
                strength: float = 1.0, guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
                num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
                generators: Sequence[torch.Generator] | None = None) -> torch.Tensor:
        """Repaint the masked region of each frame with this (non-inpainting) UNet: `InpaintCorrector`'s interface.

        The method is the one diffusers' StableDiffusionInpaintPipeline uses for a UNet without mask
        channels: SDEdit from t' over the whole frame, and after every step the region to keep is
        replaced by the original noised to the next timestep (the clean original after the last
        step). That pipeline cannot run this class's models itself: it assumes 4 latent channels and
        an AutoencoderKL, and takes no pixel-space UNet. In model space the mask is max-pooled to the
        UNet's grid, so every latent cell that touches the mask is repainted (a cell half kept would
        keep the wrong part).

        Args:
            images: (B, C, H, W) float in [0, 1]; masks: (B, 1, H, W) with values in {0, 1}, 1 = repaint.
            prompts: B text conditions; strength: t' in (0, 1] (1.0 repaints the region from pure noise).
            guidance_scale, num_inference_steps, generators: as in `correct`.
        Returns:
            (B, C, H, W) float in [0, 1] on the input's device and dtype.
        """
        validate_images(images)  # before the masks, which are checked against its shape
        validate_masks(masks, images)
        cond, timesteps, x0, noise, x, guidance_scale, generators = self._start(
            images, prompts, strength, guidance_scale, num_inference_steps, generators)
        keep_mask = 1.0 - F.adaptive_max_pool2d(masks.to(self.device, x0.dtype), x0.shape[-2:])  # (B, 1, h, w)

        def keep_original(k: int, x: torch.Tensor) -> torch.Tensor:  # the kept region at the next noise level
            kept = (self.scheduler.add_noise(x0, noise, timesteps[k + 1:k + 2].repeat(x0.shape[0]))
                    if k + 1 < len(timesteps) else x0)
            return keep_mask * kept + (1.0 - keep_mask) * x

        x = self._denoise(x, timesteps, cond, guidance_scale, generators, after_step=keep_original)
        self.last_steps_run = len(timesteps)
        return self._to_images(x).to(images.device, images.dtype)

    @torch.no_grad()
    def repaint(self, images: torch.Tensor, masks: torch.Tensor, prompts: Sequence[str], *,
                guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
                num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS, jump_length: int = 3,
                jump_n_sample: int = 3, generators: Sequence[torch.Generator] | None = None) -> torch.Tensor:
        """Repaint the masked region from pure noise by RePaint (Lugmayr et al. 2022), through diffusers'
        RePaintScheduler: the kept region is blended in as in `inpaint`, but the schedule jumps back
        `jump_length` steps `jump_n_sample - 1` times, re-noising the sample so that the repainted region
        can come to agree with the kept one. The scheduler is built from this model's betas and predicts
        from epsilon only. It costs about (1 + 2 (jump_n_sample - 1) / jump_length) times `inpaint`'s UNet calls.

        Args: as `inpaint` (always from pure noise, t' = 1), with RePaint's jump_length and jump_n_sample.
        Returns:
            (B, C, H, W) float in [0, 1] on the input's device and dtype.
        """
        from diffusers import RePaintScheduler
        from diffusers.utils.torch_utils import randn_tensor

        validate_images(images)
        validate_masks(masks, images)
        cfg = self.scheduler.config
        if cfg.get("prediction_type", "epsilon") != "epsilon":
            raise ValueError(f"repaint needs an epsilon-prediction model; this scheduler says {cfg.get('prediction_type')!r}")
        for name, v in (("jump_length", jump_length), ("jump_n_sample", jump_n_sample)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        cond, _, x0, _, _, guidance_scale, generators = self._start(
            images, prompts, 1.0, guidance_scale, num_inference_steps, generators)
        keep = 1.0 - F.adaptive_max_pool2d(masks.to(self.device, x0.dtype), x0.shape[-2:])  # (B, 1, h, w), 1 = keep
        sched = RePaintScheduler(num_train_timesteps=cfg["num_train_timesteps"], beta_start=cfg["beta_start"],
                                 beta_end=cfg["beta_end"], beta_schedule=cfg["beta_schedule"],
                                 trained_betas=cfg.get("trained_betas"), eta=0.0, clip_sample=False)
        sched.set_timesteps(num_inference_steps, jump_length=jump_length, jump_n_sample=jump_n_sample, device=self.device)
        use_cfg = guidance_scale != 1.0
        emb = torch.cat([self.encode_prompts([""]).expand(x0.shape[0], -1, -1), cond]) if use_cfg else cond
        x = randn_tensor(tuple(x0.shape), generator=generators, device=self.device, dtype=x0.dtype)
        t_last, calls = sched.timesteps[0] + 1, 0
        for t in sched.timesteps:
            if t < t_last:  # a denoising step; the kept region becomes the original noised to t - 1
                out = self._unet_call(torch.cat([x, x]) if use_cfg else x, t, emb)[:, :x0.shape[1]]
                if use_cfg:
                    out_u, out_c = out.chunk(2)
                    out = out_u + guidance_scale * (out_c - out_u)
                x = sched.step(out, t, x, x0, keep, generator=generators).prev_sample
                calls += 1
            else:  # a jump back: re-noise by one step
                x = sched.undo_step(x, t_last, generator=generators)
            t_last = t
        self.last_steps_run = calls
        return self._to_images(x).to(images.device, images.dtype)

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], height: int | None = None, width: int | None = None, *,
                 guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
                 num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
                 generators: Sequence[torch.Generator] | None = None) -> torch.Tensor:
        """Text-to-image from pure noise (t' = 1 with x_T ~ N(0, I)): all N steps with CFG.

        Args:
            prompts: B text conditions.
            height, width: image size in pixels (default: the UNet's sample_size x VAE factor).
            guidance_scale: CFG scale w >= 0.
            num_inference_steps: N.
            generators: B torch.Generators, one per row.
        Returns:
            (B, C, height, width) float in [0, 1].
        """
        if isinstance(prompts, str) or not isinstance(prompts, Sequence):
            raise ValueError(f"prompts must be a list of strings, got {type(prompts).__name__}")
        batch = len(prompts)
        prompts, steps, guidance_scale, generators = _check_call(
            batch, prompts, 1.0, guidance_scale, num_inference_steps, generators)
        f = self.vae_scale_factor
        height = height or self.unet.config.sample_size * f
        width = width or self.unet.config.sample_size * f
        self._check_size(height, width)
        cond = self.encode_prompts(prompts)
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(0)
        from diffusers.utils.torch_utils import randn_tensor

        shape = (batch, self.unet.config.in_channels, height // f, width // f)
        x = randn_tensor(shape, generator=generators, device=self.device, dtype=self.dtype)
        x = x * self.scheduler.init_noise_sigma
        x = self._denoise(x, self.scheduler.timesteps, cond, guidance_scale, generators)
        self.last_steps_run = len(self.scheduler.timesteps)
        return self._to_images(x)


class RePaintInpainter:
    """`InpaintCorrector`'s `inpaint` interface over `UNetCorrector.repaint` (RePaint), so an experiment can
    swap the inpainting method without knowing it. RePaint always starts from pure noise: t' must be 1.

    Args:
        corrector: a UNetCorrector; jump_length, jump_n_sample: RePaint's resampling schedule.
    """

    def __init__(self, corrector: "UNetCorrector", jump_length: int = 3, jump_n_sample: int = 3):
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


def count_unet_calls(module: torch.nn.Module) -> tuple[list[tuple[int, ...]], Any]:
    """Attach a forward hook that records the input shape of every call; returns (shapes, handle).

    Call `handle.remove()` when done. len(shapes) is the number of denoiser calls; shapes[i][0]
    shows the batch each call saw (2B under classifier-free guidance).
    """
    shapes: list[tuple[int, ...]] = []

    def hook(mod, args, kwargs, out):
        sample = args[0] if args else kwargs["sample"]
        shapes.append(tuple(sample.shape))

    handle = module.register_forward_hook(hook, with_kwargs=True)
    return shapes, handle
