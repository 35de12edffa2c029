"""SDEdit (Eq. 2) by our own sampling loop over any diffusers UNet2DConditionModel: the toy world's DM.

`UNetCorrector` takes a UNet, a text encoder, a tokenizer, a diffusers scheduler and optionally a VAE
(AutoencoderKL or VQModel), in pixel or latent space; it also inpaints (diffusers' method for UNets
without mask channels, and RePaint), draws from pure noise (text-to-image) and scores drift.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from acdc_lib.correctors.inputs import validate_images, validate_masks
from acdc_lib.correctors.loading import ModelNotAvailableError
from acdc_lib.correctors.schedule import (DEFAULT_GUIDANCE_SCALE, DEFAULT_NUM_INFERENCE_STEPS, DEFAULT_STRENGTH,
                                          _check_call, _step_kwargs, sdedit_timesteps)

__all__ = ["encode_text", "UNetCorrector"]


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
        batched_encode: encode a batch of frames with the VAE in one call (an AutoencoderKL's posterior is
            still sampled with row b's generator for row b) instead of one row at a time. Batched kernels
            round differently, so latents move in the last float bits (about 6e-6) against the per-row
            encode; results stay byte-reproducible because the loop's batches are fixed by the stories'
            places in the list. False (the default): one row at a time, what the committed results come from.
    """

    def __init__(self, unet, text_encoder, tokenizer, scheduler, vae=None, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, eta: float = 0.0, batched_encode: bool = False):
        if not isinstance(batched_encode, bool):
            raise ValueError(f"batched_encode must be True or False, got {batched_encode!r}")
        self.batched_encode = batched_encode
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
        if self.batched_encode:
            enc = self.vae.encode(x)
            if hasattr(enc, "latent_dist"):  # diffusers' randn_tensor draws row b from generators[b]
                z = enc.latent_dist.sample(list(generators) if generators is not None else None)
            else:  # VQModel: continuous pre-quantisation latents
                z = enc.latents
            shift = getattr(self.vae.config, "shift_factor", None) or 0.0
            return (z - shift) * self.vae.config.scaling_factor
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
        """The last `steps` of the scheduler's `num_inference_steps` timesteps (see `sdedit_timesteps`)."""
        return sdedit_timesteps(self.scheduler, num_inference_steps, steps, self.device)

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
